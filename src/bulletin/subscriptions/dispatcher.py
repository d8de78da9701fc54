"""The webhook dispatcher: claims due outbox rows, sends them concurrently, records results.

One runs in each worker process that sends (next to the deliveries' dispatcher). Its loop:

1. claim due rows of active endpoints (:func:`~bulletin.subscriptions.outbox_repository.claim`),
   at most twice the per-endpoint limit of each, none of an endpoint that already has its
   limit's worth held here, and never more than the process's free request slots;
2. send each as its own task, at most ``webhook_max_in_flight_per_endpoint`` at once per
   endpoint, each bounded by ``webhook_timeout_seconds`` and started only while its lease has
   room for it (else handed back untried);
3. results are written by a :class:`Recorder`, many per transaction, behind the claim's fence:
   2xx is delivered, anything else is tried again after the next of ``webhook_retry_delays``;
   after the last one the row has failed and its endpoint is marked failing (a
   ``webhooks.endpoint_failing`` log event and a counter), which stops everything for it until
   it is enabled again.

A worker that dies leaves its rows claimed; they fall due again when their lease ends and
are sent again with the same ``webhook-id`` (receivers deduplicate by it). On SIGTERM it
claims nothing more, lets requests under way finish, hands back the rows not started, and
writes what it learned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections import Counter

import aiohttp
import structlog

from bulletin.backoff import Backoff, log_failure
from bulletin.channels.egress import Resolver
from bulletin.channels.http import provider_session
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.metrics import WEBHOOK_ENDPOINTS_FAILING, WEBHOOKS_SENT
from bulletin.subscriptions import outbox_repository as outbox
from bulletin.subscriptions import sender, service
from bulletin.subscriptions.models import WebhookEndpoint
from bulletin.subscriptions.outbox_repository import Claimed, Result

log = structlog.get_logger("bulletin.webhooks")

#: A request is started only if the lease outlasts its timeout by this much.
_LEASE_MARGIN_SECONDS = 2.0
#: Rows claimed per endpoint per round, in multiples of its in-flight limit: enough that one
#: claiming transaction feeds several rounds of requests (a row that cannot start before its
#: lease runs short is handed back, so a slow endpoint holds no more than it can send).
_CLAIM_PER_SLOT = 5
#: How long a row waits before it is tried again when its endpoint's secret cannot be read
#: (a missing or wrong BULLETIN_SECRET_KEY): an operator's fix, not the endpoint's fault.
_UNREADABLE_SECRET_RETRY = dt.timedelta(seconds=60)


class Recorder:
    """Writes results in batches; never drops one (retries with backoff while the database is
    away), and a result written twice changes nothing the second time (the fence)."""

    def __init__(self, db: Database, *, flush_seconds: float, max_batch: int = 1000) -> None:
        self._db = db
        self._flush_seconds = flush_seconds
        self._max_batch = max_batch
        self._results: list[Result] = []
        self._has_work = asyncio.Event()

    def add(self, result: Result) -> None:
        self._results.append(result)
        self._has_work.set()

    async def run(self) -> None:
        """Flush forever; cancel to stop (call :meth:`drain` first)."""
        backoff = Backoff()
        while True:
            await self._has_work.wait()
            if len(self._results) < self._max_batch and self._flush_seconds:
                await asyncio.sleep(self._flush_seconds)
            try:
                await self._flush_once()
            except Exception as exc:
                delay = backoff.failed_after(
                    exc,
                    log,
                    outage="webhooks.record_failed",
                    defect="webhooks.record_error",
                    waiting=len(self._results),
                )
                await asyncio.sleep(delay)
                continue
            if failures := backoff.succeeded():
                log.info("webhooks.record_resumed", failures=failures)

    async def _flush_once(self) -> None:
        batch = self._results[: self._max_batch]
        if not batch:
            self._has_work.clear()
            return
        now = utcnow()
        async with self._db.transaction() as session:
            applied = await outbox.record_results(session, batch, now)
            exhausted = {r.endpoint_id for r in applied if r.state == "failed"}
            failing = await outbox.mark_failing(session, exhausted, now)
        del self._results[: len(batch)]
        if not self._results:
            self._has_work.clear()
        outcomes = Counter(
            "delivered" if r.state == "delivered" else "retry" if r.state == "pending" else "failed"
            for r in applied
            if r.tried
        )
        for outcome, n in outcomes.items():
            WEBHOOKS_SENT.labels(outcome=outcome).inc(n)
        for endpoint in failing:
            WEBHOOK_ENDPOINTS_FAILING.inc()
            log.warning(
                "webhooks.endpoint_failing",
                org_id=str(endpoint.org_id),
                endpoint_id=str(endpoint.id),
                note="a webhook used up its retries; nothing is sent to the endpoint until it "
                "is enabled again",
            )

    async def drain(self, timeout: float) -> bool:
        """Write everything queued, trying until ``timeout``; true when nothing is left."""
        deadline = time.monotonic() + timeout
        while self._results and time.monotonic() < deadline:
            try:
                await self._flush_once()
            except Exception as exc:
                log_failure(
                    log, exc, outage="webhooks.record_failed", defect="webhooks.record_error"
                )
                await asyncio.sleep(0.2)
        return not self._results


class WebhookDispatcher:
    """The loop that sends the outbox (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._resolver = resolver
        self._box = service.secret_box(settings)
        self._delays = settings.webhook_retry_schedule
        self._per_endpoint = settings.webhook_max_in_flight_per_endpoint
        self.recorder = Recorder(db, flush_seconds=settings.completion_flush_ms / 1000)
        #: Rows held (claimed, not yet reported) per endpoint, and their total.
        self._held: Counter[uuid.UUID] = Counter()
        self._slots: dict[uuid.UUID, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when a full endpoint, or the whole process, has room again.
        self._room = asyncio.Event()
        self._stopping = False
        #: Whether the last claim found nothing (the next one first looks whether it may).
        self._idle = True

    @property
    def held(self) -> int:
        return sum(self._held.values())

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Send until ``stopping`` is set, then shut down gracefully."""
        recorder = asyncio.create_task(self.recorder.run(), name="webhook-recorder")
        backoff = Backoff()
        async with provider_session(
            allow_private=self._settings.allow_private_provider_addresses,
            resolver=self._resolver,
        ) as http:
            try:
                while not stopping.is_set():
                    try:
                        wait = await self._round(http)
                    except Exception as exc:
                        wait = backoff.failed_after(
                            exc, log, outage="webhooks.claim_failed", defect="webhooks.claim_error"
                        )
                    else:
                        if failures := backoff.succeeded():
                            log.info("webhooks.claim_resumed", failures=failures)
                    if wait > 0:
                        await self._sleep(wait, stopping)
            finally:
                await self._shutdown(recorder)

    async def _round(self, http: aiohttp.ClientSession) -> float:
        """Claim and start what can be sent now; the seconds to wait before the next round."""
        # Room made from here on (a request ending) cuts the next wait short.
        self._room.clear()
        poll = self._settings.idle_poll_seconds
        free = self._settings.webhook_max_in_flight - self.held
        if free <= 0:
            return poll
        if self._idle:
            # Nothing was due last time: look (a read) before claiming (a write), so that an
            # idle worker does not queue for SQLite's one writer every poll.
            async with self._db.read() as session:
                due = await outbox.next_due(session)
            if due is None:
                return poll
            ahead = (due - utcnow()).total_seconds()
            if ahead > 0:
                return min(poll, ahead)
        rows, endpoints, now = await self._claim(free)
        self._idle = not rows
        if not rows:
            # What is due belongs to endpoints full here, or is being sent by another worker.
            return poll
        deadline = time.monotonic() + self._settings.webhook_lease_seconds
        for row in rows:
            endpoint = endpoints.get(row.endpoint_id)
            if endpoint is not None:
                self._start(http, row, endpoint, now, deadline)
        return 0.0

    async def _claim(
        self, free: int
    ) -> tuple[list[Claimed], dict[uuid.UUID, WebhookEndpoint], dt.datetime]:
        busy = {e for e, n in self._held.items() if n >= self._per_endpoint}
        now = utcnow()
        lease = now + dt.timedelta(seconds=self._settings.webhook_lease_seconds)
        async with self._db.transaction() as session:
            rows = await outbox.claim(
                session,
                now,
                lease,
                limit=free,
                per_endpoint=_CLAIM_PER_SLOT * self._per_endpoint,
                busy=busy,
            )
            endpoints = await outbox.endpoints(session, {r.endpoint_id for r in rows})
        return rows, endpoints, now

    async def _sleep(self, timeout: float, stopping: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(self._room.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # --- sending ----------------------------------------------------------------------------

    def _start(
        self,
        http: aiohttp.ClientSession,
        row: Claimed,
        endpoint: WebhookEndpoint,
        now: dt.datetime,
        deadline: float,
    ) -> None:
        try:
            secrets = service.signing_secrets(endpoint, self._box, now)
        except Exception as exc:
            # The key is missing or wrong. Only the error's name: no traceback, whose locals
            # could show a secret.
            log.error(  # noqa: TRY400
                "webhooks.secret_unreadable", endpoint_id=str(endpoint.id), error=type(exc).__name__
            )
            self.recorder.add(
                self._handed_back(row, now + _UNREADABLE_SECRET_RETRY, "secret unreadable")
            )
            return
        self._held[row.endpoint_id] += 1
        task = asyncio.create_task(self._send(http, row, endpoint.url, secrets, deadline))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(done, row.endpoint_id))

    async def _send(
        self,
        http: aiohttp.ClientSession,
        row: Claimed,
        url: str,
        secrets: list[str],
        deadline: float,
    ) -> None:
        timeout = self._settings.webhook_timeout_seconds
        slot = self._slots.setdefault(row.endpoint_id, asyncio.Semaphore(self._per_endpoint))
        async with slot:
            if self._stopping or time.monotonic() + timeout + _LEASE_MARGIN_SECONDS > deadline:
                self.recorder.add(self._handed_back(row, utcnow(), "not started in time"))
                return
            at = utcnow()
            answer = await sender.post(
                http, url, secrets, row.id, sender.body(row), timeout=timeout
            )
        state, next_at = sender.after_attempt(answer, row.attempts, self._delays, utcnow())
        if state != "delivered":
            log.info(
                "webhooks.attempt_failed",
                endpoint_id=str(row.endpoint_id),
                webhook_id=row.id,
                status=answer.status,
                error=answer.error,
                attempts=row.attempts,
                next=state,
            )
        self.recorder.add(
            Result(
                id=row.id,
                endpoint_id=row.endpoint_id,
                attempts=row.attempts,
                state=state,
                next_attempt_at=next_at,
                tried=True,
                at=at,
                status=answer.status,
                error=answer.error,
                duration_ms=answer.duration_ms,
            )
        )

    def _handed_back(self, row: Claimed, due: dt.datetime, why: str) -> Result:
        log.debug("webhooks.handed_back", webhook_id=row.id, why=why)
        return Result(
            id=row.id,
            endpoint_id=row.endpoint_id,
            attempts=row.attempts,
            state="pending",
            next_attempt_at=due,
            tried=False,
            at=utcnow(),
        )

    def _finished(self, task: asyncio.Task[None], endpoint_id: uuid.UUID) -> None:
        self._tasks.discard(task)
        # Room again for an endpoint that was full here, or for a process that was.
        full = self._held[endpoint_id] == self._per_endpoint
        process_full = self.held == self._settings.webhook_max_in_flight
        self._held[endpoint_id] -= 1
        if self._held[endpoint_id] <= 0:
            del self._held[endpoint_id]
            if endpoint_id in self._slots and not self._slots[endpoint_id].locked():
                del self._slots[endpoint_id]
        if full or process_full:
            self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhooks.send_task_crashed", error=repr(task.exception()))

    async def _shutdown(self, recorder: asyncio.Task[None]) -> None:
        self._stopping = True
        if self._tasks:
            grace = self._settings.shutdown_grace_seconds + self._settings.webhook_timeout_seconds
            _done, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                # Cut off mid-request: left to the lease, and sent again after it.
                task.cancel()
            if late:
                await asyncio.wait(late)
        if not await self.recorder.drain(timeout=10.0):
            log.warning("webhooks.results_unsaved", note="the rows are sent again after the lease")
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
