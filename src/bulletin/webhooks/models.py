"""Provider ids of inbound messages already acted on, so that a replayed webhook does nothing.

Rows are only inserted, with the time they were; a retention sweep may delete old ones (by
``created_at``, which is indexed for it) once the provider no longer retries that far back.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, UTCDateTime, utcnow


class InboundSeen(Base):
    """One inbound message (a reply, STOP, START) that was applied, by the provider's own id.

    ``account`` is the webhook account key (an organization id, or ``default``); the same
    provider id under another account is another message.
    """

    __tablename__ = "webhook_inbound_seen"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
