"""Every query on the sandbox's record: writing what the sandbox provider accepts, and
reading it back."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import upsert_statement
from bulletin.ids import decode_cursor, encode_cursor
from bulletin.sandbox import schemas
from bulletin.sandbox.models import SandboxMessage


async def page(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    message_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> schemas.SandboxPage:
    query = select(SandboxMessage).where(SandboxMessage.org_id == org_id)
    if message_id is not None:
        query = query.where(SandboxMessage.message_id == message_id)
    if cursor:
        query = query.where(SandboxMessage.id > int(decode_cursor(cursor, int)))
    found = list(
        (await session.execute(query.order_by(SandboxMessage.id).limit(limit + 1))).scalars()
    )
    more = len(found) > limit
    found = found[:limit]
    return schemas.SandboxPage(
        items=[
            schemas.SandboxMessage(
                id=m.id,
                message_id=m.message_id,
                delivery_id=m.delivery_id,
                channel=m.channel,
                recipient=m.recipient_external_id,
                address=m.address,
                title=m.title,
                body=m.body,
                attempts=m.attempts,
                preference_url=m.preference_url,
                created_at=m.created_at,
            )
            for m in found
        ],
        next_cursor=encode_cursor(found[-1].id) if more else None,
    )


async def record(session: AsyncSession, rows: list[dict[str, Any]]) -> dict[int, int]:
    """Record accepted messages in one statement, one row per delivery id; returns each
    delivery id's record id.

    A delivery recorded before keeps its row, and the ``attempts`` of the new row are added to
    its count: a repeated send is counted, not recorded twice. ``rows`` hold one row per
    delivery id.
    """
    statement = upsert_statement(session, SandboxMessage).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=["delivery_id"],
        set_={"attempts": SandboxMessage.attempts + statement.excluded.attempts},
    ).returning(SandboxMessage.id, SandboxMessage.delivery_id)
    result = await session.execute(statement)
    return {row.delivery_id: row.id for row in result}
