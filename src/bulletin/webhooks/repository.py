"""Every query of the webhooks: which organizations an account serves, inbound ids seen."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import upsert_statement
from bulletin.orgs.models import Organization
from bulletin.providers.models import ChannelConfig
from bulletin.webhooks.models import InboundSeen


async def orgs_without_own(session: AsyncSession, channel: str) -> list[uuid.UUID]:
    """Organizations with no account of their own on ``channel``: the environment's serves
    them."""
    own = select(ChannelConfig.org_id).where(ChannelConfig.channel == channel)
    rows = await session.execute(select(Organization.id).where(Organization.id.not_in(own)))
    return list(rows.scalars())


async def record_inbound(
    session: AsyncSession,
    provider: str,
    account: str,
    provider_ids: Sequence[str],
    now: dt.datetime,
) -> set[str]:
    """Record the ids of inbound messages; returns those not recorded before.

    One statement for the whole post. Two transactions recording one id at once: the second
    waits for the first (the primary key) and records nothing, so exactly one acts on it.
    """
    unique = list(dict.fromkeys(provider_ids))
    if not unique:
        return set()
    statement = (
        upsert_statement(session, InboundSeen)
        .values(
            [
                {"provider": provider, "account": account, "provider_id": i, "created_at": now}
                for i in unique
            ]
        )
        .on_conflict_do_nothing()
        .returning(InboundSeen.provider_id)
    )
    return set((await session.execute(statement)).scalars())
