"""The delivery engine of one process: dispatcher, scheduler and wake-up plumbing together."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database
from bulletin.recipients.links import PreferenceLinks
from bulletin.signals import Hub, Listener, Notifier, Work
from bulletin.subscriptions.dispatcher import WebhookDispatcher
from bulletin.worker.dispatcher import Dispatcher
from bulletin.worker.scheduler import Scheduler

log = structlog.get_logger("bulletin.worker")


class Engine:
    """Starts and stops the loops a worker process runs."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        registry: ChannelRegistry,
        hub: Hub,
        notifier: Notifier,
        *,
        dispatch: bool = True,
        schedule: bool = True,
    ) -> None:
        self.db = db
        self.registry = registry
        self.hub = hub
        self.notifier = notifier
        self.dispatcher = (
            Dispatcher(
                db,
                registry,
                settings,
                hub.subscribe(Work.DELIVERIES),
                links=PreferenceLinks(db, settings.base_url),
            )
            if dispatch
            else None
        )
        #: Sends the outbox of status events (webhooks) wherever deliveries are sent.
        self.webhooks = WebhookDispatcher(db, settings) if dispatch else None
        self.scheduler = (
            Scheduler(db, registry, settings, hub.subscribe(Work.MESSAGES), notifier)
            if schedule
            else None
        )
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._helpers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.registry.start()
        if self.db.is_postgres:
            listener = Listener(self.db, self.hub)
            self._helpers.append(asyncio.create_task(listener.run(), name="listener"))
        if self.dispatcher is not None:
            self._loops.append(
                asyncio.create_task(self.dispatcher.run(self._stopping), name="dispatcher")
            )
        if self.scheduler is not None:
            self._loops.append(
                asyncio.create_task(self.scheduler.run(self._stopping), name="scheduler")
            )
        if self.webhooks is not None:
            self._loops.append(
                asyncio.create_task(self.webhooks.run(self._stopping), name="webhooks")
            )
        for task in [*self._loops, *self._helpers]:
            task.add_done_callback(self._ended)
        log.info(
            "worker.started",
            dispatch=self.dispatcher is not None,
            schedule=self.scheduler is not None,
        )

    def _ended(self, task: asyncio.Task[None]) -> None:
        # The loops wait out database outages and log their own errors, so one that ends
        # before stop() is a defect worth an error line: nothing is claimed or settled now.
        if task.cancelled() or self._stopping.is_set():
            return
        log.error("worker.loop_ended", loop=task.get_name(), error=repr(task.exception()))

    async def stop(self) -> None:
        """Stop claiming, let in-flight sends finish (grace period), write their outcomes."""
        self._stopping.set()
        self.hub.poke_all()
        if self._loops:
            await asyncio.gather(*self._loops, return_exceptions=True)
        for task in self._helpers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.registry.close()
        log.info("worker.stopped")
