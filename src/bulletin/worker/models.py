"""Shared pacing state: how fast each provider account may send, across all worker processes."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, UTCDateTime


class PacingSlot(Base):
    """The next free send slot of a provider account (a virtual schedule, as in GCRA).

    Each worker reserves slots for a group of sends in one statement that moves
    ``next_slot_at`` forward by ``count / rate``; so all workers together never exceed the rate.
    A rate-limit answer from the provider pushes ``next_slot_at`` past the pause it asked for.
    """

    __tablename__ = "pacing_slots"

    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    next_slot_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PairSlot(Base):
    """When a provider account may next send to one address (WhatsApp's pair rate limit)."""

    __tablename__ = "pacing_pairs"

    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    free_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
