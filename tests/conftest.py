"""Shared fixtures: real databases built by the real migrations, one fresh database per test.

SQLite tests copy a file migrated once per session. PostgreSQL tests clone a template
database migrated once per session (``CREATE DATABASE ... TEMPLATE``), which takes a fraction
of a second. Outside CI, PostgreSQL tests skip with a reason when no server answers; in CI
(:mod:`support.ci`) they fail instead, because skipping would hide the scale-out path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from bulletin import migrate
from bulletin.app import create_app
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database
from bulletin.orgs import service as orgs
from bulletin.orgs.keys import Scope
from bulletin.services import Services
from support.ci import unavailable

PG_URL = os.environ.get(
    "BULLETIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_HINT = (
    "PostgreSQL is not reachable at {url} ({error}). Start it with "
    "'pg_ctlcluster --skip-systemctl-redirect 15 main start', or point "
    "BULLETIN_TEST_POSTGRES_URL at a server where user may create databases."
)
TEMPLATE = f"bulletin_tpl_{os.getpid()}"

# Fixtures of the end-to-end tests (a served Bulletin and local providers).
pytest_plugins = ("e2e.stack",)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _pg_admin_dsn() -> str:
    return make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_url_for(database: str) -> str:
    return (
        make_url(PG_URL)
        .set(drivername="postgresql+asyncpg", database=database)
        .render_as_string(hide_password=False)
    )


async def _pg_execute(*statements: str) -> None:
    conn = await asyncpg.connect(_pg_admin_dsn(), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrated(url: str) -> None:
    db = Database(url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    asyncio.run(_migrated(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """The name of a migrated template database, or a skip (a failure in CI)."""
    try:
        asyncio.run(
            _pg_execute(
                f'DROP DATABASE IF EXISTS "{TEMPLATE}"',
                f'CREATE DATABASE "{TEMPLATE}"',
            )
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable(PG_HINT.format(url=PG_URL, error=exc))
    asyncio.run(_migrated(_pg_url_for(TEMPLATE)))
    yield TEMPLATE
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))


@pytest.fixture
def make_database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], str]]:
    """A function that gives a fresh, migrated database of the named backend."""
    created: list[str] = []

    def make(backend: str) -> str:
        if backend == "sqlite":
            template: Path = request.getfixturevalue("sqlite_template")
            path = tmp_path / f"bulletin-{uuid.uuid4().hex[:8]}.db"
            shutil.copy(template, path)
            return f"sqlite+aiosqlite:///{path}"
        template_name: str = request.getfixturevalue("postgres_template")
        name = f"bulletin_t_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
        created.append(name)
        return _pg_url_for(name)

    yield make
    for name in created:
        asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def database_url(backend: str, make_database_url: Callable[[str], str]) -> str:
    return make_database_url(backend)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: no .env file, short timings so that tests run fast."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "idle_poll_seconds": 0.2,
        "completion_flush_ms": 2.0,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "cancel_wait_seconds": 5.0,
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.database_url)
    yield database
    await database.dispose()


class Api:
    """An HTTP client for one running app, with keys of each scope of one organization."""

    def __init__(self, client: httpx.AsyncClient, services: Services) -> None:
        self.client = client
        self.services = services
        self.org_id: uuid.UUID = uuid.UUID(int=0)
        self.keys: dict[Scope, str] = {}

    def headers(self, scope: Scope = Scope.SEND, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}", **extra}

    async def new_org(self, name: str = "Acme") -> None:
        async with self.services.db.transaction() as session:
            org, admin = await orgs.create_organization(session, name)
            send = await orgs.create_key(session, org.id, Scope.SEND)
            read = await orgs.create_key(session, org.id, Scope.READ)
        self.org_id = org.id
        self.keys = {Scope.ADMIN: admin.secret, Scope.SEND: send.secret, Scope.READ: read.secret}

    async def get(self, path: str, scope: Scope = Scope.READ, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.headers(scope), **kw)

    async def post(
        self, path: str, json: Any = None, scope: Scope = Scope.SEND, **headers: str
    ) -> httpx.Response:
        return await self.client.post(path, json=json, headers=self.headers(scope, **headers))

    async def put(self, path: str, json: Any, scope: Scope = Scope.SEND) -> httpx.Response:
        return await self.client.put(path, json=json, headers=self.headers(scope))

    async def delete(self, path: str, scope: Scope = Scope.SEND) -> httpx.Response:
        return await self.client.delete(path, headers=self.headers(scope))

    async def other_org(self, name: str = "Other") -> Api:
        """A client for a second organization on the same app."""
        other = Api(self.client, self.services)
        await other.new_org(name)
        return other


async def _running_api(
    settings: Settings, *, run_worker: bool, registry: ChannelRegistry | None = None
) -> AsyncIterator[Api]:
    app = create_app(settings, run_worker=run_worker, registry=registry)
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()  # as a load balancer waits for /ready
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bulletin.test"
        ) as client:
            api = Api(client, app.state.services)
            await api.new_org()
            yield api


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The API alone: nothing is sent unless a test drives the engine itself."""
    async for client in _running_api(settings, run_worker=False):
        yield client


@pytest.fixture
async def live_api(settings: Settings) -> AsyncIterator[Api]:
    """The API and the delivery engine in one process, as ``bulletin serve`` runs them."""
    async for client in _running_api(settings, run_worker=True):
        yield client
