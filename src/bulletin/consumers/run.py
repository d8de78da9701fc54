"""``bulletin consume`` once its database is ready: the RabbitMQ source, the consume loop, and
the wake-ups that tell the workers there are new messages.

The workers are woken as the API wakes them (:class:`~bulletin.signals.Notifier`): on
PostgreSQL by a ``NOTIFY`` that every worker process hears; on SQLite, where no signal
crosses processes, a worker finds the new messages at its next poll
(``BULLETIN_IDLE_POLL_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

import structlog

from bulletin.backoff import Backoff
from bulletin.config import Settings
from bulletin.consumers.loop import Consumer
from bulletin.consumers.port import EventSource
from bulletin.consumers.rabbitmq import RabbitSource
from bulletin.consumers.reading import Routing
from bulletin.db import Database, is_unavailable
from bulletin.events import service as events
from bulletin.orgs import service as orgs
from bulletin.signals import Hub, Notifier

log = structlog.get_logger("bulletin.consumers")


class NotConfigured(Exception):
    """The settings do not say whose events the queue carries; the message says what to set."""


def routing(settings: Settings) -> Routing:
    """Whose events the queue carries, from the settings; :class:`NotConfigured` if unsaid."""
    if settings.consume_org is not None:
        return Routing.one(settings.consume_org)
    if settings.consume_orgs is not None:
        return Routing.several(settings.consume_org_ids)
    raise NotConfigured(
        "Name the organization whose events the queue carries: BULLETIN_CONSUME_ORG=<id> "
        "(one organization per queue), or BULLETIN_CONSUME_ORGS=<id>,<id> (each event names "
        "its own in an 'organization' key). `bulletin orgs list` shows the ids."
    )


def rabbit_source(settings: Settings) -> RabbitSource:
    return RabbitSource(
        settings.amqp_url.get_secret_value(),
        settings.consume_queue,
        prefetch=settings.consume_prefetch,
        batch_wait=settings.consume_batch_ms / 1000,
    )


async def check_organizations(
    db: Database, org_ids: Sequence[uuid.UUID], stopping: asyncio.Event
) -> bool:
    """:class:`~bulletin.errors.NotFound` unless every organization exists; waits while the
    database is unavailable. False if ``stopping`` was set first."""
    backoff = Backoff(first=0.5, cap=5.0)
    while not stopping.is_set():
        try:
            async with db.read() as session:
                for org_id in org_ids:
                    await orgs.get_organization(session, org_id)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            delay = backoff.failed_after(
                exc, log, outage="consume.database_unavailable", defect="consume.start_failed"
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stopping.wait()
        else:
            return True
    return False


async def consume(
    settings: Settings,
    db: Database,
    stopping: asyncio.Event,
    *,
    source: EventSource | None = None,
) -> None:
    """Consume until ``stopping`` is set. The database must be reachable and migrated."""
    route = routing(settings)
    if not await check_organizations(db, sorted(route.org_ids), stopping):
        return
    hub = Hub()
    notifier = Notifier(db, hub)
    notify = asyncio.create_task(notifier.run(), name="notifier")
    consumer = Consumer(
        db,
        source or rabbit_source(settings),
        events.accept,
        route,
        region=settings.default_phone_region,
        max_event_bytes=settings.max_body_bytes,
        on_accepted=notifier.work_available,
    )
    try:
        await consumer.run(stopping)
    finally:
        notify.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await notify
