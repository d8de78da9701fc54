"""The scheduler: turns due messages into deliveries, settles expired leases, closes messages.

Any number of schedulers may run (one per worker process is normal). On PostgreSQL they
share the work through row locks taken with SKIP LOCKED; on SQLite writers take turns.

A message's audience is resolved up to :data:`RESOLVE_AHEAD` before its ``send_at``, into
deliveries due at ``send_at``: dispatchers wake for them at that instant, so the time it takes
to resolve the audience and tell the dispatchers about it is not added to every send.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import structlog

from bulletin.backoff import Backoff
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.deliveries import audience, fallback, queue
from bulletin.deliveries import repository as deliveries
from bulletin.deliveries.metrics import count_expired_leases
from bulletin.messages import repository as messages
from bulletin.messages.models import Message
from bulletin.messages.states import MessageState
from bulletin.signals import Notifier, Wakeup, Work
from bulletin.worker import policy, repository
from bulletin.worker.policy import RetryPolicy

log = structlog.get_logger("bulletin.scheduler")

_REAP_BATCH = 500
#: Due messages one resolving transaction takes at most (each costs a few statements).
_RESOLVE_MESSAGES = 200
#: How long before its ``send_at`` a message's audience is resolved.
RESOLVE_AHEAD = dt.timedelta(seconds=1)
_TIDY_SECONDS = 60.0


def _one_person(message: Message) -> bool:
    """Whether the message names one recipient and nothing else, and so can be resolved with
    many others in a few statements (see resolve_one_person_messages)."""
    named = message.audience.get("recipients") or ()
    return len(named) == 1 and message.resolve_cursor == 0 and not message.fallback_after_seconds


class Scheduler:
    def __init__(
        self,
        db: Database,
        registry: ChannelRegistry,
        settings: Settings,
        wakeup: Wakeup,
        notifier: Notifier,
    ) -> None:
        self._db = db
        self._registry = registry
        self._settings = settings
        self._wakeup = wakeup
        self._notifier = notifier
        self._retry = RetryPolicy.from_settings(settings)
        self._next_tidy = 0.0
        self._next_housekeeping = 0.0
        #: The time up to which the last look resolved every due message it could.
        self._resolved_up_to: dt.datetime | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until ``stopping`` is set. A failed tick is tried again after a capped backoff:
        every duty is idempotent and resumable, so a tick cut short by an outage loses
        nothing.

        Due messages are resolved whenever the scheduler wakes (at the next ``send_at``, or
        poked about a new message); the other duties, which wait for a lease or a deadline
        measured in seconds, run once per poll interval however often it wakes.
        """
        backoff = Backoff()
        while not stopping.is_set():
            try:
                housekeeping = time.monotonic() >= self._next_housekeeping
                if housekeeping:
                    self._next_housekeeping = time.monotonic() + self._settings.idle_poll_seconds
                await self.tick(housekeeping=housekeeping)
                timeout = min(
                    await self._until_next_due(),
                    max(0.0, self._next_housekeeping - time.monotonic()),
                )
            except Exception as exc:
                timeout = backoff.failed_after(
                    exc, log, outage="scheduler.tick_failed", defect="scheduler.tick_error"
                )
            else:
                if failures := backoff.succeeded():
                    log.info("scheduler.resumed", failures=failures)
            if not stopping.is_set():
                await self._wakeup.wait(timeout)

    async def tick(self, *, housekeeping: bool = True) -> None:
        """One round of every duty (only resolution without ``housekeeping``); public so that
        tests can drive the scheduler step by step."""
        resolved = await self.resolve_due()
        if not housekeeping:
            return
        async with self._db.read() as session:
            expired, overdue = await deliveries.anything_overdue(session, utcnow())
        made = [
            resolved,
            await self.reap_expired() if expired else 0,
            await self.fall_back_due() if overdue else 0,
        ]
        if any(made):
            self._notifier.work_available(Work.DELIVERIES)
        await self.finish_messages()
        if time.monotonic() >= self._next_tidy:
            self._next_tidy = time.monotonic() + _TIDY_SECONDS
            await self.tidy()

    async def tidy(self) -> int:
        """Forget pair-rate slots long past, and cancel deliveries left pending in cancelled
        messages by a race with a cancel; returns how many rows changed."""
        async with self._db.transaction() as session:
            now = utcnow()
            forgotten = await repository.forget_pairs(session, now - dt.timedelta(hours=1))
            return forgotten + await deliveries.cancel_orphans(session, now)

    async def resolve_due(self) -> int:
        """Resolve the audiences of messages due within :data:`RESOLVE_AHEAD`; returns
        recipients resolved.

        Each transaction resolves up to ``resolve_chunk_size`` recipients, of as many due
        messages (up to :data:`_RESOLVE_MESSAGES`) as that takes: a large audience takes a
        chunk per transaction, and a thousand one-person notifications take one transaction,
        not a thousand.
        """
        total = 0
        while True:
            budget = self._settings.resolve_chunk_size
            finished: list[Message] = []
            async with self._db.transaction() as session:
                now = utcnow()
                due = await messages.due_for_resolution(
                    session, now + RESOLVE_AHEAD, _RESOLVE_MESSAGES
                )
                if not due:
                    self._resolved_up_to = now + RESOLVE_AHEAD
                    return total
                single = [m for m in due if _one_person(m)]
                others = [m for m in due if not _one_person(m)]
                if single:
                    resolved = await audience.resolve_one_person_messages(session, single)
                    budget -= sum(resolved.values())
                    total += sum(resolved.values())
                for message in single:
                    message.state = MessageState.SENDING.value
                    message.resolved_at = now
                    finished.append(message)
                for message in others:
                    if budget <= 0:
                        break
                    count, exhausted = await audience.resolve_chunk(session, message, budget, now)
                    budget -= count
                    total += count
                    message.state = MessageState.RESOLVING.value
                    if exhausted:
                        message.state = MessageState.SENDING.value
                        message.resolved_at = now
                        finished.append(message)
            if budget < self._settings.resolve_chunk_size:
                self._notifier.work_available(Work.DELIVERIES)
            for message in finished:
                log.info(
                    "scheduler.message_resolved",
                    message_id=str(message.id),
                    recipients=message.audience_size,
                )

    async def reap_expired(self) -> int:
        """Apply the in-doubt policy to sends whose lease ran out; returns how many."""
        async with self._db.transaction() as session:
            now = utcnow()
            rows = await queue.expired_leases(session, now, _REAP_BATCH)
            outcomes = [
                policy.in_doubt(
                    delivery_id=row.id,
                    attempt=row.attempt,
                    send_attempts=row.send_attempts,
                    deduplicates=self._registry.provider_for(row.org_id, row.channel).deduplicates,
                    policy=self._retry,
                    now=now,
                    why="the worker's lease expired during the send",
                )
                for row in rows
            ]
            applied = await queue.complete(session, outcomes, now)
        count_expired_leases(applied)
        if applied:
            settled = {o.delivery_id for o in applied}
            log.warning(
                "scheduler.leases_expired",
                deliveries=sorted(settled),
                messages=sorted({str(r.message_id) for r in rows if r.id in settled}),
            )
        return len(applied)

    async def fall_back_due(self) -> int:
        """Move people whose channel reported no delivery within ``fallback_after`` on."""
        async with self._db.transaction() as session:
            now = utcnow()
            overdue = await fallback.due_fallbacks(session, now, _REAP_BATCH)
            if not overdue:
                return 0
            made = await fallback.fall_back_after_deadline(session, overdue, now)
        log.info("scheduler.fell_back", overdue=len(overdue), new_deliveries=made)
        return made

    async def finish_messages(self) -> int:
        async with self._db.transaction() as session:
            return await deliveries.finish_completed(session, utcnow())

    async def _until_next_due(self) -> float:
        """Seconds until the next message is to be resolved, at most the poll interval.

        Messages due by the last look that it did not resolve are being resolved by another
        scheduler: waking for them would only find them locked, again and again until that
        scheduler commits, so only later ones count.
        """
        timeout = self._settings.idle_poll_seconds
        async with self._db.read() as session:
            send_at = await messages.next_send_at(session, after=self._resolved_up_to)
        if send_at is not None:
            resolve_at = send_at - RESOLVE_AHEAD
            timeout = min(timeout, max(0.0, (resolve_at - utcnow()).total_seconds()))
        return timeout
