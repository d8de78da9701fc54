"""Background work of the orgs domain: writing when API keys were last used."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from bulletin.backoff import log_failure
from bulletin.db import Database
from bulletin.orgs import service
from bulletin.orgs.auth import KeyCache

log = structlog.get_logger("bulletin.orgs")

#: How often a process writes the key uses it noted: ``last_used_at`` is this late at most.
KEY_USES_FLUSH_SECONDS = 60.0


async def flush_key_uses(db: Database, keys: KeyCache) -> int:
    """Write the uses ``keys`` noted since the last flush, in one transaction; how many keys.

    If the database cannot take them now, they are kept for the next flush.
    """
    uses = keys.take_uses()
    if not uses:
        return 0
    try:
        async with db.transaction() as session:
            await service.record_key_uses(session, uses)
    except BaseException:
        keys.give_back(uses)
        raise
    return len(uses)


def _flush_failed(exc: Exception) -> None:
    # The uses are kept for the next flush either way.
    log_failure(log, exc, outage="orgs.key_uses_flush_failed", defect="orgs.key_uses_flush_failed")


@contextlib.asynccontextmanager
async def recording_key_uses(
    db: Database, keys: KeyCache, every: float = KEY_USES_FLUSH_SECONDS
) -> AsyncIterator[None]:
    """Flush the key uses of this process every ``every`` seconds while the block runs, and
    once more as it ends, so that a clean shutdown loses none."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await flush_key_uses(db, keys)
            except Exception as exc:  # the database is away: try again next time
                _flush_failed(exc)

    task = asyncio.create_task(loop(), name="key-uses")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await flush_key_uses(db, keys)
        except Exception as exc:
            _flush_failed(exc)
