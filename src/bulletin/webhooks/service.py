"""Which provider account a webhook comes from, and which organizations it speaks for.

A webhook is trusted only after its signature verifies with the secret of a configured
account. An organization's own account speaks for that organization; the environment's
account speaks for every organization that has no account of its own on that channel.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels.configs import AnyProviderConfig, TwilioConfig, WhatsAppCloudConfig
from bulletin.config import Settings
from bulletin.orgs.models import Organization
from bulletin.providers import service as providers
from bulletin.providers.models import ChannelConfig


@dataclass(frozen=True)
class Account:
    """A configured provider account and the organizations it serves (``None``: any)."""

    config: AnyProviderConfig
    orgs: tuple[uuid.UUID, ...]


async def _accounts(
    session: AsyncSession, settings: Settings, provider: str, channel: str
) -> list[Account]:
    found = await providers.accounts(session, providers.secret_box(settings), settings, provider)
    result = []
    for org_id, config in found:
        if org_id is not None:
            result.append(Account(config, (org_id,)))
            continue
        own = select(ChannelConfig.org_id).where(ChannelConfig.channel == channel)
        rows = await session.execute(select(Organization.id).where(Organization.id.not_in(own)))
        result.append(Account(config, tuple(rows.scalars())))
    return result


async def whatsapp_accounts(session: AsyncSession, settings: Settings) -> list[Account]:
    return await _accounts(session, settings, "whatsapp_cloud", "whatsapp")


async def twilio_accounts(session: AsyncSession, settings: Settings) -> list[Account]:
    return await _accounts(session, settings, "twilio", "sms")


def whatsapp_by_number(accounts: Sequence[Account], number_ids: set[str]) -> list[Account]:
    return [
        a
        for a in accounts
        if isinstance(a.config, WhatsAppCloudConfig) and a.config.phone_number_id in number_ids
    ]


def twilio_by_sid(accounts: Sequence[Account], account_sid: str) -> list[Account]:
    return [
        a
        for a in accounts
        if isinstance(a.config, TwilioConfig) and a.config.account_sid == account_sid
    ]
