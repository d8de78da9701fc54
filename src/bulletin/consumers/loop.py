"""The consume loop: events from a source, accepted in batches, acknowledged after the commit.

For each batch (see :class:`Consumer`):

1. every item is read (:func:`~bulletin.consumers.reading.decode`): JSON, an object,
   within the size and nesting limits, and of an organization this queue serves; what is
   not is *malformed*;
2. the readable events are accepted in one transaction (``accept``, the events service: one
   call per organization and per thousand events), which commits;
3. the malformed and the refused are dead-lettered, with their reason (the broker confirms);
4. then, and only then, the whole batch is acknowledged; the workers are woken if anything
   was accepted.

A crash anywhere before step 4 leaves the batch unacknowledged, so the broker delivers it
again: events already committed are then recognised by their id (``duplicate``) and create
nothing, and refused ones are refused (and dead-lettered) again. Nothing is lost, nothing is
made twice.

When the database is unavailable, nothing is acknowledged: the loop waits (capped backoff)
and tries the same batch again. When the link to the broker breaks, the batch is dropped (the
broker delivers it again) and the source is opened anew. An unexpected error (a defect) in a
batch splits it in halves, each handled on its own, so that one event that cannot be
processed holds up no other: an event that fails alone :data:`DEFECT_TRIES` times is
dead-lettered, its error logged, rather than redelivered forever. SIGTERM (``stopping``)
lets the current batch finish, then the loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.backoff import Backoff
from bulletin.consumers.port import Batch, DeadLetter, EventSource, Item, SourceUnavailable
from bulletin.consumers.reading import Malformed, Readable, Routing, decode, one_line
from bulletin.db import is_unavailable, utcnow
from bulletin.errors import FieldError

log = structlog.get_logger("bulletin.consumers")

#: Events given to one call of ``accept`` (its statements take lists of this length).
EVENTS_PER_ACCEPT = 1000
#: Times an event that fails on its own with an unexpected error is tried before it is
#: dead-lettered.
DEFECT_TRIES = 3
#: The reason of an event that could not be processed because of a defect.
DEFECT_REASON = (
    "Bulletin could not process this event (an internal error, logged by `bulletin consume` "
    "as consume.event_failed); it may be published again once that is fixed"
)


class Outcome(Protocol):
    """What the events service says of one event (``bulletin.events.service.Outcome``)."""

    @property
    def index(self) -> int: ...
    @property
    def event_id(self) -> str | None: ...
    @property
    def status(self) -> Literal["accepted", "duplicate", "refused"]: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def errors(self) -> tuple[FieldError, ...]: ...


class Transactions(Protocol):
    """Where accepted events are written: :class:`~bulletin.db.Database` (or a test's stand-in)."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]: ...


class Accept(Protocol):
    """``bulletin.events.service.accept``: in the caller's transaction, never commits, never
    raises for a bad event; one outcome per event, by index."""

    async def __call__(
        self,
        session: AsyncSession,
        org_id: uuid.UUID,
        raw_events: Sequence[object],
        *,
        region: str | None,
        now: dt.datetime,
    ) -> Sequence[Outcome]: ...


def errors_json(errors: Sequence[FieldError]) -> list[dict[str, Any]]:
    return [{"loc": list(e.loc), "message": e.message, "type": e.type} for e in errors]


def event_id_of(item: Readable | Malformed | None, outcome: Outcome | None) -> str | None:
    if outcome is not None and outcome.event_id is not None:
        return outcome.event_id[:255]
    if isinstance(item, Readable):
        value = item.event.get("id")
        return value[:255] if isinstance(value, str) else None
    return None


@dataclass
class Tally:
    """What a batch came to, for the log line."""

    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    malformed: int = 0


class _Stopped(Exception):
    """Stopping while a batch waited for the database: it stays unacknowledged."""


async def _sleep(seconds: float, stopping: asyncio.Event) -> None:
    """Wait ``seconds``; :class:`_Stopped` if ``stopping`` is set first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()
    if stopping.is_set():
        raise _Stopped


class Consumer:
    """Reads ``source`` until stopped (see the module's docstring).

    ``on_accepted`` is called after a batch that accepted something is acknowledged (it
    wakes the workers).
    """

    def __init__(
        self,
        db: Transactions,
        source: EventSource,
        accept: Accept,
        routing: Routing,
        *,
        region: str | None,
        max_event_bytes: int,
        on_accepted: Callable[[], None] = lambda: None,
        retry_first: float = 0.2,
        reconnect_cap: float = 30.0,
    ) -> None:
        self._db = db
        self._source = source
        self._accept = accept
        self._routing = routing
        self._region = region
        self._max_bytes = max_event_bytes
        self._on_accepted = on_accepted
        self._retry_first = retry_first
        self._reconnect_cap = reconnect_cap

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; opens the source again whenever it breaks."""
        backoff = Backoff(first=min(0.5, self._reconnect_cap), cap=self._reconnect_cap)
        try:
            while not stopping.is_set():
                try:
                    await self._source.open()
                    log.info(
                        "consume.started", source=self._source.name, failures=backoff.succeeded()
                    )
                    await self._consume(stopping)
                except SourceUnavailable as exc:
                    await self._source.close()  # now: what it held goes back to the queue
                    delay = backoff.failed()
                    log.warning(
                        "consume.source_unavailable",
                        source=self._source.name,
                        error=str(exc),
                        retry_in=round(delay, 2),
                    )
                    await _sleep(delay, stopping)
                finally:
                    await self._source.close()
        except _Stopped:
            pass
        log.info("consume.stopped", source=self._source.name)

    async def _consume(self, stopping: asyncio.Event) -> None:
        async with contextlib.aclosing(self._source.batches(stopping)) as batches:
            async for batch in batches:
                await self.handle(batch, stopping)

    async def handle(self, batch: Batch, stopping: asyncio.Event) -> None:
        """Accept, commit, dead-letter, acknowledge ``batch``; :class:`_Stopped` if stopped
        while the database was away (the batch is then left unacknowledged)."""
        readings = [
            decode(item.body, self._routing, max_bytes=self._max_bytes) for item in batch.items
        ]
        outage = Backoff(first=self._retry_first, cap=max(10.0, self._retry_first))
        defects = 0
        while True:
            try:
                outcomes = await self._commit(readings)
                break
            except Exception as exc:
                if is_unavailable(exc):
                    delay = outage.failed_after(
                        exc,
                        log,
                        outage="consume.database_unavailable",
                        defect="consume.batch_failed",
                        events=len(batch),
                    )
                    await _sleep(delay, stopping)
                    continue
                log.exception("consume.batch_failed", events=len(batch))
            if len(batch) > 1:
                first, rest = batch.split()
                await self.handle(first, stopping)
                await self.handle(rest, stopping)
                return
            defects += 1
            if defects < DEFECT_TRIES:
                await _sleep(outage.failed(), stopping)
                continue
            (item,) = batch.items
            log.error(
                "consume.event_failed",
                event_id=event_id_of(readings[0], None),
                tries=defects,
                dead_letter=True,
            )
            await self._source.dead_letter([DeadLetter(item, DEFECT_REASON)])
            await self._source.ack(batch)
            return
        tally = Tally()
        letters = self._dead_letters(batch.items, readings, outcomes, tally)
        await self._source.dead_letter(letters)
        await self._source.ack(batch)
        if tally.accepted:
            self._on_accepted()
        log.debug(
            "consume.batch",
            events=len(batch),
            accepted=tally.accepted,
            duplicates=tally.duplicates,
            refused=tally.refused,
            malformed=tally.malformed,
        )

    async def _commit(self, readings: Sequence[Readable | Malformed]) -> list[Outcome | None]:
        """Accept the readable events in one transaction; their outcomes, by position."""
        outcomes: list[Outcome | None] = [None] * len(readings)
        by_org: dict[uuid.UUID, list[int]] = {}
        for position, reading in enumerate(readings):
            if isinstance(reading, Readable):
                by_org.setdefault(reading.org_id, []).append(position)
        if not by_org:
            return outcomes
        now = utcnow()
        async with self._db.transaction() as session:
            for org_id, positions in by_org.items():
                for start in range(0, len(positions), EVENTS_PER_ACCEPT):
                    chunk = positions[start : start + EVENTS_PER_ACCEPT]
                    events = [_event(readings[p]) for p in chunk]
                    results = await self._accept(
                        session, org_id, events, region=self._region, now=now
                    )
                    for outcome in results:
                        outcomes[chunk[outcome.index]] = outcome
        return outcomes

    def _dead_letters(
        self,
        items: Sequence[Item],
        readings: Sequence[Readable | Malformed],
        outcomes: Sequence[Outcome | None],
        tally: Tally,
    ) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        for item, reading, outcome in zip(items, readings, outcomes, strict=True):
            if isinstance(reading, Malformed):
                tally.malformed += 1
                reason, errors = reading.reason, reading.errors
            elif outcome is None:  # the events service answered for fewer than it was given
                tally.refused += 1
                reason, errors = "the events service gave no outcome for this event", ()
            elif outcome.status == "accepted":
                tally.accepted += 1
                continue
            elif outcome.status == "duplicate":
                tally.duplicates += 1
                continue
            else:
                tally.refused += 1
                reason, errors = outcome.reason or "refused", tuple(outcome.errors)
            reason = one_line(reason)
            log.warning(
                "consume.dead_lettered",
                event_id=event_id_of(reading, outcome),
                reason=reason,
                redelivered=item.redelivered,
            )
            letters.append(DeadLetter(item, reason, errors_json(errors)))
        return letters


def _event(reading: Readable | Malformed) -> dict[str, Any]:
    assert isinstance(reading, Readable)
    return reading.event
