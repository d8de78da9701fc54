"""What the sandbox provider has accepted: the stand-in for a real provider's ledger."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Identity, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, BigId, UTCDateTime, utcnow


class SandboxMessage(Base):
    """One message the sandbox accepted.

    Like a provider that honours an idempotency key, the sandbox keeps one record per
    delivery id; a repeated send of the same delivery is not delivered again but counted in
    ``attempts``, so a duplicate send attempt stays visible.
    """

    __tablename__ = "sandbox_messages"
    __table_args__ = (Index("ix_sandbox_messages_org_message", "org_id", "message_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    delivery_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    message_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    recipient_external_id: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    #: The preference-centre link the message carried (an email's footer), so that it can be
    #: followed from the sandbox as from a real inbox.
    preference_url: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
