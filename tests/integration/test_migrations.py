"""The schema the migrations build is exactly the one the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from bulletin import migrate
from bulletin.db import Database
from bulletin.models import Base


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_the_models_schema(db: Database) -> None:
    assert await migrate.is_current(db)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_differences) == []


async def test_downgrade_to_nothing_and_back(db: Database) -> None:
    await migrate.upgrade(db, "head")
    async with db.engine.begin() as conn:
        await conn.run_sync(migrate._upgrade, "head")  # idempotent at head
    config = migrate.alembic_config()
    async with db.engine.begin() as conn:

        def down(sync_conn: Connection) -> None:
            from alembic import command

            config.attributes["connection"] = sync_conn
            command.downgrade(config, "base")

        await conn.run_sync(down)
    assert await migrate.current_revision(db) is None
    await migrate.upgrade(db)
    assert await migrate.is_current(db)
