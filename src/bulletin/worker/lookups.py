"""What the dispatcher reads about the deliveries it claims, besides the deliveries themselves.

Each lookup batches its reads so that dispatching costs a query per claimed batch (or per
moment, for cancel checks), never one per delivery:

* :class:`MessageCache`: the messages of a batch, compiled once and kept, since their content
  never changes after creation;
* :class:`TextLinkSetting`: which organizations of a batch want the preference link in texts,
  kept for a few seconds;
* :class:`CancelChecks`: whether messages were cancelled while their deliveries, claimed ahead
  of time, waited to be due.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

import structlog

from bulletin.db import Database
from bulletin.messages import repository as message_rows
from bulletin.messages.templates import MessageTemplates, TemplateFailed
from bulletin.orgs import repository as org_rows
from bulletin.worker.policy import MessageFacts

log = structlog.get_logger("bulletin.worker")


class CancelChecks:
    """Whether messages were cancelled, for deliveries claimed ahead of their time that are
    about to start: deliveries of one message come due together, so the checks of one moment
    are made as one query."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._asked: set[uuid.UUID] = set()
        self._answer: asyncio.Future[set[uuid.UUID]] | None = None

    async def cancelled(self, message_id: uuid.UUID) -> bool:
        if self._answer is None:
            self._answer = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._ask)
        answer = self._answer
        self._asked.add(message_id)
        return message_id in await asyncio.shield(answer)

    def _ask(self) -> None:
        asked, self._asked = self._asked, set()
        answer, self._answer = self._answer, None
        assert answer is not None
        task = asyncio.ensure_future(self._query(asked))
        task.add_done_callback(lambda t: _settle(answer, t))

    async def _query(self, ids: set[uuid.UUID]) -> set[uuid.UUID]:
        async with self._db.read() as session:
            return await message_rows.cancelled_among(session, ids)


def _settle(future: asyncio.Future[set[uuid.UUID]], task: asyncio.Task[set[uuid.UUID]]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


class MessageCache:
    """Message content by id. Content never changes after creation, so caching is safe."""

    def __init__(self, db: Database, size: int = 10_000) -> None:
        self._db = db
        self._size = size
        self._items: OrderedDict[uuid.UUID, MessageFacts] = OrderedDict()

    async def get_many(self, ids: set[uuid.UUID]) -> dict[uuid.UUID, MessageFacts]:
        missing = [i for i in ids if i not in self._items]
        if missing:
            async with self._db.read() as session:
                for m in await message_rows.by_ids(session, missing):
                    try:
                        compiled = MessageTemplates(m.title, m.body, m.overrides, m.data)
                    except TemplateFailed as exc:
                        # Checked at creation, so only a message stored by an older version.
                        log.exception(
                            "worker.template_invalid", message_id=str(m.id), error=str(exc)
                        )
                        compiled = None
                    self._items[m.id] = MessageFacts(
                        id=m.id,
                        org_id=m.org_id,
                        title=m.title,
                        body=m.body,
                        channels=tuple(m.channels),
                        routing=m.routing,
                        category=m.category,
                        urgent=m.urgent,
                        templates=compiled,
                    )
        found = {}
        for i in ids:
            self._items.move_to_end(i)
            found[i] = self._items[i]
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return found


class TextLinkSetting:
    """Which organizations want the preference link at the end of SMS and WhatsApp texts.

    Read for the organizations of a claimed batch and kept for ``seconds``, so that sending
    costs no query per message; a change of the setting applies within that time.
    """

    def __init__(
        self, db: Database, seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = db
        self._seconds = seconds
        self._clock = clock
        self._known: dict[uuid.UUID, tuple[float, bool]] = {}

    async def refresh(self, org_ids: set[uuid.UUID]) -> None:
        """Read the setting of those of ``org_ids`` not read in the last ``seconds``."""
        now = self._clock()
        stale = {o for o in org_ids if o not in self._known or self._known[o][0] <= now}
        if not stale:
            return
        async with self._db.read() as session:
            enabled = await org_rows.with_text_links(session, stale)
        if len(self._known) > 10_000:
            self._known.clear()  # that many organizations in one batch window is rare
        for org_id in stale:
            self._known[org_id] = (now + self._seconds, org_id in enabled)

    def enabled(self, org_id: uuid.UUID) -> bool:
        known = self._known.get(org_id)
        return known is not None and known[1]
