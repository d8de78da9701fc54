"""What happened to a claimed delivery, as a value the worker hands to the repository. Pure."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from bulletin.deliveries.states import DeliveryState


@dataclass(frozen=True, slots=True)
class SuppressAddress:
    """An address to put on an organization's suppression list for one channel."""

    org_id: uuid.UUID
    channel: str
    address: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one claim of one delivery, applied only if the claim still holds.

    ``attempt`` is the claim's fencing token. ``gave_back`` is true when the claim led to no
    provider call (suppressed, deferred, released), so the attempt does not count against the
    retry budget. ``suppress`` names an address never to send to again on that channel.
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
