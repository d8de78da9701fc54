"""Channel configuration use cases: set, read and remove an organization's provider.

Secrets are write-only. A ``PUT`` that leaves a secret out keeps the stored one (so changing
a rate does not mean pasting a token again); the API never returns them, only their names.
They are stored encrypted with :class:`~bulletin.crypto.SecretBox`.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from pydantic import SecretStr, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels import accounts
from bulletin.channels.configs import AnyProviderConfig, ProviderConfig, from_settings
from bulletin.channels.registry import StoredLoader
from bulletin.config import Settings
from bulletin.crypto import SecretBox
from bulletin.db import Database, utcnow
from bulletin.errors import Conflict, FieldError, InvalidRequest, NotFound
from bulletin.providers import repository
from bulletin.providers.models import ChannelConfig
from bulletin.providers.schemas import ChannelOut
from bulletin.recipients.addresses import CHANNELS

_REQUIRED_SECRETS = {"whatsapp_cloud": ("access_token",), "twilio": ("auth_token",)}
_CONFIG: TypeAdapter[AnyProviderConfig] = TypeAdapter(ProviderConfig)


def secret_box(settings: Settings) -> SecretBox | None:
    if settings.secret_key is None:
        return None
    return SecretBox(settings.secret_key.get_secret_value())


def _split(config: AnyProviderConfig) -> tuple[dict[str, Any], dict[str, str]]:
    plain = config.model_dump(mode="json", exclude=set(config.secret_fields))
    secret = {
        name: value.get_secret_value()
        for name in config.secret_fields
        if isinstance(value := getattr(config, name), SecretStr)
    }
    return plain, secret


def open_config(row: ChannelConfig, box: SecretBox | None) -> AnyProviderConfig:
    """A stored configuration with its secrets opened; raises :class:`Conflict` without a key
    to open them, :class:`~bulletin.crypto.SecretKeyError` with the wrong one."""
    secrets: dict[str, str] = {}
    if row.secrets:
        if box is None:
            raise Conflict("Stored provider secrets need BULLETIN_SECRET_KEY to be read.")
        secrets = box.open(row.secrets)
    return _CONFIG.validate_python({**row.settings, **secrets})


def _view(channel: str, config: AnyProviderConfig, source: str) -> dict[str, Any]:
    plain, secret = _split(config)
    settings = {k: v for k, v in plain.items() if k != "provider"}
    if source == "environment":
        # The installation's own account serves every organization without one: its settings
        # (a phone number id, an account sid, a host, a username, an address) identify it, and
        # naming it is what a forged webhook needs. An organization learns only that it is in
        # use, and which of its secrets are set (names, which identify nothing).
        settings = {}
    return {
        "channel": channel,
        "source": source,
        "provider": config.provider,
        "settings": settings,
        "secrets_set": sorted(secret),
    }


def with_webhook_url(out: ChannelOut, settings: Settings, org_id: uuid.UUID) -> ChannelOut:
    """``out`` with the address its provider must call back, for an organization's own account.

    Each account has a webhook address of its own, so that a webhook is attributed only to the
    account whose secret signed it. The environment's account and the sandbox get none here.
    """
    route = accounts.ROUTES.get(out.channel)
    if out.source != "organization" or route is None or route.provider != out.provider:
        return out.model_copy(update={"webhook_url": None})
    path = accounts.webhook_path(out.channel, accounts.account_key(org_id))
    return out.model_copy(update={"webhook_url": f"{settings.base_url}{path}"})


async def put(
    session: AsyncSession,
    box: SecretBox | None,
    org_id: uuid.UUID,
    channel: str,
    config: AnyProviderConfig,
) -> tuple[ChannelOut, bool]:
    """Set the organization's provider for ``channel``; returns it and whether it is new."""
    if channel not in config.channels:
        raise InvalidRequest(
            f"The {config.provider} provider cannot send on {channel}.",
            [FieldError(("body", "provider"), f"serves {', '.join(config.channels)}", "channel")],
        )
    plain, secret = _split(config)
    row = await repository.get(session, org_id, channel)
    if row is not None and row.provider == config.provider and row.secrets:
        if box is None:
            raise Conflict("Stored provider secrets need BULLETIN_SECRET_KEY to be read.")
        secret = {**box.open(row.secrets), **secret}
    missing = [s for s in _REQUIRED_SECRETS.get(config.provider, ()) if s not in secret]
    if missing:
        raise InvalidRequest(
            "The configuration lacks a secret it needs.",
            [FieldError(("body", m), "required", "missing") for m in missing],
        )
    full = _with_kept_secrets(config, plain, secret)
    if secret and box is None:
        raise Conflict(
            "This server cannot store provider secrets: it has no BULLETIN_SECRET_KEY. "
            "Make one with `bulletin secret-key`, set it, and restart."
        )
    sealed = box.seal(secret) if secret and box is not None else None
    now = utcnow()
    created = row is None
    if row is None:
        row = ChannelConfig(org_id=org_id, channel=channel, version=1, created_at=now)
        repository.add(session, row)
    else:
        row.version += 1
    row.provider = config.provider
    row.settings = plain
    row.secrets = sealed
    row.updated_at = now
    await session.flush()
    return _out(row, full), created


#: Fields that a secret kept from before cannot do without, by provider.
_KEPT_SECRET_NEEDS: dict[str, dict[str, tuple[str, ...]]] = {"smtp": {"password": ("username",)}}


def _with_kept_secrets(
    config: AnyProviderConfig, plain: dict[str, Any], secret: dict[str, str]
) -> AnyProviderConfig:
    """The configuration ``put`` stores: the fields sent, with the secrets kept from before.

    A kept secret can need a field this ``PUT`` left out (a stored SMTP password needs a
    username): that is a 422 naming the field, and, as for any other rule the whole breaks,
    never an echo of the secret's value.
    """
    sent = set(config.model_fields_set)
    absent = [
        (kept, needed)
        for kept, needs in _KEPT_SECRET_NEEDS.get(config.provider, {}).items()
        if kept in secret and kept not in sent
        for needed in needs
        if plain.get(needed) is None
    ]
    if absent:
        raise InvalidRequest(
            "The configuration lacks a field that a secret stored before needs.",
            [
                FieldError(
                    ("body", needed),
                    f"required while a {kept} is stored: send it again, or DELETE the "
                    f"channel to drop the {kept}",
                    "missing",
                )
                for kept, needed in absent
            ],
        )
    try:
        return _CONFIG.validate_python({**plain, **secret})
    except ValidationError as exc:
        raise InvalidRequest(
            "The configuration, with the secrets kept from before, is not valid.",
            [
                FieldError(
                    ("body", *[p for p in e["loc"] if p != config.provider]), e["msg"], e["type"]
                )
                for e in exc.errors(include_input=False, include_url=False)
            ],
        ) from None


def _out(row: ChannelConfig, config: AnyProviderConfig) -> ChannelOut:
    return ChannelOut.model_validate(
        {
            **_view(row.channel, config, "organization"),
            "version": row.version,
            "updated_at": row.updated_at,
        }
    )


async def get(
    session: AsyncSession,
    box: SecretBox | None,
    settings: Settings,
    org_id: uuid.UUID,
    channel: str,
) -> ChannelOut:
    if channel not in CHANNELS:
        raise NotFound(f"There is no channel {channel!r}; channels are {', '.join(CHANNELS)}.")
    row = await repository.get(session, org_id, channel)
    if row is not None:
        return with_webhook_url(_out(row, open_config(row, box)), settings, org_id)
    env = from_settings(settings).get(channel)
    if env is not None:
        return ChannelOut.model_validate(_view(channel, env, "environment"))
    return ChannelOut(
        channel=cast(Any, channel),
        source="sandbox",
        provider="sandbox",
        settings={},
        secrets_set=[],
    )


async def list_all(
    session: AsyncSession, box: SecretBox | None, settings: Settings, org_id: uuid.UUID
) -> list[ChannelOut]:
    return [await get(session, box, settings, org_id, c) for c in CHANNELS]


async def remove(session: AsyncSession, org_id: uuid.UUID, channel: str) -> None:
    if not await repository.remove(session, org_id, channel):
        raise NotFound(f"The organization has no provider of its own for {channel}.")


def stored_loader(db: Database, box: SecretBox | None) -> StoredLoader:
    """The registry's view of stored configurations: only what changed since ``known``."""

    async def load(
        known: dict[tuple[uuid.UUID, str], int],
    ) -> dict[tuple[uuid.UUID, str], tuple[int, AnyProviderConfig | None]]:
        async with db.read() as session:
            current = await repository.versions(session)
            changed = [k for k, v in current.items() if known.get(k) != v]
            rows = await repository.by_keys(session, changed)
        found: dict[tuple[uuid.UUID, str], tuple[int, AnyProviderConfig | None]] = {}
        for row in rows:
            found[(row.org_id, row.channel)] = (row.version, open_config(row, box))
        for gone in set(known) - set(current):
            found[gone] = (-1, None)
        return found

    return load
