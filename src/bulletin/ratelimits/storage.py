"""A ``limits`` storage that holds across the processes of one PostgreSQL installation.

Every process spends from *shares* of each window's quota that it reserved in the database.
A reservation is one statement (see :func:`~bulletin.ratelimits.repository.reserve`): it adds
up to one share to the window's total, never more than the sliding-window count allows, and
answers what it granted. The process then admits requests from its share without asking the
database, and reserves again only when the share is spent. So the database sees one round trip
per share and process, not one per request.

Accuracy: the processes together never admit more than the limit. They may refuse a little
early: units reserved but not spent when a window ends count as used, at most one share
(``limit / SHARES``, at least 1) per process and window. After a refused reservation a process
asks again no sooner than a twentieth of the window later, so a client hammering a spent
limit costs the database a bounded number of statements per window, not one per request.

Windows are fixed (aligned to the epoch) and counted with the sliding-window-counter weighting
of ``limits``: the previous window's total counts in proportion to the time left of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits.aio.storage import Storage
from limits.aio.storage.base import SlidingWindowCounterSupport
from sqlalchemy.exc import SQLAlchemyError

from bulletin.db import Database
from bulletin.ratelimits import repository

#: A window's quota is reserved in this many shares (each at least one unit).
SHARES = 20
#: How often a process deletes windows that no longer count.
_PURGE_EVERY_SECONDS = 60.0
#: Above this many keys held in memory, those of windows that no longer count are dropped.
_MAX_LOCAL_KEYS = 10_000


@dataclass
class _Share:
    """What this process knows of one key's current window."""

    bucket: int
    expiry: int
    granted: int = 0
    spent: int = 0
    total: int = 0
    previous: int = 0
    ask_again_at: float = 0.0


def share_size(limit: int) -> int:
    """Units one reservation asks for."""
    return max(1, limit // SHARES)


class SharedWindowStorage(Storage, SlidingWindowCounterSupport):
    """Sliding-window-counter storage on PostgreSQL, spent locally in shares (see the module)."""

    STORAGE_SCHEME = ["bulletin+postgresql"]

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._db = db
        self._clock = clock
        self._shares: dict[str, _Share] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._purged_at = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (SQLAlchemyError, OSError)

    def _current(self, key: str, expiry: int, now: float) -> _Share:
        bucket = int(now // expiry)
        share = self._shares.get(key)
        if share is not None and share.bucket == bucket:
            return share
        # The window this process last reserved in is the previous one: its total as last
        # seen is a lower bound, the next reservation reads the exact one.
        previous = share.total if share is not None and share.bucket == bucket - 1 else 0
        if len(self._shares) >= _MAX_LOCAL_KEYS:
            self._forget_old(now)
        fresh = _Share(bucket=bucket, expiry=expiry, previous=previous)
        self._shares[key] = fresh
        return fresh

    def _forget_old(self, now: float) -> None:
        for key, share in list(self._shares.items()):
            if share.bucket < int(now // share.expiry) - 1:
                del self._shares[key]
                self._locks.pop(key, None)

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        share = self._current(key, expiry, now)
        if share.granted - share.spent >= amount:
            share.spent += amount
            return True
        if now < share.ask_again_at:
            return False
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            share = self._current(key, expiry, now)
            if share.granted - share.spent >= amount:  # another request reserved meanwhile
                share.spent += amount
                return True
            if now < share.ask_again_at:
                return False
            await self._reserve(key, share, limit, expiry, amount, now)
            if share.granted - share.spent >= amount:
                share.spent += amount
                return True
            share.ask_again_at = now + expiry / SHARES
            return False

    async def _reserve(
        self, key: str, share: _Share, limit: int, expiry: int, amount: int, now: float
    ) -> None:
        elapsed = now / expiry - share.bucket
        expires_at = dt.datetime.fromtimestamp((share.bucket + 2) * expiry, dt.UTC)
        wall = dt.datetime.fromtimestamp(now, dt.UTC)
        async with self._db.transaction() as session:
            got = await repository.reserve(
                session,
                key=key,
                bucket=share.bucket,
                want=max(amount, share_size(limit)),
                limit=limit,
                weight=1.0 - elapsed,
                expires_at=expires_at,
            )
            if now - self._purged_at >= _PURGE_EVERY_SECONDS:
                self._purged_at = now
                await repository.forget_windows(session, None, wall)
        share.granted += got.granted
        share.total = got.reserved
        share.previous = got.previous

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        # From what this process knows: no round trip (it answers the RateLimit fields).
        now = self._clock()
        share = self._current(key, expiry, now)
        into = now - share.bucket * expiry
        previous_ttl = float(expiry) - into if share.previous else 0.0
        current_ttl = 2.0 * expiry - into
        return share.previous, previous_ttl, max(share.total, share.spent), current_ttl

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        await self.clear(key)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("only the sliding-window-counter strategy is supported")

    async def get(self, key: str) -> int:
        share = self._shares.get(key)
        return share.total if share is not None else 0

    async def get_expiry(self, key: str) -> float:
        share = self._shares.get(key)
        if share is None:
            return self._clock()
        return float((share.bucket + 1) * share.expiry)

    async def check(self) -> bool:
        try:
            async with self._db.read() as session:
                await repository.window_total(session, "", 0)
        except (SQLAlchemyError, OSError):
            return False
        return True

    async def reset(self) -> int | None:
        count = len(self._shares)
        self._shares.clear()
        return count

    async def clear(self, key: str) -> None:
        self._shares.pop(key, None)
        async with self._db.transaction() as session:
            await repository.forget_windows(session, key, dt.datetime.now(dt.UTC))
