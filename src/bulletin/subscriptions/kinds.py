"""The kinds of status events an endpoint can subscribe to, by their public names.

A delivery's state change is told as ``delivery.<state>`` (only the states below: ``pending``,
``sending`` and ``cancelled`` are not told per delivery); a message that has nothing left to
send is ``message.completed``, a cancelled one ``message.cancelled``. ``webhook.test`` is what
``POST /v1/webhook-endpoints/{id}/test`` sends: every endpoint gets it, whatever its kinds.
"""

from __future__ import annotations

from typing import Final

#: Delivery state -> the kind that tells it.
DELIVERY_KINDS: Final[dict[str, str]] = {
    "sent": "delivery.sent",
    "delivered": "delivery.delivered",
    "read": "delivery.read",
    "failed": "delivery.failed",
    "suppressed": "delivery.suppressed",
    "unknown": "delivery.unknown",
}
MESSAGE_COMPLETED: Final = "message.completed"
MESSAGE_CANCELLED: Final = "message.cancelled"
#: Sent on request to one endpoint; not subscribable.
TEST: Final = "webhook.test"

#: The kinds an endpoint may subscribe to, in the order they are documented.
KINDS: Final[tuple[str, ...]] = (
    *DELIVERY_KINDS.values(),
    MESSAGE_COMPLETED,
    MESSAGE_CANCELLED,
)
