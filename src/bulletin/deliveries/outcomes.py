"""What happened to a claimed delivery, as a value the worker hands to the repository. Pure."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from bulletin.deliveries.states import DeliveryState

#: Why a delivery refused for a closed window is sent again at once.
SENDING_TEMPLATE = "the 24-hour window had closed: sending the approved template"
#: How the event of a WhatsApp send that the provider accepted as an approved template ends;
#: with :data:`SENDING_TEMPLATE`, what tells a later closed-window failure that a template was
#: already tried (:func:`bulletin.deliveries.fallback.may_send_template_instead`).
AS_TEMPLATE = " as the approved template"


@dataclass(frozen=True, slots=True)
class SuppressAddress:
    """An address to put on an organization's suppression list for one channel."""

    org_id: uuid.UUID
    channel: str
    address: str


@dataclass(frozen=True, slots=True)
class CloseWindow:
    """A person whose WhatsApp 24-hour window the provider said is closed.

    ``seen_inbound_at`` is their last message as the dispatcher read it before the send: the
    window is recorded as closed only if no later message has come in since, which would have
    opened it again.
    """

    recipient_id: int
    seen_inbound_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one claim of one delivery, applied only if the claim still holds.

    ``attempt`` is the claim's fencing token. ``gave_back`` is true when the claim led to no
    provider call (suppressed, deferred, released), so the attempt does not count against the
    retry budget. ``suppress`` names an address never to send to again on that channel, and
    ``close_window`` a person whose WhatsApp window is to be recorded as closed.
    ``provider_account`` (with ``provider``) records which configured account accepted a send,
    so that only that account's receipts can move the delivery later.
    """

    delivery_id: int
    attempt: int
    state: DeliveryState
    detail: str | None = None
    next_attempt_at: dt.datetime | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    #: The webhook account key of the provider account that accepted the send.
    provider_account: str | None = None
    channel: str | None = None
    gave_back: bool = False
    suppress: SuppressAddress | None = None
    close_window: CloseWindow | None = None
