"""The states of a message (docs/architecture.md, "States").

``scheduled`` (waiting for its send time) -> ``resolving`` (its audience is being turned into
deliveries, in chunks) -> ``sending`` (every delivery exists) -> ``completed`` (none has work
left). A completed message goes back to ``sending`` when one of its deliveries has work again (a
fallback, a resend as a template, an operator's resend). A message that is not finished can be
``cancelled``. The states of its deliveries are in :mod:`bulletin.deliveries.states`.
"""

from __future__ import annotations

from enum import StrEnum


class MessageState(StrEnum):
    SCHEDULED = "scheduled"
    RESOLVING = "resolving"
    SENDING = "sending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
