"""Secrets at rest and signed links.

* :class:`SecretBox` encrypts provider secrets (tokens, passwords) with the key(s) in
  ``BULLETIN_SECRET_KEY``: Fernet (AES-128-CBC with HMAC-SHA256). Several comma-separated keys
  may be given to rotate: the first encrypts, any of them decrypts.
* :func:`signing_key` is this installation's key for signing links sent to people (unsubscribe,
  preference centre), made on first use and kept in the database, so links outlive restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bulletin.db import Database, utcnow
from bulletin.orgs import repository as orgs


class SecretKeyError(ValueError):
    """``BULLETIN_SECRET_KEY`` is malformed, or cannot decrypt what is stored."""


def generate_key() -> str:
    """A new key for ``BULLETIN_SECRET_KEY``."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts a mapping of secret values as one token."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SecretKeyError("BULLETIN_SECRET_KEY is empty")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except (ValueError, TypeError) as exc:
            raise SecretKeyError(
                "BULLETIN_SECRET_KEY must be one or more comma-separated Fernet keys "
                "(make one with `bulletin secret-key`)"
            ) from exc

    def seal(self, values: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode()).decode()

    def open(self, token: str) -> dict[str, str]:
        try:
            opened = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise SecretKeyError(
                "stored provider secrets cannot be decrypted with BULLETIN_SECRET_KEY "
                "(was the key changed without keeping the old one?)"
            ) from exc
        return {str(k): str(v) for k, v in opened.items()}


_SIGNING = "link-signing-key"


async def signing_key(db: Database) -> bytes:
    """This installation's link-signing key, made the first time it is needed."""
    async with db.transaction() as session:
        value = await orgs.instance_secret(session, _SIGNING, secrets.token_urlsafe(32), utcnow())
    return value.encode()


def mac(key: bytes, message: str, size: int = 16) -> str:
    """The first ``size`` bytes of HMAC-SHA256 of ``message``, URL-safe base64 without padding.

    Callers put a purpose in ``message`` (``"preferences:..."``) so that a MAC made for one
    use is never accepted for another.
    """
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()[:size]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(key: bytes, payload: str) -> str:
    """``payload`` with a MAC appended, safe in a URL path."""
    return f"{payload}.{mac(key, payload)}"


def unsign(key: bytes, token: str) -> str | None:
    """The payload of a token made by :func:`sign`, or ``None`` when it was not."""
    payload, _, _mac = token.rpartition(".")
    if not payload:
        return None
    return payload if hmac.compare_digest(sign(key, payload), token) else None
