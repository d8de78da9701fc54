"""Pooled PostgreSQL connections that the server dropped are replaced before they are lent,
so that the first transaction after a restart of the server (or a killed backend) succeeds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from bulletin import db as db_module
from bulletin.db import Database
from conftest import _pg_admin_dsn

pytestmark = pytest.mark.postgres


async def _backend_pids(database: Database, count: int) -> set[int]:
    """Open ``count`` pooled connections at once; the server pids behind them."""

    async def pid() -> int:
        async with database.read() as session:
            value = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await asyncio.sleep(0.05)  # hold it, so that the others open their own
            return int(value)

    return set(await asyncio.gather(*(pid() for _ in range(count))))


async def _terminate(pids: set[int]) -> None:
    admin = await asyncpg.connect(_pg_admin_dsn())
    try:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


@pytest.fixture
def pg_url(make_database_url: Callable[[str], str]) -> str:
    return make_database_url("postgresql")


async def test_connections_the_server_closed_are_replaced(pg_url: str) -> None:
    database = Database(pg_url, pool_size=3)
    try:
        pids = await _backend_pids(database, 3)
        await _terminate(pids)
        await asyncio.sleep(0.2)  # the driver sees the sockets close
        for _ in range(3):
            async with database.read() as session:
                assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        assert not (await _backend_pids(database, 3)) & pids
    finally:
        await database.dispose()


async def test_only_a_connection_idle_for_a_while_is_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinged: list[bool] = []
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        pinged.append(True)
        ping(self)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.3)
    database = Database(pg_url, pool_size=1)
    try:
        for _ in range(3):  # in steady use: never pinged
            async with database.read() as session:
                await session.execute(text("SELECT 1"))
        assert pinged == []
        await asyncio.sleep(0.5)
        async with database.read() as session:
            await session.execute(text("SELECT 1"))
        assert pinged == [True]
    finally:
        await database.dispose()
