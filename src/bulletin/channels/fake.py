"""A provider that records what it is asked to send, in memory, for tests and experiments.

It can be told to fail (transiently, permanently, in doubt) or to stall, so the delivery
engine's handling of each case can be observed. ``calls`` counts every send per delivery id,
including ones that failed, which is what a test of "sent once" must look at; ``sent_at``
holds when each send began, for tests of "not before its time".
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable

from bulletin.channels.base import Accepted, OutboundMessage, Provider
from bulletin.db import utcnow


class RecordingProvider(Provider):
    def __init__(
        self,
        *,
        name: str = "recording",
        deduplicates: bool = False,
        behaviour: Callable[[OutboundMessage], None] | None = None,
    ) -> None:
        self.name = name
        self.deduplicates = deduplicates
        self.behaviour = behaviour
        self.calls: Counter[int] = Counter()
        self.accepted: list[OutboundMessage] = []
        self.stall: asyncio.Event | None = None
        self.started: asyncio.Event = asyncio.Event()
        self.sent_at: list[dt.datetime] = []

    async def send(self, message: OutboundMessage) -> Accepted:
        self.calls[message.delivery_id] += 1
        self.sent_at.append(utcnow())
        self.started.set()
        if self.stall is not None:
            await self.stall.wait()
        if self.behaviour is not None:
            self.behaviour(message)
        self.accepted.append(message)
        return Accepted(f"{self.name}-{message.delivery_id}-{message.attempt}")
