"""``receipt_moves_forward`` over every pair of delivery states, against a table by hand, and
the states a closed-window receipt may send again from.

From docs/architecture.md: receipts arrive out of order and more than once; a state never moves
backwards and a duplicate changes nothing; ``sent --bounce--> failed``; receipts can settle
``unknown`` deliveries later. From the docstring: a failure only counts before delivery.
"""

from __future__ import annotations

import itertools

import pytest

from bulletin.deliveries.states import DeliveryState, receipt_moves_forward, window_closed_resends

S = DeliveryState

# Every (current, reported) pair a receipt may apply to; every other pair must be ignored.
MOVES_FORWARD: frozenset[tuple[DeliveryState, DeliveryState]] = frozenset(
    {
        # The receipt can beat the worker's own "accepted" write: sending is settled by it.
        (S.SENDING, S.SENT),
        (S.SENDING, S.DELIVERED),
        (S.SENDING, S.READ),
        (S.SENDING, S.FAILED),
        # In doubt: the receipt tells what happened.
        (S.UNKNOWN, S.SENT),
        (S.UNKNOWN, S.DELIVERED),
        (S.UNKNOWN, S.READ),
        (S.UNKNOWN, S.FAILED),
        # Up the ladder sent -> delivered -> read, possibly skipping a rung.
        (S.SENT, S.DELIVERED),
        (S.SENT, S.READ),
        (S.DELIVERED, S.READ),
        # A bounce after acceptance.
        (S.SENT, S.FAILED),
    }
)

# Written out rather than derived, so the table above is checked against something.
NEVER_MOVES = [
    # Nothing was handed to a provider, or the delivery is settled for good.
    *[
        (current, reported)
        for current in (S.PENDING, S.SUPPRESSED, S.CANCELLED, S.FAILED, S.READ)
        for reported in S
    ],
    # Backwards, or a duplicate.
    (S.SENT, S.SENT),
    (S.SENT, S.SENDING),
    (S.SENT, S.UNKNOWN),
    (S.DELIVERED, S.DELIVERED),
    (S.DELIVERED, S.SENT),
    (S.DELIVERED, S.FAILED),
    (S.UNKNOWN, S.UNKNOWN),
    (S.SENDING, S.SENDING),
]


# The one way back to pending after a provider accepted a send: a failed receipt saying that
# WhatsApp's window was closed (131047) sends the delivery again as the template. Not from
# pending (a repeat of that receipt), nor once delivered or settled.
RESENDS_FOR_A_CLOSED_WINDOW = frozenset({S.SENDING, S.SENT, S.UNKNOWN})


ALL_PAIRS = list(itertools.product(DeliveryState, DeliveryState))


@pytest.mark.parametrize(
    ("current", "reported"), ALL_PAIRS, ids=[f"{c}->{r}" for c, r in ALL_PAIRS]
)
def test_receipt_moves_forward(current: DeliveryState, reported: DeliveryState) -> None:
    expected = (current, reported) in MOVES_FORWARD
    assert receipt_moves_forward(current, reported) is expected


@pytest.mark.parametrize("state", list(DeliveryState))
def test_a_duplicate_receipt_changes_nothing(state: DeliveryState) -> None:
    assert receipt_moves_forward(state, state) is False


@pytest.mark.parametrize(("current", "reported"), NEVER_MOVES)
def test_receipts_never_move_backwards_or_out_of_a_settled_state(
    current: DeliveryState, reported: DeliveryState
) -> None:
    assert receipt_moves_forward(current, reported) is False


@pytest.mark.parametrize("state", list(DeliveryState))
def test_a_closed_window_sends_again_only_what_was_not_delivered(state: DeliveryState) -> None:
    assert window_closed_resends(state) is (state in RESENDS_FOR_A_CLOSED_WINDOW)
