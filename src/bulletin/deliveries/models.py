"""Deliveries (one message to one recipient on one channel) and their append-only events.

The deliveries table is the work queue. The partial indexes are what keep it fast: the claim
reads ``ix_deliveries_due`` (pending rows by due time), completion and the lease reaper read
``ix_deliveries_inflight`` (rows being sent). A receipt that names its message only by the
provider's id (a WhatsApp status without ``biz_opaque_callback_data``) is found through
``ix_deliveries_provider_message_id``.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, BigId, UTCDateTime, utcnow


class Delivery(Base):
    """One message to one recipient on one channel: the unit that is sent, retried, receipted.

    ``attempt`` is the fencing token: every claim increments it, and a completion only applies
    when it still matches. ``send_attempts`` counts calls actually made to a provider, which is
    what the retry budget limits.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint(
            "message_id", "recipient_id", "channel", name="uq_deliveries_message_recipient_channel"
        ),
        Index("ix_deliveries_message_state", "message_id", "state"),
        Index("ix_deliveries_recipient", "recipient_id"),
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        Index(
            "ix_deliveries_fallback",
            "fallback_at",
            postgresql_where=text("fallback_at IS NOT NULL"),
            sqlite_where=text("fallback_at IS NOT NULL"),
        ),
        Index(
            "ix_deliveries_inflight",
            "lease_expires_at",
            postgresql_where=text("state = 'sending'"),
            sqlite_where=text("state = 'sending'"),
        ),
        Index(
            "ix_deliveries_provider_message_id",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
            sqlite_where=text("provider_message_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    message_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("messages.id", ondelete="CASCADE")
    )
    recipient_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("recipients.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    send_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    #: The webhook account key of the provider account that accepted it (an organization id,
    #: or ``default`` for the environment's); only that account's receipts move it.
    provider_account: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: When to move on to the person's next channel if this one has not reported delivery
    #: (``fallback_after``); cleared once that has been decided.
    fallback_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class DeliveryEvent(Base):
    """A state change or provider receipt of a delivery. Rows are only ever inserted."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    """An address that must not be sent to on a channel (a hard bounce, a STOP reply)."""

    __tablename__ = "suppressions"

    org_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
