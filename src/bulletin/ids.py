"""Identifiers and pagination cursors.

Message and organization ids are UUIDv7 (RFC 9562): random enough to be unguessable, and
ordered by creation time, so that ``ORDER BY id`` is chronological and keyset pagination needs
no second column. Python 3.11 has no ``uuid.uuid7``; the layout is small enough to write here.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid

from bulletin.errors import FieldError, InvalidRequest

_last_stamp = 0


def uuid7() -> uuid.UUID:
    """A new UUID version 7: Unix milliseconds, 12 bits of sub-millisecond time, random bits.

    The sub-millisecond bits (RFC 9562, section 6.2, method 3) and a guard against the clock
    standing still keep the ids of one process in creation order, even within a millisecond.
    """
    global _last_stamp
    nanos = time.time_ns()
    stamp = (nanos // 1_000_000) << 12 | (nanos % 1_000_000) * 4096 // 1_000_000
    stamp = max(stamp, _last_stamp + 1)
    _last_stamp = stamp
    millis, fraction = stamp >> 12, stamp & 0xFFF
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | fraction << 64
    value |= 0x2 << 62 | int.from_bytes(os.urandom(8), "big") >> 2
    return uuid.UUID(int=value)


def encode_cursor(position: str | int) -> str:
    """An opaque cursor for the row after which the next page starts."""
    raw = json.dumps({"after": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: type[str] | type[int]) -> str | int:
    """The position inside a cursor made by :func:`encode_cursor`; a bad cursor is a 422."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))["after"]
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        raise _bad_cursor() from exc
    if not isinstance(position, kind) or isinstance(position, bool):
        raise _bad_cursor()
    if isinstance(position, int) and not -(2**63) <= position < 2**63:
        # Row ids are 64-bit; a larger number would overflow in the database driver (a 500).
        raise _bad_cursor()
    return position


def decode_uuid_cursor(cursor: str | None) -> uuid.UUID | None:
    """The id inside a cursor of a list ordered by a UUID (``None`` without a cursor)."""
    if not cursor:
        return None
    try:
        return uuid.UUID(str(decode_cursor(cursor, str)))
    except ValueError as exc:
        raise _bad_cursor() from exc


def _bad_cursor() -> InvalidRequest:
    return InvalidRequest(
        "The cursor is not one this server gave out.",
        [FieldError(("query", "cursor"), "not a valid cursor", "cursor_invalid")],
    )
