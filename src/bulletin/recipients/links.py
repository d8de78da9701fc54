"""Links Bulletin puts in messages, signed so that only Bulletin can make them.

A preference link names one person, not one delivery: ``{base_url}/p/<id>.<mac>``, where
``<id>`` is the recipient's id in base 36 and ``<mac>`` is 96 bits of HMAC-SHA256, under this
installation's key (:func:`~bulletin.crypto.signing_key`), of a purpose, the recipient's
organization and the id. About 40 characters with a short host, so it fits in an SMS. It cannot
be made without the key, nor edited to reach another person: any changed, added or removed
character fails the MAC. ``/p/<token>/unsubscribe`` is the same person's one-click unsubscribe
(RFC 8058), given in an email's ``List-Unsubscribe`` header.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import uuid

from bulletin.crypto import mac, signing_key
from bulletin.db import Database

#: Bytes of MAC in a preference token: 96 bits, far beyond guessing at any request rate.
MAC_BYTES = 12
_MAC_CHARS = 16  # base64 of 12 bytes, no padding
_TOKEN = re.compile(r"([0-9a-z]{1,13})\.([A-Za-z0-9_-]{16})")
_MAX_ID = 2**63 - 1
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
#: Stands in for the organization when a token names no recipient, so that a forged token
#: costs the same work as a real one.
_NO_ORG = uuid.UUID(int=0)


def base36(number: int) -> str:
    """``number`` (not negative) in base 36, lower case."""
    if number < 0:
        raise ValueError("only a non-negative number has a base-36 form")
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = _DIGITS[rest] + digits
        if not number:
            return digits


def _preferences_mac(key: bytes, org_id: uuid.UUID, id36: str) -> str:
    return mac(key, f"preferences:{org_id}:{id36}", MAC_BYTES)


def preference_token(key: bytes, org_id: uuid.UUID, recipient_id: int) -> str:
    """The token of ``recipient_id``'s preference link."""
    id36 = base36(recipient_id)
    return f"{id36}.{_preferences_mac(key, org_id, id36)}"


def token_recipient_id(token: str) -> int | None:
    """The recipient a well-formed token names, not yet verified; ``None`` if it is malformed."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    recipient_id = int(match[1], 36)
    return recipient_id if recipient_id <= _MAX_ID else None


def token_is_valid(key: bytes, token: str, org_id: uuid.UUID | None) -> bool:
    """Whether ``token`` was made by this installation for a recipient of ``org_id``.

    ``org_id`` is ``None`` when no such recipient exists; the MAC is computed all the same.
    """
    match = _TOKEN.fullmatch(token)
    if match is None:
        return False
    expected = _preferences_mac(key, org_id or _NO_ORG, match[1])
    return hmac.compare_digest(expected, match[2]) and org_id is not None


def form_check(key: bytes, token: str) -> str:
    """The value a preference form must send back (its CSRF field), bound to its token."""
    return mac(key, f"preferences-form:{token}")


class PreferenceLinks:
    """Makes preference and unsubscribe links; reads the signing key once per process."""

    def __init__(self, db: Database, base_url: str) -> None:
        self._db = db
        self._base_url = base_url.rstrip("/")
        self._key: bytes | None = None
        # The sends of a process's first claimed batch all want the key at once: one reads it.
        self._reading = asyncio.Lock()

    async def page(self, org_id: uuid.UUID, recipient_id: int) -> str:
        """The link to the person's preference page."""
        if self._key is None:
            async with self._reading:
                if self._key is None:
                    self._key = await signing_key(self._db)
        return f"{self._base_url}/p/{preference_token(self._key, org_id, recipient_id)}"


def unsubscribe_url(page: str, category: str | None) -> str:
    """The one-click unsubscribe link that goes with a preference ``page`` link.

    With a category, unsubscribing opts out of that category only. Category names are
    lower-case letters, digits, ``_``, ``-`` and ``.``, so they need no escaping in a query.
    """
    return f"{page}/unsubscribe" + (f"?category={category}" if category else "")
