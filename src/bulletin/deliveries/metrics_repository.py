"""The figures of the deliveries table that the metrics scrape reads (every process together).

Kept apart from :mod:`bulletin.deliveries.repository`: these reads run only when metrics are
scraped, under a statement timeout, and share nothing with the send path's queries.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import dialect_name
from bulletin.deliveries.models import Delivery
from bulletin.deliveries.states import DeliveryState

#: Longest a scrape's count may run on PostgreSQL, so a huge table skips a scrape, not hangs it.
_COUNT_TIMEOUT_MS = 5000


async def _bound_scrape_time(session: AsyncSession) -> None:
    """Limit how long the rest of this transaction's statements may run, where the database
    can (PostgreSQL); SQLite has no such limit, and its reads hold no one up."""
    if dialect_name(session) == "postgresql":
        await session.execute(text(f"SET LOCAL statement_timeout = {_COUNT_TIMEOUT_MS}"))


async def counts_by_channel_and_state(session: AsyncSession) -> dict[tuple[str, str], int]:
    """How many deliveries there are per (channel, state), over the whole table.

    One GROUP BY, which visits every row: no index holds both columns, so PostgreSQL scans
    the table (about 0.3 s per two million rows on two cores). It runs under a statement
    timeout there, and only when metrics are scraped.
    """
    await _bound_scrape_time(session)
    rows = await session.execute(
        select(Delivery.channel, Delivery.state, func.count()).group_by(
            Delivery.channel, Delivery.state
        )
    )
    return {(channel, state): int(n) for channel, state, n in rows}


async def queue_depth(session: AsyncSession, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """Pending deliveries due at ``now``, and when the oldest of them fell due.

    Reads only the due index (``ix_deliveries_due``), so it costs what the queue holds.
    """
    count, oldest = (
        await session.execute(
            select(func.count(), func.min(Delivery.next_attempt_at)).where(
                Delivery.state == DeliveryState.PENDING.value, Delivery.next_attempt_at <= now
            )
        )
    ).one()
    return int(count), oldest
