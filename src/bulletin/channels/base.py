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
import uuid
from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message; ``provider_message_id`` is its reference for it."""

    provider_message_id: str


class Provider(abc.ABC):
    """One provider account that can send on a channel."""

    #: Stable name, stored on each delivery it sends.
    name: str = "provider"
    #: True when a repeated send of one delivery id is recognised and not delivered twice.
    deduplicates: bool = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or background tasks. Called once before the first send."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` opened."""

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> Accepted:
        """Hand the message to the provider, or raise a ``ChannelError`` saying why not."""
