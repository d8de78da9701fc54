"""The port between the delivery engine and a provider (WhatsApp, SMTP, Twilio, the sandbox).

A provider does one thing: hand one message to the outside world. It answers with
:class:`Accepted` and the provider's own message id, or raises one of the
:class:`~bulletin.errors.ChannelError` subclasses, having mapped its vendor's errors at its own
boundary: nothing vendor-specific leaves a provider module.

``deduplicates`` is the provider's in-doubt policy. When it is true the provider recognises a
second send of the same delivery id (an idempotency key, a deterministic message id) and does
not deliver it twice, so a send whose outcome is unknown may be retried. When it is false, an
unknown outcome stays ``unknown`` and is never resent automatically.
"""

from __future__ import annotations

import abc
import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum

#: The account key of the installation-wide provider accounts (the environment's settings);
#: an organization's own account is keyed by the organization's id.
DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True, slots=True)
class WhatsAppTemplate:
    """An approved WhatsApp message template, with its body parameters already rendered."""

    name: str
    language: str
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """Everything a provider needs to send one delivery."""

    delivery_id: int
    attempt: int
    org_id: uuid.UUID
    message_id: uuid.UUID
    channel: str
    address: str
    recipient_external_id: str
    recipient_name: str | None
    locale: str | None
    title: str
    body: str
    category: str | None
    #: The HTML part of an email; ``None`` means one is made from ``body``.
    html: str | None = None
    #: Set when a WhatsApp message must go as a template (the 24-hour window is closed).
    whatsapp_template: WhatsAppTemplate | None = None
    #: A link that unsubscribes the person (email ``List-Unsubscribe``).
    unsubscribe_url: str | None = None
    #: The person's preference-centre link (an email's footer; already in ``body`` for texts).
    preferences_url: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message; ``provider_message_id`` is its reference for it."""

    provider_message_id: str


class ReportedState(StrEnum):
    """What a provider's receipt says happened to a message it accepted."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A provider's report on one message, read from a verified webhook.

    ``delivery_id`` is Bulletin's own id when the provider echoed it back (WhatsApp's
    ``biz_opaque_callback_data``, a parameter of Twilio's status callback URL);
    ``provider_message_id`` is the provider's reference. At least one of them is set.
    ``suppress_address`` is true when the failure means the address must not be used again
    (the person replied STOP to the sender). ``window_closed`` is true when the failure says
    the person's conversation window was closed (WhatsApp's 131047): free text was refused, and
    an approved template would not be.
    """

    provider_message_id: str | None
    delivery_id: int | None
    state: ReportedState
    at: dt.datetime
    detail: str | None = None
    suppress_address: bool = False
    window_closed: bool = False


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message a person sent to an organization's number (a reply, STOP, START).

    ``provider_id`` is the provider's own id of the message (WhatsApp's ``messages[].id``,
    Twilio's ``MessageSid``): what tells a replayed webhook from a new message.
    """

    channel: str
    address: str
    text: str
    at: dt.datetime
    provider_id: str | None = None


class Provider(abc.ABC):
    """One provider account that can send on a channel."""

    #: Stable name, stored on each delivery it sends.
    name: str = "provider"
    #: True when a repeated send of one delivery id is recognised and not delivered twice.
    deduplicates: bool = False
    #: Identifies the provider account for pacing; sends of one account share its rate.
    account: str = "provider"
    #: The configured account it sends through, as webhooks name it (an organization's id, or
    #: :data:`DEFAULT_ACCOUNT`), recorded on each delivery it accepts; ``None``: no webhooks.
    account_key: str | None = None
    #: Messages per second the account may send, over all workers together; ``None``: no limit.
    rate_per_second: float | None = None
    #: Least time between two messages to the same address (WhatsApp's pair rate limit).
    pair_interval_seconds: float | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or background tasks. Called once before the first send."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` opened."""

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> Accepted:
        """Hand the message to the provider, or raise a ``ChannelError`` saying why not."""
