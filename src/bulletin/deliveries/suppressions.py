"""The suppression list: per organization and channel, addresses Bulletin never sends to again.

An address is put on it when a provider says it must not be used again (at send time, or in a
receipt) or when the person replies with a stop keyword, and taken off when they reply with a
start keyword. The dispatcher, and the fallback choosing a person's next channel, consult it.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import upsert_statement
from bulletin.deliveries.models import Suppression


async def add(
    session: AsyncSession,
    org_id: uuid.UUID,
    channel: str,
    address: str,
    reason: str,
    now: dt.datetime,
) -> None:
    """Suppress ``address`` on ``channel``; an address already suppressed keeps its reason."""
    statement = upsert_statement(session, Suppression).values(
        org_id=org_id, channel=channel, address=address, reason=reason, created_at=now
    )
    await session.execute(statement.on_conflict_do_nothing())


async def remove(session: AsyncSession, org_id: uuid.UUID, channel: str, address: str) -> None:
    await session.execute(
        delete(Suppression).where(
            Suppression.org_id == org_id,
            Suppression.channel == channel,
            Suppression.address == address,
        )
    )


async def suppressed_addresses(
    session: AsyncSession, org_ids: set[uuid.UUID], addresses: set[str]
) -> set[tuple[uuid.UUID, str, str]]:
    """Which of these addresses are on their organization's suppression list, per channel."""
    if not addresses:
        return set()
    rows = await session.execute(
        select(Suppression.org_id, Suppression.channel, Suppression.address).where(
            Suppression.org_id.in_(org_ids), Suppression.address.in_(addresses)
        )
    )
    return {(row.org_id, row.channel, row.address) for row in rows}
