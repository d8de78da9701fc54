"""The one place where Bulletin's parts are wired together for a process, and how it starts.

A process may start before its database is ready (both started together by an orchestrator,
or the database restarting). It does not fail and does not race: :func:`running` opens
everything that needs no database at once, then *starts*: it waits until the database answers
and is migrated (or migrates it), runs the caller's first-start step, and starts the delivery
engine. :class:`~bulletin.services.Startup` says how far that has got; the API reports it on
``/ready`` and answers 503 everywhere else until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog

from bulletin import migrate
from bulletin.backoff import Backoff
from bulletin.channels.configs import from_settings
from bulletin.channels.factory import ProviderFactory
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, describe, is_unavailable
from bulletin.providers.service import secret_box, stored_loader
from bulletin.sandbox.provider import SandboxProvider
from bulletin.services import Phase, Services, Startup
from bulletin.signals import Hub, Notifier
from bulletin.worker.runtime import Engine

log = structlog.get_logger("bulletin.startup")

#: A step run once the database is reachable and migrated, before the engine starts (the
#: CLI's "create the default organization and print its key"). It may run again if the
#: database goes away while it runs, so it must be safe to repeat.
Prepare = Callable[[Database], Awaitable[None]]


@dataclass
class ProcessServices(Services):
    """The services :func:`running` builds, with the engine's own type, for the callers that
    drive its loops (the command line, tests)."""

    engine: Engine | None


def open_database(settings: Settings) -> Database:
    return Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
        connect_timeout=settings.db_connect_timeout_seconds,
        pool_timeout=settings.db_pool_timeout_seconds,
    )


async def wait_for_database(
    db: Database,
    *,
    migrate_it: bool,
    prepare: Prepare | None = None,
    startup: Startup | None = None,
) -> None:
    """Return once the database answers and is migrated, and ``prepare`` has run.

    With ``migrate_it`` this process applies the migrations; without, it waits for someone
    else to (``bulletin migrate``). Only outages are waited out (see
    :func:`~bulletin.db.is_unavailable`); any other error is raised.
    """
    startup = startup or Startup()
    backoff = Backoff(first=0.5, cap=5.0)
    while not await _try_start(db, migrate_it, prepare, startup):
        delay = backoff.failed()
        event = (
            "startup.waiting_for_migrations"
            if startup.phase is Phase.WAITING_FOR_MIGRATIONS
            else "startup.waiting_for_database"
        )
        log.warning(event, detail=startup.detail, retry_in=round(delay, 2))
        await asyncio.sleep(delay)


async def _try_start(
    db: Database, migrate_it: bool, prepare: Prepare | None, startup: Startup
) -> bool:
    """One try of :func:`wait_for_database`; false when it is worth trying again."""
    try:
        if migrate_it:
            await migrate.upgrade(db)
        elif not await migrate.is_current(db):
            startup.enter(Phase.WAITING_FOR_MIGRATIONS, "run 'bulletin migrate'")
            return False
        if prepare is not None:
            await prepare(db)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        startup.enter(Phase.WAITING_FOR_DATABASE, describe(exc))
        return False
    return True


async def _start(services: Services, *, migrate_it: bool, prepare: Prepare | None) -> None:
    startup = services.startup
    try:
        await wait_for_database(
            services.db, migrate_it=migrate_it, prepare=prepare, startup=startup
        )
        startup.enter(Phase.STARTING)
        if services.engine is not None:
            await services.engine.start()
    except Exception as exc:
        startup.enter(Phase.FAILED, f"{type(exc).__name__}: {exc}")
        log.exception("startup.failed")
        raise
    startup.enter(Phase.READY)
    log.info("startup.ready")


def default_registry(db: Database, settings: Settings, factory: ProviderFactory) -> ChannelRegistry:
    """Each organization's own providers, then the environment's, then the sandbox."""
    env = from_settings(settings)
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
    migrate_it: bool = False,
    prepare: Prepare | None = None,
    wait: bool = True,
) -> AsyncIterator[ProcessServices]:
    """Open the database, start (see the module's docstring), and run until the block ends.

    With ``wait`` the block is entered once the process is ready (and start-up errors are
    raised here); without, it is entered at once while the start goes on in the background,
    and ``services.startup`` tells how far it got. The API uses the latter, so that it listens
    and answers ``/health`` and ``/ready`` while the database is not there yet.
    """
    owns_db = db is None
    db = db or open_database(settings)
    hub = Hub()
    notifier = Notifier(db, hub)
    factory = ProviderFactory(settings)
    registry = registry or default_registry(db, settings, factory)
    engine = None
    if dispatch or schedule:
        engine = Engine(db, settings, registry, hub, notifier, dispatch=dispatch, schedule=schedule)
    services = ProcessServices(settings, db, hub, notifier, registry, engine)
    notify_task = asyncio.create_task(notifier.run(), name="notifier")
    start = asyncio.create_task(
        _start(services, migrate_it=migrate_it, prepare=prepare), name="startup"
    )
    try:
        if wait:
            await start
        yield services
    finally:
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        if engine is not None:
            await engine.stop()
        notify_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await notify_task
        await factory.close()
        if owns_db:
            await db.dispose()
