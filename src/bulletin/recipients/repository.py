"""Every query about recipients and their groups."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import chunked, upsert_statement
from bulletin.recipients.models import Recipient, RecipientGroup

# Columns a PUT or an import replaces; preferences and history are the person's, and stay.
PROFILE_COLUMNS = (
    "name",
    "email",
    "phone",
    "whatsapp",
    "timezone",
    "locale",
    "attributes",
)
_ROWS_PER_STATEMENT = 1000


async def get(session: AsyncSession, org_id: uuid.UUID, external_id: str) -> Recipient | None:
    return (
        await session.execute(
            select(Recipient)
            .where(Recipient.org_id == org_id, Recipient.external_id == external_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def existing_external_ids(
    session: AsyncSession, org_id: uuid.UUID, external_ids: list[str]
) -> dict[str, int]:
    """Which of ``external_ids`` exist in the organization, with their internal ids."""
    found: dict[str, int] = {}
    for part in chunked(external_ids, _ROWS_PER_STATEMENT):
        rows = await session.execute(
            select(Recipient.external_id, Recipient.id).where(
                Recipient.org_id == org_id, Recipient.external_id.in_(part)
            )
        )
        found.update({row.external_id: row.id for row in rows})
    return found


async def upsert(
    session: AsyncSession, org_id: uuid.UUID, rows: list[dict[str, Any]], now: dt.datetime
) -> dict[str, int]:
    """Create or replace recipients (profile fields and groups); reactivates deactivated ones.

    ``rows`` hold ``external_id``, the profile columns and ``groups``. Returns the internal id
    of every row by external id.
    """
    ids: dict[str, int] = {}
    for part in chunked(rows, _ROWS_PER_STATEMENT):
        values = [
            {
                "org_id": org_id,
                "external_id": row["external_id"],
                **{column: row[column] for column in PROFILE_COLUMNS},
                "categories": {},
                "active": True,
                "created_at": now,
                "updated_at": now,
            }
            for row in part
        ]
        statement = upsert_statement(session, Recipient).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=["org_id", "external_id"],
            set_={
                **{column: statement.excluded[column] for column in PROFILE_COLUMNS},
                "active": True,
                "deactivated_at": None,
                "updated_at": now,
            },
        ).returning(Recipient.id, Recipient.external_id)
        for row in await session.execute(statement):
            ids[row.external_id] = row.id
    await replace_groups(session, org_id, {ids[r["external_id"]]: r["groups"] for r in rows})
    return ids


async def replace_groups(
    session: AsyncSession, org_id: uuid.UUID, groups_by_recipient: dict[int, list[str]]
) -> None:
    recipient_ids = list(groups_by_recipient)
    for part in chunked(recipient_ids, _ROWS_PER_STATEMENT):
        await session.execute(delete(RecipientGroup).where(RecipientGroup.recipient_id.in_(part)))
    memberships = [
        {"recipient_id": rid, "name": name, "org_id": org_id}
        for rid, names in groups_by_recipient.items()
        for name in dict.fromkeys(names)
    ]
    for part in chunked(memberships, _ROWS_PER_STATEMENT):
        await session.execute(insert(RecipientGroup), part)


async def groups_of(session: AsyncSession, recipient_ids: list[int]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = defaultdict(list)
    for part in chunked(recipient_ids, _ROWS_PER_STATEMENT):
        rows = await session.execute(
            select(RecipientGroup.recipient_id, RecipientGroup.name)
            .where(RecipientGroup.recipient_id.in_(part))
            .order_by(RecipientGroup.recipient_id, RecipientGroup.name)
        )
        for row in rows:
            groups[row.recipient_id].append(row.name)
    return groups


async def page(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    group: str | None,
    after_id: int | None,
    limit: int,
    include_inactive: bool,
) -> list[Recipient]:
    query = select(Recipient).where(Recipient.org_id == org_id)
    if not include_inactive:
        query = query.where(Recipient.active.is_(True))
    if group is not None:
        query = query.where(
            exists().where(
                RecipientGroup.recipient_id == Recipient.id,
                RecipientGroup.org_id == org_id,
                RecipientGroup.name == group,
            )
        )
    if after_id is not None:
        query = query.where(Recipient.id > after_id)
    return list((await session.execute(query.order_by(Recipient.id).limit(limit))).scalars())


async def deactivate(
    session: AsyncSession, org_id: uuid.UUID, external_id: str, now: dt.datetime
) -> bool:
    result = await session.execute(
        update(Recipient)
        .where(Recipient.org_id == org_id, Recipient.external_id == external_id)
        .values(
            active=False,
            deactivated_at=func.coalesce(Recipient.deactivated_at, now),
            updated_at=now,
        )
        .returning(Recipient.id)
    )
    return result.first() is not None
