"""Every query of the worker's own tables: the pacing slots of provider accounts and addresses.

Each function runs in the caller's transaction and flushes, never commits. The schedules
they move are described in :mod:`bulletin.worker.pacing`, which is their only user besides
the scheduler's tidying. Where PostgreSQL and SQLite differ, the difference is decided here:
the upserts by :func:`~bulletin.db.upsert_statement`, the commit that need not wait for the
disk by :func:`commit_without_waiting`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import dialect_name, upsert_statement
from bulletin.worker.models import PacingSlot, PairSlot

#: Names an account's schedule of sends given back (see :func:`queue_later`).
LATER_SUFFIX = " (later)"


@dataclass(frozen=True, slots=True)
class PairHold:
    """The right to send to ``address`` from ``account``, taken at ``taken_at``: the pair slot
    was moved to ``until``, one pair interval later."""

    account: str
    address: str
    taken_at: dt.datetime
    until: dt.datetime


async def commit_without_waiting(session: AsyncSession) -> None:
    """Let this transaction's commit return before it is on disk (PostgreSQL; a no-op on
    SQLite). For soft state only: a crash may forget the last few changes."""
    if dialect_name(session) == "postgresql":
        await session.execute(text("SET LOCAL synchronous_commit TO OFF"))


async def _lock_slot(session: AsyncSession, account: str, now: dt.datetime) -> PacingSlot:
    query = select(PacingSlot).where(PacingSlot.account == account).with_for_update()
    row = (await session.execute(query)).scalar_one_or_none()
    if row is not None:
        return row
    # The account's first send: make its row (another worker may be making it too).
    insert = upsert_statement(session, PacingSlot).values(account=account, next_slot_at=now)
    await session.execute(insert.on_conflict_do_nothing())
    return (await session.execute(query)).scalar_one()


async def reserve(
    session: AsyncSession,
    account: str,
    rate: float,
    count: int,
    now: dt.datetime,
    horizon: dt.timedelta,
) -> tuple[list[dt.datetime], dt.datetime]:
    """Reserve up to ``count`` slots starting no later than ``now + horizon``.

    Returns the reserved slot times (possibly fewer than asked) and the account's next free
    slot after them.
    """
    row = await _lock_slot(session, account, now)
    start = max(row.next_slot_at, now)
    gap = dt.timedelta(seconds=1 / rate)
    slots: list[dt.datetime] = []
    while len(slots) < count and start + gap * len(slots) <= now + horizon:
        slots.append(start + gap * len(slots))
    row.next_slot_at = start + gap * len(slots)
    await session.flush()
    return slots, row.next_slot_at


async def queue_later(
    session: AsyncSession, account: str, count: int, not_before: dt.datetime, gap: dt.timedelta
) -> list[dt.datetime]:
    """Places for ``count`` sends given back for lack of a slot: ``gap`` apart, from
    ``not_before`` or after the places already handed out, whichever is later.

    The places are a second virtual schedule of the account (its row in ``pacing_slots`` is
    the account's name with :data:`LATER_SUFFIX`). Sends given back by every worker come due
    again one after the other at the account's rate, in the order they were given back,
    rather than all at the same instant, when all but a few would find every slot taken and
    be given back again.
    """
    if count <= 0:
        return []
    row = await _lock_slot(session, account + LATER_SUFFIX, not_before)
    first = max(row.next_slot_at, not_before)
    places = [first + gap * i for i in range(count)]
    row.next_slot_at = first + gap * count
    await session.flush()
    return places


async def push_back(session: AsyncSession, account: str, until: dt.datetime) -> None:
    """No send on ``account`` before ``until``."""
    row = await _lock_slot(session, account, until)
    if row.next_slot_at < until:
        row.next_slot_at = until
    await session.flush()


async def take_pair(
    session: AsyncSession,
    account: str,
    address: str,
    interval: dt.timedelta,
    now: dt.datetime,
) -> dt.datetime | None:
    """Take the right to send to ``address`` now; ``None`` when taken, else when it is free."""
    insert = upsert_statement(session, PairSlot).values(
        account=account, address=address, free_at=now + interval
    )
    inserted = await session.execute(insert.on_conflict_do_nothing())
    if not cast("CursorResult[Any]", inserted).rowcount:
        query = (
            select(PairSlot)
            .where(PairSlot.account == account, PairSlot.address == address)
            .with_for_update()
        )
        row = (await session.execute(query)).scalar_one()
        if row.free_at > now:
            return row.free_at
        row.free_at = now + interval
        await session.flush()
    return None


async def give_back_pair(session: AsyncSession, hold: PairHold) -> bool:
    """Undo ``hold``, unless someone has taken the pair slot since; true when undone.

    The slot goes back to ``hold.taken_at``: it was free then, so it had said that time or
    earlier, and either lets the next message go at once.
    """
    statement = (
        update(PairSlot)
        .where(
            PairSlot.account == hold.account,
            PairSlot.address == hold.address,
            PairSlot.free_at == hold.until,
        )
        .values(free_at=hold.taken_at)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(statement)
    return bool(cast("CursorResult[Any]", result).rowcount)


async def forget_pairs(session: AsyncSession, before: dt.datetime) -> int:
    """Delete the pair slots that were free before ``before``; returns how many."""
    result = await session.execute(delete(PairSlot).where(PairSlot.free_at < before))
    return int(cast("CursorResult[Any]", result).rowcount)
