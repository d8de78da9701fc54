"""Pacing: each provider account sends no faster than its rate, over all workers together.

The shared state is one row per account in ``pacing_slots``: the next free send slot. A
worker that wants to send ``k`` messages reserves ``k`` consecutive slots in one short
transaction (the row is locked while it is moved forward by ``k / rate``), then starts each
send at its slot. Reservations of many concurrent sends in one process are made together, so
pacing costs one round trip per group, not per message.

* A slot is only reserved within a short horizon (2 s); a send whose slot would come later is
  given back to the queue, due at that time, so that no lease is spent waiting.
* :meth:`Pacer.slow_down` pushes the account's next slot past a pause (a rate-limit answer, a
  ``Retry-After``): every worker then waits, instead of one message retrying in a tight loop.
  Sends of this process already holding a slot are paused too; other processes may still
  use the slots they reserved before the pause, at most one horizon's worth.
* :meth:`Pacer.claim_pair` spaces messages to one address (WhatsApp's pair rate limit).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels.base import Provider
from bulletin.db import Database, upsert_statement, utcnow
from bulletin.worker.models import PacingSlot, PairSlot

log = structlog.get_logger("bulletin.pacing")


@dataclass(frozen=True, slots=True)
class Later:
    """No slot within the horizon; come back at ``at``."""

    at: dt.datetime


async def _lock_slot(session: AsyncSession, account: str, now: dt.datetime) -> PacingSlot:
    insert = upsert_statement(session, PacingSlot).values(account=account, next_slot_at=now)
    await session.execute(insert.on_conflict_do_nothing())
    query = select(PacingSlot).where(PacingSlot.account == account).with_for_update()
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


async def forget_pairs(session: AsyncSession, before: dt.datetime) -> int:
    result = await session.execute(delete(PairSlot).where(PairSlot.free_at < before))
    return int(cast("CursorResult[Any]", result).rowcount)


class _Account:
    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[dt.datetime | Later]] = []
        self.task: asyncio.Task[None] | None = None


class Pacer:
    """One process's side of pacing: groups reservations, waits for slots."""

    def __init__(self, db: Database, *, horizon_seconds: float = 2.0) -> None:
        self._db = db
        self._horizon = dt.timedelta(seconds=horizon_seconds)
        self._accounts: dict[str, _Account] = {}
        self._paused: dict[str, dt.datetime] = {}

    async def wait_turn(self, provider: Provider) -> Later | None:
        """Wait for the provider's next send slot; :class:`Later` if none is near."""
        rate = provider.rate_per_second
        if rate is None:
            return None
        paused = self._paused.get(provider.account)
        if paused is not None and paused > utcnow():
            return Later(paused)
        state = self._accounts.setdefault(provider.account, _Account())
        future: asyncio.Future[dt.datetime | Later] = asyncio.get_running_loop().create_future()
        state.waiting.append(future)
        if state.task is None or state.task.done():
            state.task = asyncio.create_task(self._reserve(provider.account, rate, state))
        slot = await future
        if isinstance(slot, Later):
            return slot
        delay = (slot - utcnow()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        # A rate-limit answer while this send waited for its slot pauses it too.
        paused = self._paused.get(provider.account)
        if paused is not None and paused > utcnow():
            return Later(paused)
        return None

    async def _reserve(self, account: str, rate: float, state: _Account) -> None:
        # Yield once so that sends started in the same moment join one reservation.
        await asyncio.sleep(0)
        while state.waiting:
            group, state.waiting = state.waiting, []
            try:
                async with self._db.transaction() as session:
                    slots, after = await reserve(
                        session, account, rate, len(group), utcnow(), self._horizon
                    )
            except Exception as exc:
                for future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for i, future in enumerate(group):
                if not future.done():
                    future.set_result(slots[i] if i < len(slots) else Later(after))

    async def slow_down(self, provider: Provider, seconds: float) -> None:
        """Pause the provider's account for every worker, for ``seconds``."""
        until = utcnow() + dt.timedelta(seconds=seconds)
        if self._paused.get(provider.account, until) <= until:
            self._paused[provider.account] = until
        async with self._db.transaction() as session:
            await push_back(session, provider.account, until)
        log.warning("pacing.slowed_down", account=provider.account, seconds=seconds)

    async def claim_pair(self, provider: Provider, address: str) -> dt.datetime | None:
        """Take the right to send to ``address`` now; else when that will be possible."""
        interval = provider.pair_interval_seconds
        if not interval:
            return None
        async with self._db.transaction() as session:
            return await take_pair(
                session, provider.account, address, dt.timedelta(seconds=interval), utcnow()
            )
