"""Bring a database's schema to the newest revision, and tell whether it is there.

Migrations are the only way Bulletin's schema is made, in tests too. Several processes may
start at once against one PostgreSQL; an advisory lock lets one migrate while the others wait.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from bulletin.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
# An arbitrary constant naming Bulletin's migration lock among PostgreSQL advisory locks.
_MIGRATION_LOCK = 0x42554C4C4554494E


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.attributes["database_url"] = url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(db: Database, revision: str = "head") -> None:
    """Apply every migration up to ``revision``; safe to call from many processes at once."""
    async with db.engine.begin() as conn:
        if db.is_postgres:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        await conn.run_sync(_upgrade, revision)


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, or ``None`` when it has never been migrated."""
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


async def is_current(db: Database) -> bool:
    return await current_revision(db) == head_revision()
