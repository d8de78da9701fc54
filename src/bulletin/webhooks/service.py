"""Which provider account a webhook comes from, which organizations it speaks for, and
applying what it reports.

A webhook URL names one account by its key (see :mod:`bulletin.channels.accounts`), and only
that account's secret verifies a post to it. An organization's own account speaks for that
organization only; the environment's (``default``) for every organization that has no account
of its own on that channel. The payload's own idea of the account (``phone_number_id``,
``AccountSid``) never chooses the organizations: at most it must agree with the account.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels.accounts import DEFAULT_ACCOUNT, ROUTES, Route, parse_account_key
from bulletin.channels.base import Inbound, Receipt
from bulletin.channels.configs import (
    AnyProviderConfig,
    TwilioConfig,
    WhatsAppCloudConfig,
    from_settings,
)
from bulletin.config import Settings
from bulletin.crypto import SecretBox, SecretKeyError
from bulletin.db import utcnow
from bulletin.deliveries import receipts
from bulletin.errors import Conflict
from bulletin.providers import repository as providers
from bulletin.providers.service import open_config, secret_box
from bulletin.webhooks import repository

log = structlog.get_logger("bulletin.webhooks")


@dataclass(frozen=True)
class Account:
    """A configured provider account: its key, configuration, and the organizations it
    serves on its channel."""

    key: str
    route: Route
    config: WhatsAppCloudConfig | TwilioConfig
    orgs: tuple[uuid.UUID, ...]

    @property
    def source(self) -> receipts.Source:
        return receipts.Source(self.route.provider, self.route.channel, self.key, self.orgs)


@dataclass
class Outcome:
    """What a verified post did."""

    applied: receipts.Applied
    preferences_changed: int = 0
    inbound_new: int = 0
    inbound_replayed: int = 0


async def find_account(
    session: AsyncSession, settings: Settings, channel: str, key_text: str
) -> Account | None:
    """The account ``key_text`` names on ``channel`` (``whatsapp`` or ``sms``), or ``None``
    when there is none (or it cannot be read)."""
    route = ROUTES[channel]
    key = parse_account_key(key_text)
    if key is None:
        return None
    config: AnyProviderConfig | None
    if key == DEFAULT_ACCOUNT:
        config = from_settings(settings).get(channel)
        if config is None or config.provider != route.provider:
            return None
        orgs = tuple(await repository.orgs_without_own(session, channel))
    else:
        org_id = uuid.UUID(key)
        config = await _stored(session, secret_box(settings), org_id, channel, route)
        orgs = (org_id,)
    if not isinstance(config, WhatsAppCloudConfig | TwilioConfig):
        return None
    return Account(key, route, config, orgs)


async def _stored(
    session: AsyncSession, box: SecretBox | None, org_id: uuid.UUID, channel: str, route: Route
) -> AnyProviderConfig | None:
    row = await providers.get(session, org_id, channel)
    if row is None or row.provider != route.provider:
        return None
    try:
        return open_config(row, box)
    except (Conflict, SecretKeyError, ValidationError) as exc:
        # Only the kind of error: the message could quote a stored value.
        log.error(  # noqa: TRY400 - a traceback would carry the secrets in its locals
            "webhooks.config_unreadable",
            org_id=str(org_id),
            channel=channel,
            error=type(exc).__name__,
        )
        return None


async def apply(
    session: AsyncSession,
    account: Account,
    found: list[Receipt],
    inbound: list[Inbound],
) -> Outcome:
    """Apply a verified post of ``account``: receipts to its deliveries, and people's
    messages that were not seen before (by the provider's id) to the people it serves."""
    source = account.source
    applied = await receipts.apply_receipts(session, source, found)
    known = [m for m in inbound if m.provider_id is not None]
    new_ids = await repository.record_inbound(
        session,
        source.provider,
        source.account,
        [m.provider_id for m in known if m.provider_id is not None],
        utcnow(),
    )
    fresh = []
    for message in known:
        # A post may carry one message twice: act on its first copy only.
        if message.provider_id in new_ids:
            new_ids.discard(message.provider_id)
            fresh.append(message)
    changed = await receipts.apply_inbound(session, source, fresh)
    return Outcome(
        applied=applied,
        preferences_changed=changed,
        inbound_new=len(fresh),
        inbound_replayed=len(inbound) - len(fresh),
    )
