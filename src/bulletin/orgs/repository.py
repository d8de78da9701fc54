"""Every query about organizations and their API keys."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Table, bindparam, case, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import UTCDateTime, chunked, dialect_name, upsert_statement
from bulletin.orgs.keys import Scope
from bulletin.orgs.models import ApiKey, InstanceSecret, Organization

_KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
#: Every request that misses the key cache is authenticated with this: a plain statement on
#: the table, built once.
_KEY_BY_HASH = select(_KEYS.c.id, _KEYS.c.org_id, _KEYS.c.scope, _KEYS.c.revoked_at).where(
    _KEYS.c.key_hash == bindparam("key_hash")
)
#: Keys whose last use one UPDATE writes; each takes four parameters, far below every limit.
_USES_PER_STATEMENT = 500
#: The advisory lock that lets one process at a time make the first organization.
_FIRST_ORGANIZATION_LOCK = 0x42554C4C45544F52


async def add_organization(session: AsyncSession, org: Organization) -> None:
    session.add(org)
    await session.flush()


async def get_organization(session: AsyncSession, org_id: uuid.UUID) -> Organization | None:
    return await session.get(Organization, org_id)


async def organization_exists(session: AsyncSession, org_id: uuid.UUID) -> bool:
    return await get_organization(session, org_id) is not None


async def count_organizations(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(Organization))).scalar_one()


async def list_organizations(session: AsyncSession) -> list[Organization]:
    return list((await session.execute(select(Organization).order_by(Organization.id))).scalars())


async def lock_first_organization(session: AsyncSession) -> None:
    """Until the transaction ends, be the only one deciding whether to make the first
    organization: two processes starting on an empty database would otherwise both make one.

    PostgreSQL: a transaction-scoped advisory lock. SQLite runs writers one at a time
    (``BEGIN IMMEDIATE``), so there is nothing to take.
    """
    if dialect_name(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(_FIRST_ORGANIZATION_LOCK)))


async def add_key(session: AsyncSession, key: ApiKey) -> None:
    session.add(key)
    await session.flush()


async def find_by_hash(
    session: AsyncSession, key_hash: str
) -> tuple[uuid.UUID, uuid.UUID, str, dt.datetime | None] | None:
    """id, org_id, scope and revoked_at of the key with this digest, if there is one."""
    row = (await session.execute(_KEY_BY_HASH, {"key_hash": key_hash})).one_or_none()
    return None if row is None else (row.id, row.org_id, row.scope, row.revoked_at)


async def get_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    """The key as stored now, whatever this session read before."""
    return (
        await session.execute(
            select(ApiKey).where(ApiKey.id == key_id).execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def page_keys(
    session: AsyncSession, org_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[ApiKey]:
    """Up to ``limit`` keys of the organization, oldest first, those after ``after``."""
    query = select(ApiKey).where(ApiKey.org_id == org_id)
    if after is not None:
        query = query.where(ApiKey.id > after)
    return list((await session.execute(query.order_by(ApiKey.id).limit(limit))).scalars())


async def with_text_links(session: AsyncSession, org_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``org_ids`` whose texts carry the preference link."""
    rows = await session.execute(
        select(Organization.id).where(
            Organization.id.in_(org_ids), Organization.preference_links_in_texts.is_(True)
        )
    )
    return set(rows.scalars())


async def lock_organization(session: AsyncSession, org_id: uuid.UUID) -> None:
    """Hold the organization's row until the transaction ends (PostgreSQL).

    Two admin keys revoked at once would each see the other still active; the lock makes the
    second wait and count again. SQLite writers run one at a time (``BEGIN IMMEDIATE``).
    """
    await session.execute(
        select(Organization.id).where(Organization.id == org_id).with_for_update()
    )


async def count_active_keys(session: AsyncSession, org_id: uuid.UUID, scope: Scope) -> int:
    return (
        await session.execute(
            select(func.count())
            .select_from(_KEYS)
            .where(
                _KEYS.c.org_id == org_id,
                _KEYS.c.scope == scope.value,
                _KEYS.c.revoked_at.is_(None),
            )
        )
    ).scalar_one()


async def record_uses(session: AsyncSession, uses: dict[uuid.UUID, dt.datetime]) -> None:
    """Set each key's ``last_used_at`` to its time in ``uses``, unless it is already later.

    One UPDATE for all the keys (per few hundred), whatever number of requests they served:
    a key's time is picked out by a CASE on its id. "Unless later" keeps the newest time when
    several processes write the same key.
    """
    for ids in chunked(sorted(uses), _USES_PER_STATEMENT):
        at = case(
            {key_id: literal(uses[key_id], UTCDateTime()) for key_id in ids}, value=_KEYS.c.id
        )
        await session.execute(
            update(_KEYS)
            .where(
                _KEYS.c.id.in_(ids),
                or_(_KEYS.c.last_used_at.is_(None), _KEYS.c.last_used_at < at),
            )
            .values(last_used_at=at)
        )


async def instance_secret(session: AsyncSession, name: str, made: str, now: dt.datetime) -> str:
    """The installation's secret ``name``, stored as ``made`` if there is none yet.

    Whoever stores it first wins: every process then reads the same value.
    """
    statement = upsert_statement(session, InstanceSecret).values(
        name=name, value=made, created_at=now
    )
    await session.execute(statement.on_conflict_do_nothing())
    value: str = (
        await session.execute(select(InstanceSecret.value).where(InstanceSecret.name == name))
    ).scalar_one()
    return value
