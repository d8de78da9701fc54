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

from sqlalchemy import String, Table, bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import dialect_name, utcnow
from bulletin.errors import FieldError, IdempotencyKeyReused, InvalidRequest, RequestInProgress
from bulletin.idempotency.models import IdempotencyRecord

MAX_KEY_LENGTH = 255

# Plain statements on the table: one row read or written per request, on the API's busiest
# path, without the ORM's identity map and unit of work.
_RECORDS: Table = IdempotencyRecord.__table__  # type: ignore[assignment]
_FIND = select(
    _RECORDS.c.fingerprint, _RECORDS.c.status_code, _RECORDS.c.body, _RECORDS.c.location
).where(_RECORDS.c.org_id == bindparam("org_id"), _RECORDS.c.key == bindparam("key"))
_TRY_LOCK = select(
    func.pg_try_advisory_xact_lock(func.hashtextextended(bindparam("name", type_=String), 0))
)


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
    session: AsyncSession, org_id: uuid.UUID, key: str, print_: str
) -> StoredAnswer | None:
    """The earlier answer to replay, or ``None`` when this request is the first with the key.

    Raises :class:`RequestInProgress` when a twin holds the key right now, and
    :class:`IdempotencyKeyReused` when the key was used for a different request.
    """
    if dialect_name(session) == "postgresql":
        locked = (await session.execute(_TRY_LOCK, {"name": f"{org_id}:{key}"})).scalar_one()
        if not locked:
            raise RequestInProgress(
                "A request with this Idempotency-Key is still being processed; retry shortly."
            )
    record = (await session.execute(_FIND, {"org_id": org_id, "key": key})).one_or_none()
    if record is None:
        return None
    if record.fingerprint != print_:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request.",
            [FieldError(("header", "Idempotency-Key"), "already used with another request")],
        )
    return StoredAnswer(record.status_code, record.body, record.location)


async def remember(
    session: AsyncSession,
    org_id: uuid.UUID,
    key: str,
    print_: str,
    answer: StoredAnswer,
) -> None:
    await session.execute(
        insert(_RECORDS),
        {
            "org_id": org_id,
            "key": key,
            "fingerprint": print_,
            "status_code": answer.status_code,
            "body": answer.body,
            "location": answer.location,
            "created_at": utcnow(),
        },
    )


async def once(
    session: AsyncSession,
    org_id: uuid.UUID,
    key: str,
    print_: str,
    create: Callable[[], Awaitable[StoredAnswer]],
) -> tuple[StoredAnswer, bool]:
    """The answer to the request with ``key``, and whether it is replayed.

    The first request with the key runs ``create`` and its answer is recorded in the same
    transaction; every later one gets that answer back without running ``create``. Raises as
    :func:`begin` does.
    """
    stored = await begin(session, org_id, key, print_)
    if stored is not None:
        return stored, True
    answer = await create()
    await remember(session, org_id, key, print_, answer)
    return answer, False
