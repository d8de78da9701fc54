"""Reading the sandbox's record."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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
