"""Webhook endpoints, the kinds each subscribes to, the outbox of status events, and attempts.

The outbox row (:class:`WebhookMessage`) is written in the transaction of the change it
reports, and carries everything its payload needs, so the sender never reads other tables.
Its ``id`` is stable across retries: the ``webhook-id`` header is derived from it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

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

from bulletin.db import Base, BigId, Json, UTCDateTime, utcnow
from bulletin.ids import uuid7


class WebhookEndpoint(Base):
    """A URL of an organization that is told about status changes, signed with its secret.

    ``state``: ``active``; ``failing`` once a message exhausted its retries (nothing more is
    sent until it is enabled again); ``disabled`` by the organization.
    ``secret`` is the signing secret, sealed with ``BULLETIN_SECRET_KEY`` when one is set.
    After a rotation the previous secret also signs until ``previous_secret_until``.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_org", "org_id", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    kinds: Mapped[list[str]] = mapped_column(Json)
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), default="active")
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookSubscription(Base):
    """One kind an endpoint wants, kept as rows so that the outbox insert is a plain join.

    Rows exist only while the endpoint is ``active``: recording an event needs no other check.
    """

    __tablename__ = "webhook_subscriptions"
    __table_args__ = (Index("ix_webhook_subscriptions_org_kind", "org_id", "kind"),)

    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)


class WebhookMessage(Base):
    """One event to tell one endpoint (the outbox), with its delivery state.

    ``state``: ``pending`` (due at ``next_attempt_at``), ``delivered`` (a 2xx answer), or
    ``failed`` (its retries are exhausted). The payload's fields are columns, copied when the
    row is written: ``delivery_id`` ... ``attempt`` for ``delivery.*`` kinds, ``message_id``
    and ``message_kind`` for every kind, and ``data`` for anything else.
    """

    __tablename__ = "webhook_messages"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "delivery_event_id", name="uq_webhook_messages_event"),
        Index("ix_webhook_messages_endpoint", "endpoint_id", "id"),
        # By endpoint: the sender claims each active endpoint's due rows, so that the rows
        # of a failing or disabled endpoint, however many, are never read on the way.
        Index(
            "ix_webhook_messages_due",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    kind: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    delivery_event_id: Mapped[int | None] = mapped_column(BigId)
    delivery_id: Mapped[int | None] = mapped_column(BigId)
    message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    message_kind: Mapped[str | None] = mapped_column(String(16))
    recipient: Mapped[str | None] = mapped_column(String(255))
    channel: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict[str, Any] | None] = mapped_column(Json)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One try at sending a :class:`WebhookMessage`: its answer's status, or what went wrong."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_message", "webhook_message_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    webhook_message_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_messages.id", ondelete="CASCADE")
    )
    endpoint_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
