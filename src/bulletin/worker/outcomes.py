"""What becomes of a claimed delivery, as pure functions of what happened to it.

:func:`outcome_after_send` maps every way a provider call can end to the
:class:`~bulletin.deliveries.outcomes.Outcome` the completer writes:

* accepted: ``sent``, with the provider, its message id and the account that took it;
* :class:`~bulletin.errors.TransientSendError`: ``pending`` at the time the retry policy gives
  (never sooner than the provider's ``Retry-After``), or ``failed`` once the attempts are spent;
* :class:`~bulletin.errors.WindowClosed`: the template instead, or ``failed``
  (:func:`~bulletin.worker.policy.window_closed`);
* :class:`~bulletin.errors.PermanentSendError`: ``failed``, and the address suppressed when
  the provider asked for it;
* :class:`~bulletin.errors.InDoubtSendError`, no answer in time, a call cut off by shutdown, or
  any other error (a defect in the adapter): the channel's in-doubt policy
  (:func:`~bulletin.worker.policy.in_doubt`).

:func:`not_sent` is the outcome of a claimed delivery that never reached a provider
(suppressed, deferred, given back): its attempt does not count against the retry budget.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from dataclasses import dataclass

from bulletin.channels.base import Accepted
from bulletin.deliveries.outcomes import AS_TEMPLATE, Outcome, SuppressAddress
from bulletin.deliveries.states import DeliveryState
from bulletin.errors import InDoubtSendError, PermanentSendError, TransientSendError, WindowClosed
from bulletin.worker.policy import RetryPolicy, in_doubt, window_closed


@dataclass(frozen=True, slots=True)
class SendAttempt:
    """One provider call for a claimed delivery: what its outcome depends on, besides the answer."""

    delivery_id: int
    #: The claim's fencing token.
    attempt: int
    #: Provider calls made for the delivery, this one included.
    send_attempts: int
    org_id: uuid.UUID
    recipient_id: int
    #: The channel and address the message went to.
    channel: str
    address: str
    #: The channel to record on the delivery when dispatch moved it to another; else ``None``.
    rerouted: str | None
    #: The provider's name, the webhook key of the account it sent through, and whether it
    #: recognises a repeated send of one delivery.
    provider: str
    provider_account: str | None
    deduplicates: bool
    #: Whether it went as an approved WhatsApp template, and whether one could be sent.
    as_template: bool = False
    template_available: bool = False
    #: The person's last WhatsApp message, as read when the delivery was claimed.
    seen_inbound_at: dt.datetime | None = None


def outcome_after_send(
    send: SendAttempt,
    answer: Accepted | BaseException,
    *,
    policy: RetryPolicy,
    now: dt.datetime,
    rng: random.Random | None = None,
) -> Outcome:
    """The outcome of ``send``, given the provider's ``answer`` or the error its call ended with.

    ``rng`` draws the retry's jitter (see :meth:`RetryPolicy.after_transient`).
    """
    channel = send.rerouted
    if isinstance(answer, Accepted):
        as_template = AS_TEMPLATE if send.as_template else ""
        return Outcome(
            send.delivery_id,
            send.attempt,
            DeliveryState.SENT,
            channel=channel,
            detail=f"accepted by {send.provider}{as_template}",
            provider=send.provider,
            provider_message_id=answer.provider_message_id,
            provider_account=send.provider_account,
        )
    if isinstance(answer, TransientSendError):
        retry_at = policy.after_transient(
            send.send_attempts, now, retry_after=answer.retry_after, rng=rng
        )
        if retry_at is None:
            return Outcome(
                send.delivery_id,
                send.attempt,
                DeliveryState.FAILED,
                channel=channel,
                detail=f"gave up after {send.send_attempts} attempts: {answer.detail}",
            )
        return Outcome(
            send.delivery_id,
            send.attempt,
            DeliveryState.PENDING,
            channel=channel,
            detail=f"will retry: {answer.detail}",
            next_attempt_at=retry_at,
        )
    if isinstance(answer, WindowClosed):
        return window_closed(
            delivery_id=send.delivery_id,
            attempt=send.attempt,
            recipient_id=send.recipient_id,
            seen_inbound_at=send.seen_inbound_at,
            sent_template=send.as_template,
            template_available=send.template_available,
            now=now,
            why=answer.detail,
            channel=channel,
        )
    if isinstance(answer, PermanentSendError):
        suppress = (
            SuppressAddress(send.org_id, send.channel, send.address)
            if answer.suppress_address
            else None
        )
        return Outcome(
            send.delivery_id,
            send.attempt,
            DeliveryState.FAILED,
            detail=answer.detail,
            channel=channel,
            suppress=suppress,
        )
    return in_doubt(
        delivery_id=send.delivery_id,
        attempt=send.attempt,
        send_attempts=send.send_attempts,
        deduplicates=send.deduplicates,
        policy=policy,
        now=now,
        why=_why_in_doubt(answer),
        channel=channel,
        rng=rng,
    )


def _why_in_doubt(error: BaseException) -> str:
    if isinstance(error, InDoubtSendError):
        return error.detail
    if isinstance(error, TimeoutError):
        return "the provider did not answer in time"
    if isinstance(error, asyncio.CancelledError):
        return "send interrupted by shutdown"
    return f"provider error {type(error).__name__}: {error}"


def answer_kind(answer: Accepted | BaseException) -> str:
    """How the send-duration metric labels ``answer``: sent, transient, permanent or in_doubt."""
    if isinstance(answer, Accepted):
        return "sent"
    if isinstance(answer, TransientSendError):
        return "transient"
    if isinstance(answer, PermanentSendError):
        return "permanent"
    return "in_doubt"


def not_sent(
    delivery_id: int,
    attempt: int,
    state: DeliveryState,
    why: str,
    *,
    at: dt.datetime | None = None,
    channel: str | None = None,
) -> Outcome:
    """The outcome of a claim that led to no provider call: ``state`` for ``why``, due again
    ``at`` when it is handed back (``pending``), recorded on ``channel`` if it moved."""
    return Outcome(
        delivery_id,
        attempt,
        state,
        detail=why,
        next_attempt_at=at,
        channel=channel,
        gave_back=True,
    )
