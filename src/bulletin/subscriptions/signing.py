"""Signing webhooks the Standard Webhooks way (https://www.standardwebhooks.com).

A secret is ``whsec_`` followed by the standard base64 of 32 random bytes. A request carries
``webhook-id`` (stable across retries, so receivers can deduplicate), ``webhook-timestamp``
(Unix seconds of the send) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
``"{id}.{timestamp}.{body}"`` under each secret that signs, separated by spaces. During a
rotation's grace period two secrets sign, so a receiver holding either one verifies.

Nothing here reads the clock or the database: the sender passes the time and the secrets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from secrets import token_bytes

PREFIX = "whsec_"
_SECRET_BYTES = 32


def webhook_id(outbox_id: int) -> str:
    """The ``webhook-id`` of the outbox row ``outbox_id``: the same on every retry."""
    return f"msg_{outbox_id}"


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return PREFIX + base64.b64encode(token_bytes(_SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key a secret stands for: its base64 part decoded.

    Raises ``ValueError`` (without the secret in its message) when it is not a valid secret.
    """
    encoded = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is not valid base64") from None
    if not key:
        raise ValueError("a webhook secret is empty")
    return key


def signature(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64>`` for each secret, space-separated."""
    if not secrets:
        raise ValueError("at least one secret must sign")
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1,"
        + base64.b64encode(hmac.new(secret_bytes(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def headers(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one signed webhook request carrying ``body`` (JSON)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secrets, webhook_id, timestamp, body),
        "content-type": "application/json",
    }
