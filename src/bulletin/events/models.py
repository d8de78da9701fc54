"""Event types (what an event becomes) and accepted events (by the producer's own event id)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Identity, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, BigId, Json, UTCDateTime, utcnow


class EventType(Base):
    """What an event of type ``key`` becomes: the message's templates and how it is sent.

    The templates see the event's ``data`` and the recipient. An accepted event copies them
    into its message, so changing an event type affects only events accepted afterwards.
    """

    __tablename__ = "event_types"

    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    overrides: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    channels: Mapped[list[str]] = mapped_column(Json)
    routing: Mapped[str] = mapped_column(String(8))
    category: Mapped[str | None] = mapped_column(String(64))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Seconds after acceptance that the message falls due (unless the event gives send_at).
    delay_seconds: Mapped[int | None] = mapped_column(Integer)
    fallback_after_seconds: Mapped[int | None] = mapped_column(Integer)
    #: Incremented by every change, shown so that a producer can tell which definition applied.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """An accepted event, by the producer's id: a second event with the same id creates nothing.

    ``message_ids`` are the messages it became (one per recipient), in order.
    """

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("org_id", "client_id", name="uq_events_org_client_id"),)

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    client_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(64))
    type_version: Mapped[int] = mapped_column(Integer)
    message_ids: Mapped[list[str]] = mapped_column(Json)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
