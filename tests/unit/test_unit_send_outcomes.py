"""``outcome_after_send``: every way a provider call can end, and the outcome it is written as."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import uuid

import pytest

from bulletin.channels.base import Accepted
from bulletin.deliveries.outcomes import (
    AS_TEMPLATE,
    SENDING_TEMPLATE,
    CloseWindow,
    Outcome,
    SuppressAddress,
)
from bulletin.deliveries.states import DeliveryState
from bulletin.errors import (
    ChannelError,
    InDoubtSendError,
    PermanentSendError,
    TransientSendError,
    WindowClosed,
)
from bulletin.worker.outcomes import SendAttempt, answer_kind, not_sent, outcome_after_send
from bulletin.worker.policy import RetryPolicy

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
WROTE = NOW - dt.timedelta(hours=30)
ORG = uuid.UUID(int=5)
POLICY = RetryPolicy(max_attempts=3, base_seconds=10.0, max_seconds=60.0)
SEND = SendAttempt(
    delivery_id=7,
    attempt=4,
    send_attempts=2,
    org_id=ORG,
    recipient_id=11,
    channel="whatsapp",
    address="+27820000001",
    rerouted=None,
    provider="whatsapp-cloud",
    provider_account="acct",
    deduplicates=False,
    seen_inbound_at=WROTE,
)
IN_DOUBT = "the provider may or may not have it, so it is not resent"
SENT_AGAIN = "the provider deduplicates, so it will be sent again"


def settle(answer: Accepted | BaseException, send: SendAttempt = SEND, seed: int = 1) -> Outcome:
    return outcome_after_send(send, answer, policy=POLICY, now=NOW, rng=random.Random(seed))


def retry_time(send_attempts: int, seed: int = 1, retry_after: float | None = None) -> dt.datetime:
    at = POLICY.after_transient(
        send_attempts, NOW, retry_after=retry_after, rng=random.Random(seed)
    )
    assert at is not None
    return at


def test_an_accepted_send_is_sent_with_the_provider_its_id_and_account() -> None:
    assert settle(Accepted("wamid.1")) == Outcome(
        7,
        4,
        DeliveryState.SENT,
        detail="accepted by whatsapp-cloud",
        provider="whatsapp-cloud",
        provider_message_id="wamid.1",
        provider_account="acct",
    )


def test_a_template_accepted_says_so_and_a_rerouted_send_records_its_new_channel() -> None:
    send = dataclasses.replace(SEND, as_template=True, rerouted="whatsapp")
    assert settle(Accepted("wamid.2"), send) == Outcome(
        7,
        4,
        DeliveryState.SENT,
        detail=f"accepted by whatsapp-cloud{AS_TEMPLATE}",
        provider="whatsapp-cloud",
        provider_message_id="wamid.2",
        provider_account="acct",
        channel="whatsapp",
    )


def test_a_transient_refusal_is_retried_at_the_policys_time() -> None:
    assert settle(TransientSendError("503 from the provider")) == Outcome(
        7,
        4,
        DeliveryState.PENDING,
        detail="will retry: 503 from the provider",
        next_attempt_at=retry_time(2),
    )


def test_a_rate_limit_is_retried_no_sooner_than_its_retry_after() -> None:
    # The policy's delay after two attempts is at most 20 s: the provider's 600 s wins.
    refused = TransientSendError("rate limited", retry_after=600.0, slow_down=True)
    outcome = settle(refused, dataclasses.replace(SEND, rerouted="sms"))
    assert outcome == Outcome(
        7,
        4,
        DeliveryState.PENDING,
        detail="will retry: rate limited",
        next_attempt_at=NOW + dt.timedelta(seconds=600),
        channel="sms",
    )


def test_a_transient_refusal_fails_once_the_attempts_are_spent() -> None:
    send = dataclasses.replace(SEND, send_attempts=3)
    assert settle(TransientSendError("timeout at the provider"), send) == Outcome(
        7,
        4,
        DeliveryState.FAILED,
        detail="gave up after 3 attempts: timeout at the provider",
    )


def test_a_permanent_refusal_fails() -> None:
    assert settle(PermanentSendError("number does not exist")) == Outcome(
        7, 4, DeliveryState.FAILED, detail="number does not exist"
    )


def test_a_refusal_that_asks_for_suppression_suppresses_the_address_on_its_channel() -> None:
    refused = PermanentSendError("hard bounce", suppress_address=True)
    send = dataclasses.replace(SEND, channel="email", address="a@example.org", rerouted="email")
    assert settle(refused, send) == Outcome(
        7,
        4,
        DeliveryState.FAILED,
        detail="hard bounce",
        channel="email",
        suppress=SuppressAddress(ORG, "email", "a@example.org"),
    )


def test_a_closed_window_sends_the_template_at_once_when_there_is_one() -> None:
    send = dataclasses.replace(SEND, template_available=True)
    assert settle(WindowClosed("131047"), send) == Outcome(
        7,
        4,
        DeliveryState.PENDING,
        detail=SENDING_TEMPLATE,
        next_attempt_at=NOW,
        close_window=CloseWindow(11, WROTE),
    )


def test_a_closed_window_fails_without_a_template_and_records_the_window_closed() -> None:
    assert settle(WindowClosed("131047")) == Outcome(
        7,
        4,
        DeliveryState.FAILED,
        detail=(
            "131047: the person's 24-hour window had closed, and neither the message nor the "
            "WhatsApp configuration names an approved template to send instead"
        ),
        close_window=CloseWindow(11, WROTE),
    )


def test_a_template_refused_for_a_closed_window_fails_and_closes_nothing() -> None:
    send = dataclasses.replace(SEND, as_template=True, template_available=True)
    assert settle(WindowClosed("131047"), send) == Outcome(
        7, 4, DeliveryState.FAILED, detail="131047"
    )


def test_a_closed_window_with_no_message_seen_records_no_closing() -> None:
    send = dataclasses.replace(SEND, template_available=True, seen_inbound_at=None)
    assert settle(WindowClosed("131047"), send).close_window is None


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (InDoubtSendError("connection reset after sending"), "connection reset after sending"),
        (TimeoutError(), "the provider did not answer in time"),
        (asyncio.CancelledError(), "send interrupted by shutdown"),
        (KeyError("status"), "provider error KeyError: 'status'"),
        (ChannelError("unmapped"), "provider error ChannelError: unmapped"),
    ],
)
def test_a_send_in_doubt_is_never_resent_by_a_provider_that_does_not_deduplicate(
    error: BaseException, why: str
) -> None:
    assert settle(error, dataclasses.replace(SEND, rerouted="sms")) == Outcome(
        7, 4, DeliveryState.UNKNOWN, detail=f"{why}; {IN_DOUBT}", channel="sms"
    )


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (InDoubtSendError("reset"), "reset"),
        (TimeoutError(), "the provider did not answer in time"),
        (asyncio.CancelledError(), "send interrupted by shutdown"),
        (RuntimeError("bug"), "provider error RuntimeError: bug"),
    ],
)
def test_a_send_in_doubt_is_sent_again_by_a_provider_that_deduplicates(
    error: BaseException, why: str
) -> None:
    outcome = settle(error, dataclasses.replace(SEND, deduplicates=True))
    assert outcome == Outcome(
        7,
        4,
        DeliveryState.PENDING,
        detail=f"{why}; {SENT_AGAIN}",
        next_attempt_at=retry_time(2),
    )


def test_a_send_in_doubt_with_its_attempts_spent_is_unknown_even_if_deduplicated() -> None:
    send = dataclasses.replace(SEND, deduplicates=True, send_attempts=3)
    assert settle(TimeoutError(), send) == Outcome(
        7, 4, DeliveryState.UNKNOWN, detail=f"the provider did not answer in time; {IN_DOUBT}"
    )


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (Accepted("x"), "sent"),
        (TransientSendError("busy", slow_down=True), "transient"),
        (PermanentSendError("no"), "permanent"),
        (WindowClosed("131047"), "permanent"),
        (InDoubtSendError("reset"), "in_doubt"),
        (TimeoutError(), "in_doubt"),
        (asyncio.CancelledError(), "in_doubt"),
        (ValueError("bug"), "in_doubt"),
    ],
)
def test_the_metric_label_of_each_answer(answer: Accepted | BaseException, kind: str) -> None:
    assert answer_kind(answer) == kind


def test_a_claim_that_reached_no_provider_is_given_back_without_spending_an_attempt() -> None:
    later = NOW + dt.timedelta(hours=8)
    assert not_sent(7, 4, DeliveryState.PENDING, "quiet hours", at=later, channel="sms") == (
        Outcome(
            7,
            4,
            DeliveryState.PENDING,
            detail="quiet hours",
            next_attempt_at=later,
            channel="sms",
            gave_back=True,
        )
    )
    assert not_sent(7, 4, DeliveryState.SUPPRESSED, "opted out") == Outcome(
        7, 4, DeliveryState.SUPPRESSED, detail="opted out", gave_back=True
    )
