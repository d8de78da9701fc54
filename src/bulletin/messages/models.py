"""Messages: announcements (to an audience) and notifications (to one recipient)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, BigId, Json, UTCDateTime, utcnow
from bulletin.ids import uuid7


class Message(Base):
    """What an organization wants said, to whom, on which channels, and when.

    ``state`` moves ``scheduled -> resolving -> sending -> completed``, or to ``cancelled``.
    ``resolve_cursor`` is the last recipient id turned into deliveries, so that resolving a
    large audience can stop at any point (a crash, a chunk boundary) and resume.
    """

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_org_kind_id", "org_id", "kind", "id"),
        Index(
            "ix_messages_due",
            "send_at",
            postgresql_where=text("state IN ('scheduled', 'resolving')"),
            sqlite_where=text("state IN ('scheduled', 'resolving')"),
        ),
        Index(
            "ix_messages_sending",
            "id",
            postgresql_where=text("state = 'sending'"),
            sqlite_where=text("state = 'sending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    audience: Mapped[dict[str, Any]] = mapped_column(Json)
    channels: Mapped[list[str]] = mapped_column(Json)
    routing: Mapped[str] = mapped_column(String(8))
    category: Mapped[str | None] = mapped_column(String(64))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Per-channel content: {"sms": {"body": ...}, "email": {"html": ...}, "whatsapp": {...}}.
    overrides: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    #: With routing "first": move on to the next channel if not delivered within this time.
    fallback_after_seconds: Mapped[int | None] = mapped_column(Integer)
    #: The data of the event the message came from, which its templates may use as ``data``.
    data: Mapped[dict[str, Any] | None] = mapped_column(Json)
    send_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    resolve_cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    audience_size: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class MessageRecipient(Base):
    """A recipient named explicitly in a message's audience, fixed when the message is made."""

    __tablename__ = "message_recipients"

    message_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    recipient_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("recipients.id", ondelete="CASCADE"), primary_key=True
    )
