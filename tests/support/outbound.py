"""The message the worker hands a provider, built without a database, for tests of the
channel adapters: each channel's usual message and one factory that varies it."""

from __future__ import annotations

import uuid
from typing import Any

from bulletin.channels.base import OutboundMessage

#: Whom each channel's test message is for and what it says, unless a test says otherwise.
USUAL_MESSAGE: dict[str, dict[str, Any]] = {
    "email": {
        "address": "zoe@example.net",
        "recipient_name": "Zoë Ångström",
        "locale": "de",
        "title": "Wasser: Störung in Köln ☔",
        "body": "Kein Wasser bis 14:00.\nBitte Vorrat anlegen.",
        "category": "outage",
    },
    "sms": {
        "address": "+27821234567",
        "recipient_name": "Thandi",
        "locale": "en",
        "title": "Water outage",
        "body": "No water until 14:00.",
        "category": None,
    },
    "whatsapp": {
        "address": "+31612345678",
        "recipient_name": "Ada",
        "locale": "en",
        "title": "Water outage",
        "body": "No water on Elm Street until 15:00.",
        "category": None,
    },
}


def outbound_message(channel: str, *, delivery_id: int = 42, **fields: Any) -> OutboundMessage:
    """What the worker hands a provider to send one delivery on ``channel`` (``email``,
    ``sms`` or ``whatsapp``), for tests of the adapters that need no database.

    It is the channel's usual message (:data:`USUAL_MESSAGE`), on its first attempt, with
    ``fields`` (any of :class:`OutboundMessage`'s: ``address``, ``title``, ``body``,
    ``whatsapp_template``, ``attempt`` ...) in place of what they name. Each call is another
    message of another organization, unless ``message_id`` or ``org_id`` is given.
    """
    usual: dict[str, Any] = {
        "delivery_id": delivery_id,
        "attempt": 1,
        "org_id": uuid.uuid4(),
        "message_id": uuid.uuid4(),
        "channel": channel,
        "recipient_external_id": "p-1",
        **USUAL_MESSAGE[channel],
    }
    return OutboundMessage(**(usual | fields))
