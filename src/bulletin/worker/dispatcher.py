"""The dispatcher: claims due deliveries, decides each one, sends, and records the outcome.

One dispatcher runs per worker process and keeps up to ``max_in_flight`` provider calls going
at once. Its loop, readable in one sitting:

1. claim a batch of deliveries due now or within :data:`CLAIM_AHEAD` (never more than there
   are free send slots); each is sent when it is due, not before;
2. for each, :func:`~bulletin.worker.policy.decide`: suppress, defer to the end of quiet
   hours, or send;
3. each send runs as its own task (:class:`~bulletin.worker.sending.Sender`), bounded by the
   send timeout and only started while the lease has room for it;
4. outcomes go to the :class:`~bulletin.worker.completer.Completer`, which writes them in
   batches behind the fence.

On stop it claims nothing more, lets in-flight sends finish within the grace period, hands
back (``pending``) claimed deliveries whose send had not started, and applies the channel's
in-doubt policy to sends cut off by the end of the grace period.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
import uuid

import structlog

from bulletin.backoff import Backoff, log_failure
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, describe, is_unavailable, utcnow
from bulletin.deliveries import queue, repository, suppressions
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.queue import ClaimedRow
from bulletin.deliveries.states import DeliveryState
from bulletin.recipients.addresses import addresses_of
from bulletin.recipients.links import PreferenceLinks
from bulletin.recipients.models import Recipient
from bulletin.signals import Wakeup
from bulletin.worker import policy
from bulletin.worker.completer import Completer
from bulletin.worker.lookups import MessageCache, TextLinkSetting
from bulletin.worker.outcomes import not_sent
from bulletin.worker.policy import MessageFacts, Send, Suppress
from bulletin.worker.sending import Sender

log = structlog.get_logger("bulletin.worker")

# Claimed deliveries decided between two chances for other tasks of the process to run, and
# the longest time spent deciding (rendering included) before the next chance, whichever first.
_DECIDE_BETWEEN_YIELDS = 20
_DECIDE_BETWEEN_YIELDS_SECONDS = 0.01
# Deliveries are claimed and decided up to this long before they are due, then sent when they
# are: the claim's round trips to the database are not added to the time it is sent at.
CLAIM_AHEAD = dt.timedelta(seconds=0.25)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        registry: ChannelRegistry,
        settings: Settings,
        wakeup: Wakeup,
        *,
        links: PreferenceLinks | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        #: Names this process in the claim events of the deliveries it takes.
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._settings = settings
        self._wakeup = wakeup
        self.completer = Completer(db, flush_seconds=settings.completion_flush_ms / 1000)
        self._messages = MessageCache(db)
        #: Makes each person's preference link; ``None`` sends messages without links.
        self._links = links
        self._text_links = TextLinkSetting(db)
        self._sends: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._sender = Sender(
            db,
            registry,
            settings,
            report=self._report,
            stopping=self._stopping,
            links=links,
            text_links=self._text_links,
        )
        #: The time up to which the last claim took every due delivery it could.
        self._claimed_up_to = utcnow()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Dispatch until ``stopping`` is set, then shut down gracefully."""
        completer = asyncio.create_task(self.completer.run(), name="completer")
        backoff = Backoff()
        try:
            while not stopping.is_set():
                free = self._settings.max_in_flight - len(self._sends)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._sleep_until(self._slot_freed, stopping, 1.0)
                    continue
                limit = min(free, self._settings.claim_batch_size)
                try:
                    claimed = await self._claim_and_dispatch(limit)
                except Exception as exc:
                    # The database went away (or a defect): wait, then look again. Sends in
                    # flight go on; their outcomes wait in the completer.
                    delay = backoff.failed_after(
                        exc, log, outage="worker.claim_failed", defect="worker.claim_error"
                    )
                    await self._wakeup.wait(delay)
                    continue
                if failures := backoff.succeeded():
                    log.info("worker.claim_resumed", failures=failures)
                if claimed < limit:
                    # Every due delivery not held by another worker was taken: claiming again
                    # at once would find nothing, so sleep until more falls due or is made.
                    await self._idle(self._claimed_up_to)
        finally:
            await self._shutdown(completer)

    async def _sleep_until(
        self, event: asyncio.Event, stopping: asyncio.Event, timeout: float
    ) -> None:
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _idle(self, claimed_up_to: dt.datetime) -> None:
        """Sleep until poked, the next delivery falls due, or the poll interval passes.

        Deliveries due by ``claimed_up_to`` that the last claim did not get are being claimed
        by another worker (or belong to a cancelled message): waking for them would only find
        them gone, again and again until that worker commits, so only later ones count.
        """
        timeout = self._settings.idle_poll_seconds
        try:
            async with self._db.read() as session:
                due = await repository.next_due(session, after=claimed_up_to)
        except Exception as exc:
            # Only a hint for how long to sleep; the claim loop reports outages.
            log_failure(log, exc, outage=None, defect="worker.next_due_error")
            due = None
        if due is not None:
            claim_at = due - CLAIM_AHEAD
            timeout = min(timeout, max(0.0, (claim_at - utcnow()).total_seconds()))
        await self._wakeup.wait(timeout)

    async def _shutdown(self, completer: asyncio.Task[None]) -> None:
        self._stopping.set()
        if self._sends:
            log.info("worker.draining", in_flight=len(self._sends))
            _done, late = await asyncio.wait(
                self._sends, timeout=self._settings.shutdown_grace_seconds
            )
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if not await self.completer.drain(timeout=10.0):
            log.warning("worker.outcomes_unsaved", note="leases will expire and be settled")
        completer.cancel()
        await asyncio.gather(completer, return_exceptions=True)

    # --- claim and decide -------------------------------------------------------------------

    async def _claim_and_dispatch(self, limit: int) -> int:
        await self._registry.refresh()
        looked_at = time.monotonic()
        now = utcnow()
        due_by = self._claimed_up_to = now + CLAIM_AHEAD
        lease = dt.timedelta(seconds=self._settings.lease_seconds)
        lease_deadline = time.monotonic() + self._settings.lease_seconds
        async with self._db.transaction() as session:
            rows = await queue.claim(session, now, now + lease, limit, self._name, due_by=due_by)
            if not rows:
                return 0
            recipients = await repository.recipients_by_id(session, [r.recipient_id for r in rows])
            addresses = {a for r in recipients.values() for a in addresses_of(r)}
            suppressed = await suppressions.suppressed_addresses(
                session, {r.org_id for r in rows}, addresses
            )
        # The claim is committed: from here on, a row that is not handed to a send or given an
        # outcome would sit in `sending` until its lease expires and then be settled as in
        # doubt, though nothing was sent. If deciding fails (the database went away), give
        # back every row not yet decided; the completer writes that once the database is back.
        undecided = {row.id: row for row in rows}
        try:
            await self._registry.confirm_unconfigured(
                {(r.org_id, r.channel) for r in rows}, looked_at
            )
            messages = await self._messages.get_many({r.message_id for r in rows})
            if self._links is not None:
                await self._text_links.refresh({r.org_id for r in rows})
            yielded = time.monotonic()
            for i, row in enumerate(rows):
                if i and (
                    i % _DECIDE_BETWEEN_YIELDS == 0
                    or time.monotonic() - yielded > _DECIDE_BETWEEN_YIELDS_SECONDS
                ):
                    # Let sends waiting for their pacing slot start on time meanwhile, also
                    # when templates that use up their rendering budget slow deciding down.
                    await asyncio.sleep(0)
                    yielded = time.monotonic()
                decision = await self._decide(
                    row, recipients[row.recipient_id], messages, suppressed
                )
                undecided.pop(row.id)
                if isinstance(decision, Send):
                    self._start_send(
                        row,
                        recipients[row.recipient_id],
                        messages[row.message_id],
                        decision,
                        lease_deadline,
                    )
                elif isinstance(decision, Suppress):
                    self._report(
                        not_sent(row.id, row.attempt, DeliveryState.SUPPRESSED, decision.reason)
                    )
                else:
                    self._report(
                        not_sent(
                            row.id,
                            row.attempt,
                            DeliveryState.PENDING,
                            decision.reason,
                            at=decision.until,
                        )
                    )
        except asyncio.CancelledError:
            self._give_back_undecided(list(undecided.values()), "worker stopping")
            raise
        except Exception as exc:
            # Any other error is a defect; its rows are left to the lease, as after a crash.
            if is_unavailable(exc):
                self._give_back_undecided(list(undecided.values()), describe(exc))
            raise
        return len(rows)

    def _give_back_undecided(self, rows: list[ClaimedRow], why: str) -> None:
        for row in rows:
            self._report(
                not_sent(
                    row.id,
                    row.attempt,
                    DeliveryState.PENDING,
                    f"released before sending: {why}",
                    at=utcnow(),
                )
            )

    async def _decide(
        self,
        row: ClaimedRow,
        recipient: Recipient,
        messages: dict[uuid.UUID, MessageFacts],
        suppressed: set[tuple[uuid.UUID, str, str]],
    ) -> policy.Decision:
        message = messages[row.message_id]

        def is_suppressed(channel: str, address: str) -> bool:
            return (row.org_id, channel, address) in suppressed

        # Sent before to a provider that deduplicates: this may be the retry of a send in doubt,
        # which only that provider would recognise, so the delivery must not change channel.
        provider = self._registry.provider_for(row.org_id, row.channel)
        stay = row.send_attempts > 1 and provider.deduplicates

        def decide(taken: frozenset[str]) -> policy.Decision:
            return policy.decide(
                channel=row.channel,
                message=message,
                recipient=recipient,
                is_suppressed=is_suppressed,
                taken=taken,
                now=utcnow(),
                default_timezone=self._settings.default_timezone,
                stay=stay,
            )

        decision = decide(frozenset())
        if isinstance(decision, Send) and decision.channel != row.channel:
            # Re-routing: skip channels this person already has a delivery on for this message.
            async with self._db.read() as session:
                siblings = await repository.sibling_channels(
                    session, row.message_id, row.recipient_id
                )
            decision = decide(frozenset(siblings - {row.channel}))
        return decision

    # --- send -------------------------------------------------------------------------------

    def _start_send(
        self,
        row: ClaimedRow,
        recipient: Recipient,
        message: MessageFacts,
        send: Send,
        lease_deadline: float,
    ) -> None:
        outbound = self._sender.prepare(row, recipient, message, send)
        if outbound is None:
            return
        task = asyncio.create_task(
            self._sender.send(
                row,
                outbound,
                lease_deadline,
                message=message,
                seen_inbound_at=recipient.whatsapp_inbound_at,
            )
        )
        self._sends.add(task)
        task.add_done_callback(self._send_finished)

    def _send_finished(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker.send_task_crashed", error=repr(task.exception()))

    def _report(self, outcome: Outcome) -> None:
        self.completer.add(outcome)
