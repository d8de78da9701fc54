"""The dispatcher: claims due deliveries, decides each one, sends, and records the outcome.

One dispatcher runs per worker process and keeps up to ``max_in_flight`` provider calls going
at once. Its loop, readable in one sitting:

1. claim a batch of deliveries due now or within :data:`CLAIM_AHEAD` (never more than there
   are free send slots); each is sent when it is due, not before;
2. for each, :func:`~bulletin.worker.policy.decide`: suppress, defer to the end of quiet
   hours, or send;
3. each send runs as its own task, bounded by the send timeout and only started while the
   lease has room for it;
4. outcomes go to the :class:`~bulletin.worker.completer.Completer`, which writes them in
   batches behind the fence.

On stop it claims nothing more, lets in-flight sends finish within the grace period, hands
back (``pending``) claimed deliveries whose send had not started, and applies the channel's
in-doubt policy to sends cut off by the end of the grace period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import socket
import time
import uuid

import structlog
from sqlalchemy.exc import SQLAlchemyError

from bulletin.backoff import Backoff
from bulletin.channels.base import OutboundMessage, Provider
from bulletin.channels.registry import ChannelRegistry
from bulletin.channels.text import preferences_line
from bulletin.config import Settings
from bulletin.db import Database, describe, is_unavailable, utcnow
from bulletin.deliveries import repository
from bulletin.deliveries.outcomes import AS_TEMPLATE, Outcome, SuppressAddress
from bulletin.deliveries.repository import ClaimedRow
from bulletin.deliveries.states import DeliveryState
from bulletin.errors import (
    InDoubtSendError,
    PermanentSendError,
    TransientSendError,
    WindowClosed,
)
from bulletin.messages.templates import BudgetExceeded, TemplateFailed
from bulletin.metrics import RETRIES, SEND_SECONDS
from bulletin.recipients.models import Recipient
from bulletin.web.links import PreferenceLinks, unsubscribe_url
from bulletin.worker import policy
from bulletin.worker.completer import Completer
from bulletin.worker.content import content_for, has_template
from bulletin.worker.lookups import CancelChecks, MessageCache, TextLinkSetting
from bulletin.worker.pacing import Later, Pacer, PairHold
from bulletin.worker.policy import MessageFacts, RetryPolicy, Send, Suppress
from bulletin.worker.signals import Wakeup

log = structlog.get_logger("bulletin.worker")

# A send is started only if the lease still has this much room beyond the send timeout.
_LEASE_MARGIN_SECONDS = 2.0
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
        self._retry = RetryPolicy.from_settings(settings)
        self.completer = Completer(db, flush_seconds=settings.completion_flush_ms / 1000)
        self._messages = MessageCache(db)
        self._cancel_checks = CancelChecks(db)
        self._pacer = Pacer(db)
        #: Makes each person's preference link; ``None`` sends messages without links.
        self._links = links
        self._text_links = TextLinkSetting(db)
        self._sends: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
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
                    delay = backoff.failed()
                    if is_unavailable(exc):
                        log.warning(
                            "worker.claim_failed", error=describe(exc), retry_in=round(delay, 2)
                        )
                    else:
                        log.exception("worker.claim_error", retry_in=round(delay, 2))
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
            if not is_unavailable(exc):
                log.exception("worker.next_due_error")
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
            rows = await repository.claim(
                session, now, now + lease, limit, self._name, due_by=due_by
            )
            if not rows:
                return 0
            recipients = await repository.recipients_by_id(session, [r.recipient_id for r in rows])
            addresses = {
                a
                for r in recipients.values()
                for a in (r.whatsapp, r.email, r.phone)
                if a is not None
            }
            suppressed = await repository.suppressed_addresses(
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
                    self.completer.add(
                        Outcome(
                            row.id,
                            row.attempt,
                            DeliveryState.SUPPRESSED,
                            detail=decision.reason,
                            gave_back=True,
                        )
                    )
                else:
                    self.completer.add(
                        Outcome(
                            row.id,
                            row.attempt,
                            DeliveryState.PENDING,
                            detail=decision.reason,
                            next_attempt_at=decision.until,
                            gave_back=True,
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
            self.completer.add(
                Outcome(
                    row.id,
                    row.attempt,
                    DeliveryState.PENDING,
                    detail=f"released before sending: {why}",
                    next_attempt_at=utcnow(),
                    gave_back=True,
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
        rerouted = send.channel if send.channel != row.channel else None
        try:
            config = self._registry.config_for(row.org_id, send.channel)
            content, template = content_for(message, recipient, send.channel, config, utcnow())
        except TemplateFailed as exc:
            # Only this delivery fails: the reason (a budget exceeded, data that does not fit
            # the template) is the delivery's detail, for the organization to read.
            # Other template errors may quote a person's data; a budget's reason never does.
            log.warning(
                "worker.template_failed",
                delivery_id=row.id,
                message_id=str(row.message_id),
                budget_exceeded=str(exc) if isinstance(exc, BudgetExceeded) else None,
            )
            self.completer.add(
                Outcome(
                    row.id,
                    row.attempt,
                    DeliveryState.FAILED,
                    detail=str(exc),
                    channel=rerouted,
                    gave_back=True,
                )
            )
            return
        outbound = OutboundMessage(
            delivery_id=row.id,
            attempt=row.attempt,
            org_id=row.org_id,
            message_id=row.message_id,
            channel=send.channel,
            address=send.address,
            recipient_external_id=recipient.external_id,
            recipient_name=recipient.name,
            locale=recipient.locale,
            title=content.title,
            body=content.body,
            category=message.category,
            html=content.html,
            whatsapp_template=template,
        )
        task = asyncio.create_task(
            self._send(
                row,
                outbound,
                rerouted,
                lease_deadline,
                message=message,
                seen_inbound_at=recipient.whatsapp_inbound_at,
            )
        )
        self._sends.add(task)
        task.add_done_callback(self._send_finished)

    async def _with_links(
        self, links: PreferenceLinks, row: ClaimedRow, outbound: OutboundMessage
    ) -> OutboundMessage:
        """``outbound`` with the person's preference link: an email always carries it (footer,
        ``List-Unsubscribe``); a text only if its organization wants it, and a WhatsApp template
        never, because its parameters are fixed by the approved template."""
        page = await links.page(row.org_id, row.recipient_id)
        if outbound.channel == "email":
            return dataclasses.replace(
                outbound,
                preferences_url=page,
                unsubscribe_url=unsubscribe_url(page, outbound.category),
            )
        if outbound.whatsapp_template is None and self._text_links.enabled(row.org_id):
            return dataclasses.replace(
                outbound, preferences_url=page, body=outbound.body + preferences_line(page)
            )
        return outbound

    async def _slow_down(
        self, provider: Provider, seconds: float, give_back: PairHold | None
    ) -> None:
        try:
            await self._pacer.slow_down(provider, seconds, give_back=give_back)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("worker.slow_down_failed", error=describe(exc))

    async def _give_back_pair(self, hold: PairHold) -> None:
        # Soft state: if it fails, the next message to the person only waits the interval.
        try:
            await self._pacer.give_back_pair(hold)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("worker.pair_give_back_failed", error=describe(exc))

    def _send_finished(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker.send_task_crashed", error=repr(task.exception()))

    async def _send(
        self,
        row: ClaimedRow,
        outbound: OutboundMessage,
        rerouted: str | None,
        lease_deadline: float,
        *,
        message: MessageFacts,
        seen_inbound_at: dt.datetime | None,
    ) -> None:
        """Send ``outbound`` and hand its outcome to the completer.

        ``seen_inbound_at`` is the person's last WhatsApp message as read when the delivery was
        claimed: a refusal for a closed window records the window closed only if it is still
        the last one.
        """
        # Every line logged during this send (pacing, the adapter) names the delivery. The task
        # has its own copy of the context, so the ids go nowhere else.
        structlog.contextvars.bind_contextvars(delivery_id=row.id, message_id=str(row.message_id))
        provider = self._registry.provider_for(row.org_id, outbound.channel)
        timeout = self._settings.send_timeout_seconds

        def give_back(why: str, at: dt.datetime | None = None) -> None:
            # Not started, so nothing is in doubt: hand it back for later or another worker.
            self.completer.add(
                Outcome(
                    row.id,
                    row.attempt,
                    DeliveryState.PENDING,
                    detail=why,
                    next_attempt_at=at or utcnow(),
                    channel=rerouted,
                    gave_back=True,
                )
            )

        def no_room() -> str | None:
            if self._stopping.is_set():
                return "released: worker stopping"
            if lease_deadline - time.monotonic() < timeout + _LEASE_MARGIN_SECONDS:
                return "released: lease too short to send"
            return None

        if (why := no_room()) is not None:
            give_back(why)
            return
        try:
            if row.due is not None and (early := (row.due - utcnow()).total_seconds()) > 0:
                await asyncio.sleep(early)  # claimed ahead of time; never sent early
                # A cancel that committed meanwhile must stop it (G5): it has not started.
                if await self._cancel_checks.cancelled(row.message_id):
                    give_back("released: message cancelled")
                    return
            if self._links is not None:
                outbound = await self._with_links(self._links, row, outbound)
            pair = await self._pacer.claim_pair(provider, outbound.address)
            later = None if isinstance(pair, Later) else await self._pacer.wait_turn(provider)
        except (SQLAlchemyError, OSError) as exc:
            give_back(
                f"released: database unavailable ({describe(exc)})",
                utcnow() + dt.timedelta(seconds=1),
            )
            return
        except asyncio.CancelledError:
            # Stopped while waiting for its time or a send slot: nothing was sent, so nothing
            # is in doubt.
            give_back("released: worker stopping")
            raise
        if isinstance(pair, Later):
            give_back("paced: too soon after the last message to this number", pair.at)
            return
        hold = pair if isinstance(pair, PairHold) else None
        if later is not None:
            give_back(f"paced: {provider.account} is at its rate limit", later.at)
            return
        if (why := no_room()) is not None:
            give_back(why)
            return
        log_ = log.bind(channel=outbound.channel)

        def in_doubt(why: str) -> Outcome:
            return policy.in_doubt(
                delivery_id=row.id,
                attempt=row.attempt,
                send_attempts=row.send_attempts,
                deduplicates=provider.deduplicates,
                policy=self._retry,
                now=utcnow(),
                why=why,
                channel=rerouted,
            )

        answered = "in_doubt"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                accepted = await provider.send(outbound)
        except TransientSendError as exc:
            answered = "transient"
            retry_at = self._retry.after_transient(
                row.send_attempts, utcnow(), retry_after=exc.retry_after
            )
            log_.info("worker.send_transient", error=exc.detail, retry_at=str(retry_at))
            if exc.slow_down:
                # A refusal for the account's rate (130429 and the like) sent nothing to this
                # person, so their pair slot goes back: the retry waits for the account, not
                # for the pair interval too. Other transient refusals keep it, above all the
                # pair limit itself (131056).
                await self._slow_down(provider, exc.retry_after or 1.0, hold)
            if retry_at is None:
                outcome = Outcome(
                    row.id,
                    row.attempt,
                    DeliveryState.FAILED,
                    channel=rerouted,
                    detail=f"gave up after {row.send_attempts} attempts: {exc.detail}",
                )
            else:
                outcome = Outcome(
                    row.id,
                    row.attempt,
                    DeliveryState.PENDING,
                    channel=rerouted,
                    detail=f"will retry: {exc.detail}",
                    next_attempt_at=retry_at,
                )
        except WindowClosed as exc:
            answered = "permanent"
            sent_template = outbound.whatsapp_template is not None
            log_.info("worker.window_closed", error=exc.detail, template=sent_template)
            if hold is not None:
                await self._give_back_pair(hold)  # nothing reached the person
            outcome = policy.window_closed(
                delivery_id=row.id,
                attempt=row.attempt,
                recipient_id=row.recipient_id,
                seen_inbound_at=seen_inbound_at,
                sent_template=sent_template,
                template_available=has_template(
                    message, self._registry.config_for(row.org_id, outbound.channel)
                ),
                now=utcnow(),
                why=exc.detail,
                channel=rerouted,
            )
        except PermanentSendError as exc:
            answered = "permanent"
            log_.info("worker.send_failed", error=exc.detail)
            suppress = (
                SuppressAddress(row.org_id, outbound.channel, outbound.address)
                if exc.suppress_address
                else None
            )
            outcome = Outcome(
                row.id,
                row.attempt,
                DeliveryState.FAILED,
                detail=exc.detail,
                channel=rerouted,
                suppress=suppress,
            )
        except InDoubtSendError as exc:
            log_.warning("worker.send_in_doubt", error=exc.detail)
            outcome = in_doubt(exc.detail)
        except TimeoutError:
            log_.warning("worker.send_in_doubt", error="timeout")
            outcome = in_doubt("the provider did not answer in time")
        except asyncio.CancelledError:
            # Cut off at the end of the shutdown grace period, mid-call.
            SEND_SECONDS.labels(outbound.channel, answered).observe(time.perf_counter() - started)
            self.completer.add(in_doubt("send interrupted by shutdown"))
            raise
        except Exception as exc:
            # A defect in a provider adapter. Whether the message left is unknowable.
            log_.exception("worker.provider_error")
            outcome = in_doubt(f"provider error {type(exc).__name__}: {exc}")
        else:
            answered = "sent"
            as_template = AS_TEMPLATE if outbound.whatsapp_template is not None else ""
            outcome = Outcome(
                row.id,
                row.attempt,
                DeliveryState.SENT,
                channel=rerouted,
                detail=f"accepted by {provider.name}{as_template}",
                provider=provider.name,
                provider_message_id=accepted.provider_message_id,
                provider_account=provider.account_key,
            )
        SEND_SECONDS.labels(outbound.channel, answered).observe(time.perf_counter() - started)
        if outcome.state is DeliveryState.PENDING:
            RETRIES.labels(outbound.channel).inc()
        self.completer.add(outcome)
