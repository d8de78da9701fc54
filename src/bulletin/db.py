"""The database: declarative base, column types shared by every domain, and the engine wrapper.

:class:`Database` hands out two kinds of sessions. :meth:`Database.transaction` is for writes:
it commits when the block ends and, on SQLite, begins ``IMMEDIATE`` behind an in-process lock so
writers queue instead of failing with ``database is locked``. :meth:`Database.read` never
writes. Both are used by entry points (endpoints, worker loops, CLI commands); services and
repositories only receive the session.

The database may go away (a restart, a failover, a network cut) and come back. Opening a
connection and waiting for a pooled one are bounded, so nothing hangs while it is away;
:func:`is_unavailable` tells such an outage from a real error (a broken statement, an integrity
violation, a bug): the API answers the first with 503 and worker loops wait it out, while the
second stays what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from bulletin.config import normalize_database_url

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every ORM table; constraint names are deterministic for migrations."""

    metadata = MetaData(naming_convention=NAMING)


#: Integer primary keys: BIGINT identity on PostgreSQL, the rowid alias on SQLite.
BigId = BigInteger().with_variant(Integer, "sqlite")
#: JSON documents: JSONB on PostgreSQL, JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An instant in time. Written in UTC, always read back timezone-aware.

    PostgreSQL stores ``timestamptz``. SQLite has no such type, so the value is stored as naive
    UTC text in a fixed-width format, which keeps comparisons in SQL correct.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _install_sqlite_behaviour(engine: AsyncEngine, synchronous: str) -> None:
    """WAL, durable commits, foreign keys, and BEGIN IMMEDIATE for writing transactions."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would BEGIN DEFERRED late).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get("bulletin_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


#: A pooled PostgreSQL connection unused for longer than this is pinged before it is lent.
PING_AFTER_IDLE_SECONDS = 2.0


def _install_liveness_check(engine: AsyncEngine) -> None:
    """Replace pooled connections that died while the server was away, so that requests
    succeed again as soon as it is back.

    A connection the server closed is known without a round trip (the driver saw the socket
    close). One that sat unused for :data:`PING_AFTER_IDLE_SECONDS` is also pinged, for a
    server gone without closing anything. A connection in steady use is lent as it is: a
    ping before every transaction (``pool_pre_ping``) cost a round trip and about 6 % of an
    API process's CPU.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise sa_exc.DisconnectionError("the server closed this connection")
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
            try:
                dbapi_connection.ping()
            except Exception as exc:  # the pool then opens a new connection in its place
                raise sa_exc.DisconnectionError("the connection failed a ping") from exc


class Database:
    """Engines and session factories for one database URL."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        sqlite_synchronous: str = "FULL",
        echo: bool = False,
        connect_timeout: float = 5.0,
        pool_timeout: float = 5.0,
    ) -> None:
        self.url = make_url(normalize_database_url(url))
        self.dialect = self.url.get_backend_name()
        if self.dialect not in {"sqlite", "postgresql"}:
            raise ValueError(f"unsupported database {self.dialect!r}: use SQLite or PostgreSQL")
        #: Longest wait to open one connection (PostgreSQL); also used by the LISTEN link.
        self.connect_timeout = connect_timeout
        kwargs: dict[str, Any] = {
            "echo": echo,
            "pool_size": pool_size,
            "pool_timeout": pool_timeout,
        }
        if self.is_postgres:
            kwargs.update(max_overflow=pool_size, connect_args={"timeout": connect_timeout})
        self.engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_behaviour(self.engine, sqlite_synchronous)
        else:
            _install_liveness_check(self.engine)
        self._writes = async_sessionmaker(self.engine, expire_on_commit=False)
        self._reads = async_sessionmaker(
            self.engine.execution_options(bulletin_readonly=True), expire_on_commit=False
        )
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits when the block ends, or rolls back on error."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self._writes() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reading only; nothing it does is committed."""
        async with self._reads() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


#: SQLSTATE classes that mean the server cannot be used now, not that a statement is wrong:
#: connection exception (08), insufficient resources (53: too many connections, disk full) and
#: operator intervention (57P: shutting down, restarting, "the database system is starting up").
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")
#: SQLite's equivalents: another process holds the file, or the file cannot be read or written.
_UNAVAILABLE_SQLITE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
)


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached or used right now.

    That is: a connection refused, reset or timed out (``OSError``, ``TimeoutError``); no free
    pooled connection in time; a connection SQLAlchemy found dead (``connection_invalidated``);
    and server states that pass (see ``_UNAVAILABLE_SQLSTATES``). Such an error ends when the
    database is back, so it is worth retrying. Integrity errors, statements the server rejects,
    and driver misuse (an asyncpg ``InterfaceError`` on a live connection is a bug) are not.
    """
    if isinstance(exc, sa_exc.TimeoutError | OSError | asyncpg.ConnectionDoesNotExistError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc.orig, OSError):
            return True
        sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
        if sqlite_name is not None:
            return str(sqlite_name).startswith(_UNAVAILABLE_SQLITE)
        if isinstance(exc, sa_exc.OperationalError):
            return True
        return _unavailable_sqlstate(exc.orig)
    return _unavailable_sqlstate(exc)


def _unavailable_sqlstate(exc: object) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def describe(exc: BaseException) -> str:
    """One line about a database error, for logs: the driver's message, never the statement
    or its parameters (which may hold personal data)."""
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    message = str(cause).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def upsert_statement(session: AsyncSession, table: Any) -> Any:
    """An INSERT that supports ``on_conflict_do_*`` on whichever database the session uses."""
    if dialect_name(session) == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
