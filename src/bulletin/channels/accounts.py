"""Webhook account keys and the URL each provider account posts to. Pure.

Every provider account that can send webhooks has a key: an organization's own account
(``PUT /v1/channels/{whatsapp|sms}``) is keyed by the organization's id, the installation-wide
one (``BULLETIN_WHATSAPP_*``, ``BULLETIN_TWILIO_*``) by ``default``. Its webhook URL names the
key, and only that account's secret verifies a post to it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from bulletin.channels.base import DEFAULT_ACCOUNT

__all__ = ["DEFAULT_ACCOUNT", "Route", "account_key", "parse_account_key", "webhook_path"]


@dataclass(frozen=True, slots=True)
class Route:
    """One provider's webhook: its path segment, the channel and provider name it serves."""

    segment: str
    channel: str
    provider: str


#: Channels that have webhooks, and how.
ROUTES = {
    "whatsapp": Route("whatsapp", "whatsapp", "whatsapp_cloud"),
    "sms": Route("twilio", "sms", "twilio"),
}


def account_key(org_id: uuid.UUID | None) -> str:
    """The key of an organization's own account, or of the environment's (``None``)."""
    return DEFAULT_ACCOUNT if org_id is None else str(org_id)


def parse_account_key(text: str) -> str | None:
    """The canonical key named by a URL segment, or ``None`` when it cannot name one."""
    if text == DEFAULT_ACCOUNT:
        return text
    if len(text) != 36:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def webhook_path(channel: str, account_key: str) -> str:
    """The path (under the public URL) the provider account ``account_key`` posts
    ``channel``'s webhooks to, e.g. ``/v1/webhooks/twilio/default``.

    Raises :class:`ValueError` for a channel without webhooks (email).
    """
    route = ROUTES.get(channel)
    if route is None:
        raise ValueError(f"the {channel} channel has no webhooks")
    return f"/v1/webhooks/{route.segment}/{account_key}"
