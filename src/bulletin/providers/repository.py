"""Every query on stored channel configurations."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.providers.models import ChannelConfig


async def get(session: AsyncSession, org_id: uuid.UUID, channel: str) -> ChannelConfig | None:
    return await session.get(ChannelConfig, (org_id, channel))


def add(session: AsyncSession, row: ChannelConfig) -> None:
    """Store a new configuration with the session's next flush."""
    session.add(row)


async def versions(session: AsyncSession) -> dict[tuple[uuid.UUID, str], int]:
    rows = await session.execute(
        select(ChannelConfig.org_id, ChannelConfig.channel, ChannelConfig.version)
    )
    return {(org, channel): version for org, channel, version in rows}


async def by_keys(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, str]]
) -> list[ChannelConfig]:
    found = []
    for org_id, channel in keys:
        row = await session.get(ChannelConfig, (org_id, channel))
        if row is not None:
            found.append(row)
    return found


async def of_provider(session: AsyncSession, provider: str) -> list[ChannelConfig]:
    rows = await session.execute(select(ChannelConfig).where(ChannelConfig.provider == provider))
    return list(rows.scalars())


async def remove(session: AsyncSession, org_id: uuid.UUID, channel: str) -> bool:
    result = await session.execute(
        delete(ChannelConfig).where(
            ChannelConfig.org_id == org_id, ChannelConfig.channel == channel
        )
    )
    return bool(cast("CursorResult[Any]", result).rowcount)
