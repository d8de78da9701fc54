"""What a running process holds, and how far it has got in starting.

:class:`Services` is handed to every request and every loop; :class:`Startup` tells the API
whether the process may answer yet. Both are built and driven by :mod:`bulletin.bootstrap`,
the one place that knows the concrete parts; this module names only what their users see, so
that the HTTP kit and the domains can take them without depending on the composition root.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Protocol

from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database
from bulletin.signals import Hub, Notifier


class Phase(enum.StrEnum):
    """Where a process is in its start."""

    WAITING_FOR_DATABASE = "waiting for the database"
    WAITING_FOR_MIGRATIONS = "waiting for migrations"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class StartupFailed(Exception):
    """The process could not start for a reason that waiting does not cure."""


class Startup:
    """How far the process has got in starting; set by :func:`bulletin.bootstrap.running`,
    read by the API."""

    def __init__(self) -> None:
        self.phase = Phase.WAITING_FOR_DATABASE
        #: Why it is waiting, or why it failed, in words for an operator.
        self.detail: str | None = None
        self._settled = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def enter(self, phase: Phase, detail: str | None = None) -> None:
        self.phase = phase
        self.detail = detail
        if phase in (Phase.READY, Phase.FAILED):
            self._settled.set()

    async def wait(self) -> None:
        """Until the process is ready; raises :class:`StartupFailed` if it never will be."""
        await self._settled.wait()
        if self.phase is Phase.FAILED:
            raise StartupFailed(self.detail or "start-up failed")


class Engine(Protocol):
    """The delivery engine as the rest of the process sees it: something that starts and
    stops (the loops themselves are :class:`bulletin.worker.runtime.Engine`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Services:
    """What a running process holds: settings, database, wake-up plumbing, the engine
    (``None`` in a process that neither dispatches nor schedules)."""

    settings: Settings
    db: Database
    hub: Hub
    notifier: Notifier
    registry: ChannelRegistry
    engine: Engine | None
    startup: Startup = field(default_factory=Startup)
