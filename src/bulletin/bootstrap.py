"""The one place where Bulletin's parts are wired together for a process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bulletin.channels.registry import ChannelRegistry
from bulletin.channels.sandbox import SandboxProvider
from bulletin.config import Settings
from bulletin.db import Database
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


def default_registry(db: Database) -> ChannelRegistry:
    """Every channel goes to the sandbox until a real provider is configured."""
    return ChannelRegistry(default=SandboxProvider(db))


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
    registry = registry or default_registry(db)
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
        if owns_db:
            await db.dispose()
