"""API key secrets and scopes. Pure: no I/O.

A key is ``bk_`` followed by 256 random bits. Because it is random and long, a single SHA-256
digest is a safe way to store it (a slow password hash buys nothing for a secret no one can
guess), and the digest doubles as the lookup key.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

KEY_PREFIX = "bk_"


class Scope(StrEnum):
    """What a key may do. Each scope includes the ones below it: admin > send > read."""

    READ = "read"
    SEND = "send"
    ADMIN = "admin"

    def allows(self, required: Scope) -> bool:
        order = [Scope.READ, Scope.SEND, Scope.ADMIN]
        return order.index(self) >= order.index(required)


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a key safe to show in lists and logs, enough to tell keys apart."""
    return secret[:11]
