"""The one place where Bulletin's parts are wired together for a process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bulletin.channels.factory import ProviderFactory
from bulletin.channels.registry import ChannelRegistry
from bulletin.channels.sandbox import SandboxProvider
from bulletin.config import Settings
from bulletin.db import Database
from bulletin.providers.service import secret_box, stored_loader
from bulletin.worker.runtime import Engine
from bulletin.worker.signals import Hub, Notifier


@dataclass
class Services:
    """What a running process holds: settings, database, wake-up plumbing, the engine."""

    settings: Settings
    db: Database
    hub: Hub
    notifier: Notifier
    registry: ChannelRegistry
    engine: Engine | None


def open_database(settings: Settings) -> Database:
    return Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
    )


def default_registry(db: Database, settings: Settings, factory: ProviderFactory) -> ChannelRegistry:
    """Each organization's own providers, then the environment's, then the sandbox."""
    env = settings.provider_configs()
    return ChannelRegistry(
        default=SandboxProvider(db),
        by_channel={channel: factory.build(config) for channel, config in env.items()},
        configs=env,
        stored=stored_loader(db, secret_box(settings)),
        build=factory.build,
        refresh_seconds=settings.channel_refresh_seconds,
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    dispatch: bool,
    schedule: bool,
    registry: ChannelRegistry | None = None,
    db: Database | None = None,
) -> AsyncIterator[Services]:
    """Open the database and, if asked, run the delivery engine until the block ends."""
    owns_db = db is None
    db = db or open_database(settings)
    hub = Hub()
    notifier = Notifier(db, hub)
    factory = ProviderFactory(settings)
    registry = registry or default_registry(db, settings, factory)
    notify_task = asyncio.create_task(notifier.run(), name="notifier")
    engine = None
    if dispatch or schedule:
        engine = Engine(db, settings, registry, hub, notifier, dispatch=dispatch, schedule=schedule)
        await engine.start()
    try:
        yield Services(settings, db, hub, notifier, registry, engine)
    finally:
        if engine is not None:
            await engine.stop()
        notify_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await notify_task
        await factory.close()
        if owns_db:
            await db.dispose()
