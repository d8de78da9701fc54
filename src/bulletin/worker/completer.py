"""Writes the outcomes of finished sends in batches, with the fence that makes them safe.

Outcomes wait a few milliseconds so that many are written by one statement. If the database
is unreachable they are kept, and the write is tried again (with capped backoff) until it lands
or the fence turns it away because the lease was taken over: an outcome learned from a provider
is never dropped, so an accepted send is neither resent nor left in ``sending``. If this process
dies first, the deliveries' leases expire and the reaper settles them, which is the designed
path. Writing an outcome twice is harmless: the fence makes the second write change nothing
(the first may have committed although its acknowledgement was lost with the connection).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from bulletin.backoff import Backoff, log_failure
from bulletin.db import Database, utcnow
from bulletin.deliveries import queue
from bulletin.deliveries.metrics import count_completions
from bulletin.deliveries.outcomes import Outcome
from bulletin.metrics import FENCED_OUT

log = structlog.get_logger("bulletin.worker")


class Completer:
    def __init__(self, db: Database, *, flush_seconds: float, max_batch: int = 1000) -> None:
        self._db = db
        self._flush_seconds = flush_seconds
        self._max_batch = max_batch
        self._outcomes: list[Outcome] = []
        self._has_work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.applied = 0
        self.fenced_out = 0

    def add(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._idle.clear()
        self._has_work.set()

    async def run(self) -> None:
        """Flush forever; cancel to stop (call :meth:`drain` first to write what is left)."""
        backoff = Backoff()
        while True:
            await self._has_work.wait()
            if len(self._outcomes) < self._max_batch and self._flush_seconds:
                await asyncio.sleep(self._flush_seconds)
            try:
                await self._flush_once()
            except Exception as exc:
                # Never give up on an outcome: this task ending would strand every later one.
                delay = backoff.failed_after(
                    exc,
                    log,
                    outage="worker.complete_failed",
                    defect="worker.complete_error",
                    waiting=len(self._outcomes),
                )
                await asyncio.sleep(delay)
                continue
            if failures := backoff.succeeded():
                log.info("worker.complete_resumed", failures=failures)

    async def _flush_once(self) -> None:
        batch = self._outcomes[: self._max_batch]
        if not batch:
            self._has_work.clear()
            self._idle.set()
            return
        async with self._db.transaction() as session:
            applied = await queue.complete(session, batch, utcnow())
        del self._outcomes[: len(batch)]
        self.applied += len(applied)
        count_completions(applied)
        if len(applied) != len(batch):
            stale = {o.delivery_id for o in batch} - {o.delivery_id for o in applied}
            self.fenced_out += len(stale)
            FENCED_OUT.inc(len(stale))
            log.info("worker.completion_fenced_out", deliveries=sorted(stale))
        if not self._outcomes:
            self._has_work.clear()
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Write everything queued, trying until ``timeout``; true when nothing is left."""
        deadline = time.monotonic() + timeout
        while self._outcomes and time.monotonic() < deadline:
            try:
                await self._flush_once()
            except Exception as exc:
                log_failure(
                    log,
                    exc,
                    outage="worker.complete_failed",
                    defect="worker.complete_error",
                    waiting=len(self._outcomes),
                )
                await asyncio.sleep(0.2)
        return not self._outcomes

    async def wait_idle(self) -> None:
        await self._idle.wait()
