"""Password hashing for portal users: scrypt from the standard library. Pure: no I/O.

A stored hash reads ``scrypt$<n>$<r>$<p>$<salt>$<digest>`` (salt and digest in URL-safe
base64), so the cost can be raised later without breaking the hashes already stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# RFC 7914's interactive parameters: about 16 MiB of memory and tens of milliseconds a guess.
_N, _R, _P = 2**14, 8, 1
_LENGTH = 32
#: Shortest password the portal accepts when one is set.
MIN_LENGTH = 10


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=_LENGTH, maxmem=128 * r * n * 2
    )


def hash_password(password: str) -> str:
    """A new hash of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; compares in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = _derive(password, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(derived, _unb64(digest))
    except (ValueError, TypeError):
        return False


#: A hash no password matches, checked when the email is unknown, so that a wrong email
#: takes as long to refuse as a wrong password.
def decoy_hash() -> str:
    return _DECOY


_DECOY = f"scrypt${_N}${_R}${_P}${_b64(b'0' * 16)}${_b64(b'1' * _LENGTH)}"


def new_password() -> str:
    """A random password to hand out once (on first start)."""
    return secrets.token_urlsafe(15)
