"""Waking idle loops when there is work: within a process, and across processes on PostgreSQL.

Work is always found by reading the database; a wake-up is only a hint that it is worth
looking now rather than at the next poll. So a lost wake-up costs latency, never a message.

A PostgreSQL ``NOTIFY`` takes a database-wide lock at commit, so :class:`Notifier` sends at
most one per short interval however many messages were created in it.

Both survive the database going away: a NOTIFY that cannot be sent is dropped (loops poll
anyway), and :class:`Listener` reconnects with capped backoff, then pokes every loop, since
anything announced while it was away was not heard.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog
from sqlalchemy import text

from bulletin.backoff import Backoff
from bulletin.db import Database, describe, is_unavailable

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


class Hub:
    """Every loop of this process that wants to hear about new work."""

    def __init__(self) -> None:
        self._subscribers: list[Wakeup] = []

    def subscribe(self) -> Wakeup:
        wakeup = Wakeup()
        self._subscribers.append(wakeup)
        return wakeup

    def poke_all(self) -> None:
        for wakeup in self._subscribers:
            wakeup.poke()


class Notifier:
    """Announces new work to this process's loops at once, and to other processes via NOTIFY."""

    def __init__(self, db: Database, hub: Hub, *, min_interval: float = 0.005) -> None:
        self._db = db
        self._hub = hub
        self._min_interval = min_interval
        self._pending = asyncio.Event()

    def work_available(self) -> None:
        self._hub.poke_all()
        if self._db.is_postgres:
            self._pending.set()

    async def run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                async with self._db.engine.connect() as conn:
                    await conn.execute(text(f"NOTIFY {CHANNEL}"))
                    await conn.commit()
            except Exception as exc:
                # A lost wake-up costs latency, never a message; this task must not end.
                if is_unavailable(exc):
                    log.warning("signals.notify_failed", error=describe(exc))
                else:
                    log.exception("signals.notify_error")
            await asyncio.sleep(self._min_interval)


def asyncpg_dsn(db: Database) -> str:
    return db.url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """LISTENs on PostgreSQL and pokes this process's loops; reconnects when the link drops."""

    def __init__(self, db: Database, hub: Hub) -> None:
        self._dsn = asyncpg_dsn(db)
        self._connect_timeout = db.connect_timeout
        self._hub = hub

    async def run(self) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            lost = asyncio.Event()
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda *_args: self._hub.poke_all())
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
                delay = backoff.failed()
                if is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError):
                    log.warning(
                        "signals.listen_failed", error=describe(exc), retry_in=round(delay, 2)
                    )
                else:
                    log.exception("signals.listen_error", retry_in=round(delay, 2))
                await asyncio.sleep(delay)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=self._connect_timeout)
