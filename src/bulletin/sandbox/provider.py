"""The sandbox provider: accepts everything and records it in the database, sending nothing.

It is what every channel uses until a real provider is configured, so Bulletin can be tried
with no credentials. It behaves like a well-run provider: it deduplicates on the delivery id
(a repeat is counted in ``attempts``, not delivered again), and it commits records in groups
so that a busy worker is not slowed down by one transaction per message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import structlog
from sqlalchemy.exc import SQLAlchemyError

from bulletin.channels.base import Accepted, OutboundMessage, Provider
from bulletin.db import Database, utcnow
from bulletin.errors import InDoubtSendError
from bulletin.sandbox import repository

log = structlog.get_logger("bulletin.sandbox")

_Pending = tuple[OutboundMessage, "asyncio.Future[Accepted]"]


class SandboxProvider(Provider):
    name = "sandbox"
    deduplicates = True

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sandbox-recorder")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, future in self._queue:
            if not future.done():
                future.set_exception(InDoubtSendError("the sandbox closed before recording"))
        self._queue.clear()

    async def send(self, message: OutboundMessage) -> Accepted:
        await self.start()
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._queue.append((message, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            ids = await self._record([message for message, _ in batch])
        except (SQLAlchemyError, OSError) as exc:
            # The commit may or may not have happened: that is exactly "in doubt". Because the
            # sandbox deduplicates, the engine may safely try again.
            log.warning("sandbox.record_failed", error=str(exc), batch=len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(InDoubtSendError(f"sandbox could not record: {exc}"))
            return
        for message, future in batch:
            if not future.done():
                future.set_result(Accepted(f"sandbox-{ids[message.delivery_id]}"))

    async def _record(self, messages: list[OutboundMessage]) -> dict[int, int]:
        repeats = Counter(m.delivery_id for m in messages)
        first = {m.delivery_id: m for m in reversed(messages)}
        now = utcnow()
        rows = [
            {
                "org_id": m.org_id,
                "delivery_id": m.delivery_id,
                "message_id": m.message_id,
                "recipient_external_id": m.recipient_external_id,
                "channel": m.channel,
                "address": m.address,
                "title": m.title,
                "body": m.body,
                "attempts": repeats[m.delivery_id],
                "preference_url": m.preferences_url,
                "created_at": now,
            }
            for m in first.values()
        ]
        async with self._db.transaction() as session:
            return await repository.record(session, rows)
