"""The channel registry of a process that did not take the configuration change itself."""

from __future__ import annotations

import time
import uuid

from bulletin.channels.base import Provider
from bulletin.channels.configs import AnyProviderConfig, WhatsAppCloudConfig
from bulletin.channels.factory import ProviderFactory
from bulletin.channels.registry import ChannelRegistry, Versions
from bulletin.config import Settings
from bulletin.crypto import SecretBox, generate_key
from bulletin.db import Database
from bulletin.providers import service
from bulletin.sandbox.provider import SandboxProvider
from support.db_factories import new_org


async def test_work_read_after_a_configuration_was_saved_never_goes_to_the_sandbox(
    db: Database, settings: Settings
) -> None:
    """Another process saved the organization's WhatsApp account a moment ago; this one
    refreshes only every hour. Work it claims after the save must use that account."""
    box = SecretBox(generate_key())
    factory = ProviderFactory(settings)
    sandbox = SandboxProvider(db)
    registry = ChannelRegistry(
        sandbox,
        stored=service.stored_loader(db, box),
        build=factory.build,
        refresh_seconds=3600,
    )
    org = await new_org(db)
    await registry.refresh()
    assert registry.provider_for(org, "whatsapp") is sandbox

    config = WhatsAppCloudConfig.model_validate(
        {"phone_number_id": "100000000000001", "access_token": "EAAG-token"}
    )
    async with db.transaction() as session:
        await service.put(session, box, org, "whatsapp", config)
    claimed_at = time.monotonic()

    await registry.refresh()  # within the hour: does not look
    assert registry.provider_for(org, "whatsapp") is sandbox
    await registry.confirm_unconfigured({(org, "whatsapp")}, claimed_at)
    provider = registry.provider_for(org, "whatsapp")
    assert provider is not sandbox
    assert registry.config_for(org, "whatsapp") == config
    await factory.close()


async def test_a_fresh_look_is_not_repeated_for_work_read_before_it(db: Database) -> None:
    looks = 0

    async def loader(
        known: Versions,
    ) -> dict[tuple[uuid.UUID, str], tuple[int, AnyProviderConfig | None]]:
        nonlocal looks
        looks += 1
        return {}

    def build(config: AnyProviderConfig, account_key: str) -> Provider:
        raise AssertionError("nothing is configured")

    org = await new_org(db)
    registry = ChannelRegistry(SandboxProvider(db), stored=loader, build=build)
    read_at = time.monotonic()
    await registry.refresh(force=True)
    await registry.confirm_unconfigured({(org, "sms")}, read_at)
    assert looks == 1
    await registry.confirm_unconfigured({(org, "sms")}, time.monotonic())
    assert looks == 2
