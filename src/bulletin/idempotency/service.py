"""``Idempotency-Key`` handling (guarantee G3).

The key is checked and the answer stored in the same transaction that creates the resource,
so either both happen or neither does. On PostgreSQL a transaction-scoped advisory lock on the
key tells a twin request that arrives while the first is still running to answer 409; SQLite
runs writers one at a time, so there a twin simply waits and then replays the answer.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import utcnow
from bulletin.errors import FieldError, IdempotencyKeyReused, InvalidRequest, RequestInProgress
from bulletin.idempotency import repository

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: Any
    location: str | None


def fingerprint(method: str, path: str, raw_body: bytes) -> str:
    """What makes two requests "the same": method, path and the JSON body's content."""
    try:
        canonical = json.dumps(
            json.loads(raw_body or b"null"), sort_keys=True, separators=(",", ":")
        )
    except ValueError:
        canonical = raw_body.decode("utf-8", "replace")
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            "The Idempotency-Key header must be 1 to 255 printable characters.",
            [FieldError(("header", "Idempotency-Key"), "1 to 255 printable characters")],
        )
    return key


async def begin(
    session: AsyncSession, org_id: uuid.UUID, key: str, request_fingerprint: str
) -> StoredAnswer | None:
    """The earlier answer to replay, or ``None`` when this request is the first with the key.

    Raises :class:`RequestInProgress` when a twin holds the key right now, and
    :class:`IdempotencyKeyReused` when the key was used for a different request.
    """
    if not await repository.try_lock(session, org_id, key):
        raise RequestInProgress(
            "A request with this Idempotency-Key is still being processed; retry shortly."
        )
    record = await repository.find(session, org_id, key)
    if record is None:
        return None
    if record.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request.",
            [FieldError(("header", "Idempotency-Key"), "already used with another request")],
        )
    return StoredAnswer(record.status_code, record.body, record.location)


async def remember(
    session: AsyncSession,
    org_id: uuid.UUID,
    key: str,
    request_fingerprint: str,
    answer: StoredAnswer,
) -> None:
    await repository.add(
        session,
        org_id,
        key,
        request_fingerprint,
        answer.status_code,
        answer.body,
        answer.location,
        utcnow(),
    )


async def once(
    session: AsyncSession,
    org_id: uuid.UUID,
    key: str,
    request_fingerprint: str,
    create: Callable[[], Awaitable[StoredAnswer]],
) -> tuple[StoredAnswer, bool]:
    """The answer to the request with ``key``, and whether it is replayed.

    The first request with the key runs ``create`` and its answer is recorded in the same
    transaction; every later one gets that answer back without running ``create``. Raises as
    :func:`begin` does.
    """
    stored = await begin(session, org_id, key, request_fingerprint)
    if stored is not None:
        return stored, True
    answer = await create()
    await remember(session, org_id, key, request_fingerprint, answer)
    return answer, False
