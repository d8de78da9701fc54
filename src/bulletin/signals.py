"""Waking idle loops when there is work: within a process, and across processes on PostgreSQL.

Work is always found by reading the database; a wake-up is only a hint that it is worth
looking now rather than at the next poll. So a lost wake-up costs latency, never a message.

A wake-up names the kind of work (:class:`Work`): messages to resolve wake schedulers,
deliveries to claim wake dispatchers, and neither wakes the other's loops for nothing. The
kinds travel as the ``NOTIFY`` payload, with the sending process's :attr:`Hub.origin`: a
process has already woken its own loops, so it ignores its own notifications. A notification
with no payload wakes every loop.

A PostgreSQL ``NOTIFY`` takes a database-wide lock at commit, so :class:`Notifier` sends at
most one per short interval however many messages were created in it.

Both survive the database going away: a NOTIFY that cannot be sent is dropped (loops poll
anyway), and :class:`Listener` reconnects with capped backoff, then pokes every loop, since
anything announced while it was away was not heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg
import structlog
from sqlalchemy import text

from bulletin.backoff import Backoff, log_failure
from bulletin.db import Database

log = structlog.get_logger("bulletin.signals")

CHANNEL = "bulletin_work"


class Wakeup:
    """One loop's alarm clock: sleep up to a timeout, or until poked."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def poke(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Sleep until poked or ``timeout`` seconds pass; true when poked."""
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


class Work(enum.StrEnum):
    """What a wake-up announces."""

    #: Messages whose audience is to be resolved: wakes schedulers.
    MESSAGES = "messages"
    #: Deliveries that can be claimed: wakes dispatchers.
    DELIVERIES = "deliveries"


EVERY_KIND = frozenset(Work)


class Hub:
    """Every loop of this process that wants to hear about new work, and of which kinds."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[Wakeup, frozenset[Work]]] = []
        #: Names this process in its notifications, so that it can ignore its own.
        self.origin = uuid.uuid4().hex

    def subscribe(self, *kinds: Work) -> Wakeup:
        """A wake-up poked on work of ``kinds`` (of every kind when none is named)."""
        wakeup = Wakeup()
        self._subscribers.append((wakeup, frozenset(kinds) or EVERY_KIND))
        return wakeup

    def poke(self, kinds: Iterable[Work]) -> None:
        """Wake the loops that take work of any of ``kinds``."""
        wanted = frozenset(kinds)
        for wakeup, interests in self._subscribers:
            if interests & wanted:
                wakeup.poke()

    def poke_all(self) -> None:
        self.poke(EVERY_KIND)


def payload(origin: str, kinds: Iterable[Work]) -> str:
    """The NOTIFY payload: the sending process, then the kinds of work, space-separated."""
    return " ".join([origin, *sorted(kinds)])


def parse_payload(payload: str) -> tuple[str | None, frozenset[Work]]:
    """The sender and the kinds of work of a NOTIFY payload; every kind when it names none
    (an empty payload, or one from a version that knows kinds this one does not)."""
    words = payload.split()
    if not words:
        return None, EVERY_KIND
    known = {kind.value: kind for kind in Work}
    kinds = frozenset(known[word] for word in words[1:] if word in known)
    return words[0], kinds or EVERY_KIND


class Notifier:
    """Announces new work to this process's loops at once, and to other processes via NOTIFY."""

    def __init__(self, db: Database, hub: Hub, *, min_interval: float = 0.005) -> None:
        self._db = db
        self._hub = hub
        self._min_interval = min_interval
        self._pending = asyncio.Event()
        self._kinds: set[Work] = set()

    def work_available(self, *kinds: Work) -> None:
        """Wake the loops that take work of ``kinds`` (every loop when none is named), here
        at once and in other processes by the next NOTIFY."""
        wanted = kinds or tuple(EVERY_KIND)
        self._hub.poke(wanted)
        if self._db.is_postgres:
            self._kinds.update(wanted)
            self._pending.set()

    async def run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            kinds, self._kinds = self._kinds, set()
            try:
                async with self._db.engine.connect() as conn:
                    await conn.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": CHANNEL, "payload": payload(self._hub.origin, kinds)},
                    )
                    await conn.commit()
            except Exception as exc:
                # A lost wake-up costs latency, never a message; this task must not end.
                log_failure(log, exc, outage="signals.notify_failed", defect="signals.notify_error")
            await asyncio.sleep(self._min_interval)


def asyncpg_dsn(db: Database) -> str:
    return db.url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """LISTENs on PostgreSQL and pokes this process's loops; reconnects when the link drops."""

    def __init__(self, db: Database, hub: Hub) -> None:
        self._dsn = asyncpg_dsn(db)
        self._connect_timeout = db.connect_timeout
        self._hub = hub

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, kinds = parse_payload(payload)
        if origin != self._hub.origin:  # this process woke its own loops when it sent it
            self._hub.poke(kinds)

    async def run(self) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            lost = asyncio.Event()
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._heard)
                # Anything announced while we were not listening must not wait for a poll.
                self._hub.poke_all()
                log.info("signals.listening", failures=backoff.succeeded())
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5):
                            await lost.wait()
                    if not lost.is_set() and conn.is_closed():
                        break
                delay = backoff.failed()
                log.warning("signals.listen_lost", retry_in=round(delay, 2))
                await asyncio.sleep(delay)
            except Exception as exc:
                delay = backoff.failed_after(
                    exc,
                    log,
                    outage="signals.listen_failed",
                    defect="signals.listen_error",
                    outage_also=(asyncpg.PostgresError,),
                )
                await asyncio.sleep(delay)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=self._connect_timeout)
