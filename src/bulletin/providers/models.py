"""Provider accounts an organization has configured, one per channel."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, Json, UTCDateTime, utcnow


class ChannelConfig(Base):
    """Which provider sends an organization's messages on one channel, and how.

    ``settings`` holds the non-secret fields as given; ``secrets`` holds the secret ones as a
    single encrypted token (never plain text). ``version`` grows with every change, so that
    worker processes notice a new configuration and rebuild their provider.
    """

    __tablename__ = "channel_configs"

    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(Json)
    secrets: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
