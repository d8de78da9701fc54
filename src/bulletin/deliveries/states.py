"""The delivery state machine (docs/architecture.md, "States"), as data and pure functions.

::

    pending --claim--> sending --accepted--> sent --receipt--> delivered --receipt--> read
       |                  |  \\--retryable error--> pending (later)
       |                  |  \\--permanent error / attempts exhausted--> failed
       |                  \\--lease expired, outcome unknown--> unknown (or pending)
       \\--cancel--> cancelled      \\--preferences / suppression at dispatch--> suppressed
    sent --bounce / undeliverable receipt--> failed
    sent / unknown / sending --failed receipt: WhatsApp window closed--> pending (once)
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


#: States in which a delivery still has work ahead of it; the rest are settled.
ACTIVE_STATES = frozenset({DeliveryState.PENDING, DeliveryState.SENDING})

# How far along the receipt ladder a state is; receipts only ever move a delivery up.
_RECEIPT_RANK = {
    DeliveryState.UNKNOWN: 0,
    DeliveryState.SENDING: 0,
    DeliveryState.SENT: 1,
    DeliveryState.DELIVERED: 2,
    DeliveryState.READ: 3,
}


def receipt_moves_forward(current: DeliveryState, reported: DeliveryState) -> bool:
    """Whether a provider receipt saying ``reported`` may move a delivery from ``current``.

    Receipts arrive late, out of order and repeatedly: a state never moves backwards, a
    duplicate changes nothing, and a failure report only counts before delivery.
    """
    if reported == DeliveryState.FAILED:
        return current in {DeliveryState.SENDING, DeliveryState.SENT, DeliveryState.UNKNOWN}
    if current not in _RECEIPT_RANK or reported not in _RECEIPT_RANK:
        return False
    return _RECEIPT_RANK[reported] > _RECEIPT_RANK[current]


def window_closed_resends(current: DeliveryState) -> bool:
    """Whether a failed receipt saying that WhatsApp's 24-hour window was closed (131047) may
    put a delivery in ``current`` back to ``pending``, to be sent again as the approved template.

    Deliberately the one way back to ``pending`` after a provider accepted a send. It applies
    exactly where a failed receipt would: the provider says it did not deliver the message, so
    sending it again (as after any failure, on the next channel) cannot make a second copy.
    That it happens once per delivery, and that a repeat of the receipt leaves the new send
    alone, is for the caller to make sure (:mod:`bulletin.deliveries.receipts`).
    """
    return receipt_moves_forward(current, DeliveryState.FAILED)
