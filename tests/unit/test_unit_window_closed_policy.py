"""``window_closed``: what a WhatsApp refusal for a closed 24-hour window (131047) leads to."""

from __future__ import annotations

import datetime as dt

from bulletin.deliveries.outcomes import SENDING_TEMPLATE, CloseWindow, Outcome
from bulletin.deliveries.states import DeliveryState
from bulletin.worker.policy import window_closed

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
WROTE = NOW - dt.timedelta(hours=3)
WHY = "the Cloud API answered 400, code 131047: Re-engagement message"


def decide(
    *, sent_template: bool, template_available: bool, seen: dt.datetime | None = WROTE
) -> Outcome:
    return window_closed(
        delivery_id=7,
        attempt=2,
        recipient_id=11,
        seen_inbound_at=seen,
        sent_template=sent_template,
        template_available=template_available,
        now=NOW,
        why=WHY,
        channel="whatsapp",
    )


def test_free_text_is_sent_again_at_once_as_the_template_and_the_window_closes() -> None:
    outcome = decide(sent_template=False, template_available=True)
    assert outcome == Outcome(
        7,
        2,
        DeliveryState.PENDING,
        detail=SENDING_TEMPLATE,
        next_attempt_at=NOW,
        channel="whatsapp",
        close_window=CloseWindow(11, WROTE),
    )
    assert outcome.detail == "the 24-hour window had closed: sending the approved template"
    # The attempt was a provider call: it is not handed back.
    assert not outcome.gave_back


def test_free_text_without_a_template_fails_with_the_reason_and_still_closes_the_window() -> None:
    outcome = decide(sent_template=False, template_available=False)
    assert outcome.state is DeliveryState.FAILED
    assert outcome.detail is not None
    assert outcome.detail.startswith(WHY)
    assert "neither the message nor the WhatsApp configuration" in outcome.detail
    assert outcome.next_attempt_at is None
    assert outcome.close_window == CloseWindow(11, WROTE)


def test_a_template_refused_the_same_way_fails_and_is_never_tried_again() -> None:
    for available in (True, False):
        outcome = decide(sent_template=True, template_available=available)
        assert outcome == Outcome(7, 2, DeliveryState.FAILED, detail=WHY, channel="whatsapp")


def test_without_a_known_last_message_there_is_no_window_to_close() -> None:
    outcome = decide(sent_template=False, template_available=True, seen=None)
    assert outcome.state is DeliveryState.PENDING
    assert outcome.close_window is None
