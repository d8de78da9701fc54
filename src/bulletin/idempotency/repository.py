"""Every query on stored ``Idempotency-Key`` answers.

Plain statements on the table, built once: one row is read or written per request, on the
API's busiest path, without the ORM's identity map and unit of work.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Row, String, Table, bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import dialect_name
from bulletin.idempotency.models import IdempotencyRecord

_RECORDS: Table = IdempotencyRecord.__table__  # type: ignore[assignment]
_FIND = select(
    _RECORDS.c.fingerprint, _RECORDS.c.status_code, _RECORDS.c.body, _RECORDS.c.location
).where(_RECORDS.c.org_id == bindparam("org_id"), _RECORDS.c.key == bindparam("key"))
_TRY_LOCK = select(
    func.pg_try_advisory_xact_lock(func.hashtextextended(bindparam("name", type_=String), 0))
)


async def try_lock(session: AsyncSession, org_id: uuid.UUID, key: str) -> bool:
    """Hold the organization's ``key`` until the transaction ends; ``False`` when a twin
    request holds it right now.

    PostgreSQL: a transaction-scoped advisory lock, taken without waiting. SQLite runs writers
    one at a time, so a twin cannot be running: always ``True``, with no statement.
    """
    if dialect_name(session) != "postgresql":
        return True
    locked: bool = (await session.execute(_TRY_LOCK, {"name": f"{org_id}:{key}"})).scalar_one()
    return locked


async def find(
    session: AsyncSession, org_id: uuid.UUID, key: str
) -> Row[str, int, Any, str | None] | None:
    """The stored ``fingerprint``, ``status_code``, ``body`` and ``location`` of the key."""
    return (await session.execute(_FIND, {"org_id": org_id, "key": key})).one_or_none()


async def add(
    session: AsyncSession,
    org_id: uuid.UUID,
    key: str,
    fingerprint: str,
    status_code: int,
    body: Any,
    location: str | None,
    now: dt.datetime,
) -> None:
    await session.execute(
        insert(_RECORDS),
        {
            "org_id": org_id,
            "key": key,
            "fingerprint": fingerprint,
            "status_code": status_code,
            "body": body,
            "location": location,
            "created_at": now,
        },
    )
