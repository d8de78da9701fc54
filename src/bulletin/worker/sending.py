"""One send: from a delivery the dispatcher decided to send, to the outcome of its provider call.

:meth:`Sender.prepare` renders what the person is sent (a template that cannot be rendered
fails only this delivery). :meth:`Sender.send` then runs as its own task:

1. it waits until the delivery is due (it may have been claimed ahead of time) and makes sure
   its message was not cancelled meanwhile;
2. it adds the person's preference link, takes the pair slot to the address and the account's
   next send slot (:mod:`~bulletin.worker.pacing`);
3. it calls the provider only while the lease has room for the whole call, bounded by the
   send timeout;
4. the answer becomes the delivery's outcome (:func:`~bulletin.worker.outcomes.outcome_after_send`);
   a rate-limit answer pauses the account, and a send that reached nobody gives its pair slot
   back.

Whatever stops a send before the call (shutdown, a lease too short, pacing, a database
outage) hands the delivery back, since nothing is in doubt. Every outcome goes to ``report``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import structlog
from sqlalchemy.exc import SQLAlchemyError
from structlog.typing import FilteringBoundLogger

from bulletin.channels.base import Accepted, OutboundMessage, Provider
from bulletin.channels.registry import ChannelRegistry
from bulletin.channels.text import preferences_line
from bulletin.config import Settings
from bulletin.db import Database, describe, utcnow
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.queue import ClaimedRow
from bulletin.deliveries.states import DeliveryState
from bulletin.errors import InDoubtSendError, PermanentSendError, TransientSendError, WindowClosed
from bulletin.messages.content import content_for, has_template
from bulletin.messages.templates import BudgetExceeded, TemplateFailed
from bulletin.metrics import RETRIES, SEND_SECONDS
from bulletin.recipients.links import PreferenceLinks, unsubscribe_url
from bulletin.recipients.models import Recipient
from bulletin.worker.lookups import CancelChecks, TextLinkSetting
from bulletin.worker.outcomes import SendAttempt, answer_kind, not_sent, outcome_after_send
from bulletin.worker.pacing import Later, Pacer
from bulletin.worker.policy import MessageFacts, RetryPolicy, Send
from bulletin.worker.repository import PairHold

log = structlog.get_logger("bulletin.worker")

# A send is started only if the lease still has this much room beyond the send timeout.
_LEASE_MARGIN_SECONDS = 2.0
# The refusals a channel adapter raises on purpose; any other error is a defect in it.
_REFUSALS = (TransientSendError, PermanentSendError, InDoubtSendError, TimeoutError)


class Sender:
    """Sends the deliveries of one dispatcher, each as its own task (see the module)."""

    def __init__(
        self,
        db: Database,
        registry: ChannelRegistry,
        settings: Settings,
        *,
        report: Callable[[Outcome], None],
        stopping: asyncio.Event,
        links: PreferenceLinks | None,
        text_links: TextLinkSetting,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._retry = RetryPolicy.from_settings(settings)
        #: Takes every outcome (the dispatcher's completer).
        self._report = report
        #: Set when the worker stops: sends not started by then are handed back.
        self._stopping = stopping
        self._cancel_checks = CancelChecks(db)
        self._pacer = Pacer(db)
        #: Makes each person's preference link; ``None`` sends messages without links.
        self._links = links
        self._text_links = text_links

    def prepare(
        self, row: ClaimedRow, recipient: Recipient, message: MessageFacts, send: Send
    ) -> OutboundMessage | None:
        """What ``recipient`` is sent for ``row``; ``None`` (its outcome reported) when its
        templates cannot be rendered for them."""
        rerouted = send.channel if send.channel != row.channel else None
        try:
            config = self._registry.config_for(row.org_id, send.channel)
            content, template = content_for(
                message.templates, recipient, send.channel, config, utcnow()
            )
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
            self._report(
                not_sent(row.id, row.attempt, DeliveryState.FAILED, str(exc), channel=rerouted)
            )
            return None
        return OutboundMessage(
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

    async def send(
        self,
        row: ClaimedRow,
        outbound: OutboundMessage,
        lease_deadline: float,
        *,
        message: MessageFacts,
        seen_inbound_at: dt.datetime | None,
    ) -> None:
        """Send ``outbound`` and report its outcome.

        ``lease_deadline`` (``time.monotonic()``) is when the claim's lease runs out.
        ``seen_inbound_at`` is the person's last WhatsApp message as read when the delivery was
        claimed: a refusal for a closed window records the window closed only if it is still
        the last one.
        """
        # Every line logged during this send (pacing, the adapter) names the delivery. The task
        # has its own copy of the context, so the ids go nowhere else.
        structlog.contextvars.bind_contextvars(delivery_id=row.id, message_id=str(row.message_id))
        rerouted = outbound.channel if outbound.channel != row.channel else None
        provider = self._registry.provider_for(row.org_id, outbound.channel)
        timeout = self._settings.send_timeout_seconds

        def give_back(why: str, at: dt.datetime | None = None) -> None:
            # Not started, so nothing is in doubt: hand it back for later or another worker.
            self._report(
                not_sent(
                    row.id,
                    row.attempt,
                    DeliveryState.PENDING,
                    why,
                    at=at or utcnow(),
                    channel=rerouted,
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
        send_log = log.bind(channel=outbound.channel)

        def outcome(answer: Accepted | BaseException) -> Outcome:
            return outcome_after_send(
                SendAttempt(
                    delivery_id=row.id,
                    attempt=row.attempt,
                    send_attempts=row.send_attempts,
                    org_id=row.org_id,
                    recipient_id=row.recipient_id,
                    channel=outbound.channel,
                    address=outbound.address,
                    rerouted=rerouted,
                    provider=provider.name,
                    provider_account=provider.account_key,
                    deduplicates=provider.deduplicates,
                    as_template=outbound.whatsapp_template is not None,
                    template_available=has_template(
                        message.templates,
                        self._registry.config_for(row.org_id, outbound.channel),
                    ),
                    seen_inbound_at=seen_inbound_at,
                ),
                answer,
                policy=self._retry,
                now=utcnow(),
            )

        answer: Accepted | BaseException
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                answer = await provider.send(outbound)
        except asyncio.CancelledError as exc:
            # Cut off at the end of the shutdown grace period, mid-call.
            SEND_SECONDS.labels(outbound.channel, answer_kind(exc)).observe(
                time.perf_counter() - started
            )
            self._report(outcome(exc))
            raise
        except Exception as exc:
            if not isinstance(exc, _REFUSALS):
                # A defect in a provider adapter. Whether the message left is unknowable.
                send_log.exception("worker.provider_error")
            answer = exc
        settled = outcome(answer)
        await self._after_answer(send_log, provider, outbound, answer, settled, hold)
        SEND_SECONDS.labels(outbound.channel, answer_kind(answer)).observe(
            time.perf_counter() - started
        )
        if settled.state is DeliveryState.PENDING:
            RETRIES.labels(outbound.channel).inc()
        self._report(settled)

    async def _after_answer(
        self,
        send_log: FilteringBoundLogger,
        provider: Provider,
        outbound: OutboundMessage,
        answer: Accepted | BaseException,
        outcome: Outcome,
        hold: PairHold | None,
    ) -> None:
        """Log a refusal, and undo the pacing it makes wrong."""
        if isinstance(answer, TransientSendError):
            retry_at = outcome.next_attempt_at if outcome.state is DeliveryState.PENDING else None
            send_log.info("worker.send_transient", error=answer.detail, retry_at=str(retry_at))
            if answer.slow_down:
                # A refusal for the account's rate (130429 and the like) sent nothing to this
                # person, so their pair slot goes back: the retry waits for the account, not
                # for the pair interval too. Other transient refusals keep it, above all the
                # pair limit itself (131056).
                await self._slow_down(provider, answer.retry_after or 1.0, hold)
        elif isinstance(answer, WindowClosed):
            sent_template = outbound.whatsapp_template is not None
            send_log.info("worker.window_closed", error=answer.detail, template=sent_template)
            if hold is not None:
                await self._give_back_pair(hold)  # nothing reached the person
        elif isinstance(answer, PermanentSendError):
            send_log.info("worker.send_failed", error=answer.detail)
        elif isinstance(answer, InDoubtSendError):
            send_log.warning("worker.send_in_doubt", error=answer.detail)
        elif isinstance(answer, TimeoutError):
            send_log.warning("worker.send_in_doubt", error="timeout")

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
