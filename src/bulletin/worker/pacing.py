"""Pacing: each provider account sends no faster than its rate, over all workers together.

The shared state is one row per account in ``pacing_slots``: the next free send slot. A
worker that wants to send ``k`` messages reserves ``k`` consecutive slots in one short
transaction (the row is locked while it is moved forward by ``k / rate``), then starts each
send at its slot. Reservations of many concurrent sends in one process are made together, so
pacing costs one round trip per group, not per message.

* Slots are spaced a little wider than ``1 / rate`` (:data:`SLACK`) and a send that cannot
  start within a few milliseconds of its slot does not use it (:data:`LATE_SECONDS`) while
  the account's slots are taken well ahead (:data:`BACKLOG_SECONDS`), so that no second
  counted by the provider holds more than ``rate`` sends although each reaches it a little
  late, by a different amount.
* A slot is only reserved within a short horizon (2 s); a send whose slot would come later is
  given back to the queue, so that no lease is spent waiting. It comes due again at its place
  in a second schedule of the account (:func:`~bulletin.worker.repository.queue_later`):
  sends given back by all workers come due one after the other, at the account's rate, not
  all at once.
* :meth:`Pacer.slow_down` pushes the account's next slot past a pause (a rate-limit answer, a
  ``Retry-After``): every worker then waits, instead of one message retrying in a tight loop.
  Sends of this process already holding a slot are paused too; other processes may still
  use the slots they reserved before the pause, at most one horizon's worth.
* :meth:`Pacer.claim_pair` spaces messages to one address (WhatsApp's pair rate limit). A
  send refused for the account's rate or for a closed window reached nobody, and gives its
  pair slot back (:meth:`Pacer.give_back_pair`): its retry is not held for the interval by a
  message the person never got.

The queries are in :mod:`bulletin.worker.repository`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from dataclasses import dataclass

import structlog

from bulletin.channels.base import Provider
from bulletin.db import Database, utcnow
from bulletin.worker import repository
from bulletin.worker.repository import PairHold

log = structlog.get_logger("bulletin.pacing")

#: Slots are ``(1 + SLACK) / rate`` apart, so any ``rate`` consecutive sends span a second and
#: ``SLACK`` seconds more: that much of difference in how late two sends reach the provider
#: (the network, a busy process) cannot put ``rate + 1`` of them into one second.
SLACK = 0.035
#: A send that cannot start within this long after its slot (its process was busy) does not
#: use it: part of :data:`SLACK` is kept for the way to the provider.
LATE_SECONDS = 0.020
#: The late rule only matters while the account's slots are taken this far ahead: below
#: that, the sends that follow a late one fill less than a second, and a process too busy to
#: keep a slot to the millisecond (at a high rate, which few workers can fill) sends anyway.
BACKLOG_SECONDS = 0.5
#: Slots a send may miss before it goes back to the queue.
_TRIES = 2
#: Sends given back come due in groups this far apart, so that one claim takes each group.
_LATER_GRAIN_SECONDS = 0.1
#: The most by which reservations are made ahead of time for the round trip they take.
_MAX_LEAD_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Later:
    """No slot within the horizon; come back at ``at``."""

    at: dt.datetime


class _Account:
    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[dt.datetime | Later]] = []
        self.task: asyncio.Task[None] | None = None
        #: When this process next lets a send it gave back come due (see :meth:`Pacer._later`).
        self.deferred_until = utcnow()
        #: Whether the last reservation found the account's slots taken
        #: :data:`BACKLOG_SECONDS` ahead or more.
        self.backed_up = False


class Pacer:
    """One process's side of pacing: groups reservations, waits for slots.

    Slots are spaced a little wider than ``1 / rate`` (by :data:`SLACK`), and a send only uses
    its slot if it starts within :data:`LATE_SECONDS` of it. Together these keep any second
    at no more than ``rate`` sends as the provider counts them, although sends reach it a few
    milliseconds late, each by a different amount: the provider answers sends over its limit
    with a rate-limit error, which pauses the whole account for seconds.
    """

    def __init__(self, db: Database, *, horizon_seconds: float = 2.0) -> None:
        self._db = db
        self._horizon = dt.timedelta(seconds=horizon_seconds)
        self._accounts: dict[str, _Account] = {}
        self._paused: dict[str, dt.datetime] = {}
        #: Seconds a reservation takes (a moving average): slots are reserved this far ahead,
        #: and each send waits for its answer anyway.
        self._lead = 0.0

    async def wait_turn(self, provider: Provider) -> Later | None:
        """Wait for the provider's next send slot; :class:`Later` if none is near."""
        rate = provider.rate_per_second
        if rate is None:
            return None
        account = provider.account
        state = self._accounts.setdefault(account, _Account())
        gap = dt.timedelta(seconds=(1 + SLACK) / rate)
        # However many slots it misses, a send waits no longer than one horizon in all.
        deadline = utcnow() + self._horizon
        for attempt in range(_TRIES):
            if (paused := self._paused_until(account)) is not None:
                return self._later(state, paused, gap)
            future: asyncio.Future[dt.datetime | Later] = asyncio.get_running_loop().create_future()
            state.waiting.append(future)
            if state.task is None or state.task.done():
                state.task = asyncio.create_task(self._reserve(account, gap, state))
            slot = await future
            if isinstance(slot, Later):
                return slot
            if attempt and slot > deadline:
                return self._later(state, slot, gap)
            delay = (slot - utcnow()).total_seconds()
            if delay > 0:
                await asyncio.sleep(delay)
            # A rate-limit answer while this send waited for its slot pauses it too.
            if (paused := self._paused_until(account)) is not None:
                return self._later(state, paused, gap)
            late = (utcnow() - slot).total_seconds()
            if late <= LATE_SECONDS or not state.backed_up:
                return None
            # Sending now would crowd it into the second of the sends after it. The slot
            # goes unused, which only slows the account down a little.
            log.info("pacing.slot_missed", account=account, late_ms=round(late * 1000, 1))
        return self._later(state, utcnow(), gap)

    def _paused_until(self, account: str) -> dt.datetime | None:
        paused = self._paused.get(account)
        return paused if paused is not None and paused > utcnow() else None

    def _later(self, state: _Account, at: dt.datetime, gap: dt.timedelta) -> Later:
        """Come back at ``at`` or, when sends given back by this process already come due
        then, one slot after the last of them: spread out, they are claimed again a few at a
        time, not all together in one burst that again finds every slot taken."""
        at = max(at, state.deferred_until)
        state.deferred_until = at + gap
        return Later(at)

    async def _reserve(self, account: str, gap: dt.timedelta, state: _Account) -> None:
        # Yield once so that sends started in the same moment join one reservation.
        await asyncio.sleep(0)
        rate = 1 / gap.total_seconds()
        while state.waiting:
            group, state.waiting = state.waiting, []
            asked = time.monotonic()
            # Slots start no sooner than the answer is expected back: a slot already past when
            # it arrives would make its send late.
            start = utcnow() + dt.timedelta(seconds=self._lead)
            try:
                async with self._db.transaction() as session:
                    # Every send waits for this commit. Slots are soft state: a crash may
                    # forget the last few, which costs at most a short burst afterwards.
                    await repository.commit_without_waiting(session)
                    slots, after = await repository.reserve(
                        session, account, rate, len(group), start, self._horizon
                    )
                    places = await repository.queue_later(
                        session, account, len(group) - len(slots), after, gap
                    )
            except Exception as exc:
                for future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            took = time.monotonic() - asked
            state.backed_up = (after - utcnow()).total_seconds() >= BACKLOG_SECONDS
            self._lead = min(_MAX_LEAD_SECONDS, 0.8 * self._lead + 0.2 * took)
            answers: list[dt.datetime | Later] = [
                *slots,
                *(Later(self._due(place)) for place in places),
            ]
            for future, answer in zip(group, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    def _due(self, place: dt.datetime) -> dt.datetime:
        """When a send given back for the place ``place`` is to be claimed again: half a
        horizon before it, so that its new reservation finds a slot near ``place``; rounded up
        to the grain."""
        at = (place - self._horizon / 2).timestamp()
        return dt.datetime.fromtimestamp(
            math.ceil(at / _LATER_GRAIN_SECONDS) * _LATER_GRAIN_SECONDS, dt.UTC
        )

    async def slow_down(
        self, provider: Provider, seconds: float, *, give_back: PairHold | None = None
    ) -> None:
        """Pause the provider's account for every worker, for ``seconds``; and undo the pair
        hold ``give_back`` of the refused send in the same transaction."""
        until = utcnow() + dt.timedelta(seconds=seconds)
        if self._paused.get(provider.account, until) <= until:
            self._paused[provider.account] = until
        async with self._db.transaction() as session:
            await repository.push_back(session, provider.account, until)
            if give_back is not None:
                await repository.give_back_pair(session, give_back)
        log.warning("pacing.slowed_down", account=provider.account, seconds=seconds)

    async def claim_pair(self, provider: Provider, address: str) -> PairHold | Later | None:
        """Take the right to send to ``address`` now (:class:`PairHold`), or learn when that
        will be possible (:class:`Later`); ``None`` when the provider does not space them."""
        interval = provider.pair_interval_seconds
        if not interval:
            return None
        gap = dt.timedelta(seconds=interval)
        async with self._db.transaction() as session:
            # Read once the transaction holds its connection: the interval runs from the send.
            now = utcnow()
            busy_until = await repository.take_pair(session, provider.account, address, gap, now)
        if busy_until is not None:
            return Later(busy_until)
        return PairHold(provider.account, address, now, now + gap)

    async def give_back_pair(self, hold: PairHold) -> None:
        """The send holding ``hold`` did not reach the person: free the pair slot it took."""
        async with self._db.transaction() as session:
            await repository.give_back_pair(session, hold)
