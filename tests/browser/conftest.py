"""The portal in a real browser: a ``bulletin serve`` process and headless Chromium.

Chromium is Debian's package at :data:`CHROMIUM` (``./scripts/test`` installs it when run as
root); Playwright's own browser downloads are not used. Without it the tests skip, or fail in
CI (see :mod:`support.ci`), so that a CI machine cannot pass by testing nothing.

One server runs per test module (starting it takes seconds); ``live`` gives each test an
organization of its own on it, so tests see nothing of each other's.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from bulletin.bootstrap import open_database, wait_for_database
from bulletin.config import Settings
from bulletin.db import Database
from bulletin.orgs import service as orgs
from bulletin.web.portal import accounts
from support.ci import unavailable
from support.processes import environment, free_port, ready
from support.waiting import wait_until

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
CHROMIUM = Path("/usr/bin/chromium")
NO_CHROMIUM = (
    f"Chromium not found at {CHROMIUM}: install Debian's chromium package "
    "(./scripts/test does this when run as root), or set CI=1 to make this an error"
)
#: How long a page may take to show what a test expects (the server runs beside the browser).
TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class LiveBulletin:
    """A running ``bulletin serve`` with one organization, its admin key and a portal user."""

    base_url: str
    api_key: str
    org_id: str
    portal_email: str
    portal_password: str


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder drives a browser: ``-m "not browser"`` leaves them out."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)


T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    # In a thread of its own: Playwright's sync API marks its event loop as running in this
    # one, where asyncio.run would then refuse to start another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_run_and_collect, coroutine).result()


def _run_and_collect(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine``, then collect the garbage it left in this thread, here: SQLAlchemy's
    greenlet frames collected by another thread's garbage collector have crashed Python."""
    try:
        return asyncio.run(coroutine)
    finally:
        gc.collect()


async def _database(database_url: str, migrate_it: bool) -> Database:
    db = open_database(Settings(_env_file=None, database_url=database_url))
    await wait_for_database(db, migrate_it=migrate_it)
    return db


async def _migrate(database_url: str) -> None:
    await (await _database(database_url, migrate_it=True)).dispose()


async def _add_organization(database_url: str, email: str, password: str) -> tuple[str, str]:
    """A new organization with an admin key and a portal user: its id and the key."""
    db = await _database(database_url, migrate_it=False)
    try:
        async with db.transaction() as session:
            org, key = await orgs.create_organization(session, f"Browser test {email}")
            await accounts.create_user(session, org.id, email, "Pat Portal", password)
    finally:
        await db.dispose()
    return str(org.id), key.secret


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class _Server:
    base_url: str
    database_url: str


@pytest.fixture(scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    """``bulletin serve`` on a free port with a fresh SQLite database, the delivery engine
    embedded and the sandbox as every channel's provider. One per module: starting the
    process takes seconds, and each test gets an organization of its own anyway."""
    folder = tmp_path_factory.mktemp("bulletin")
    database_url = f"sqlite:///{folder / 'bulletin.db'}"
    # Migrated here, so that organizations can be added while the server runs.
    _run(_migrate(database_url))
    port = free_port()
    env = environment(
        database_url,
        # The code of this checkout, whatever is installed in the environment.
        PYTHONPATH=os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")]),
        # Due announcements are picked up within a fifth of a second, not a second.
        BULLETIN_IDLE_POLL_SECONDS="0.2",
        BULLETIN_SHUTDOWN_GRACE_SECONDS="1",
        BULLETIN_LOG_LEVEL="warning",
        # Links in messages (the preference centre) point at this server.
        BULLETIN_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bulletin", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until(lambda: process.poll() is not None or ready(base_url), timeout=30)
        except AssertionError:
            raise AssertionError(f"bulletin serve never became ready:\n{log.read_text()}") from None
        assert process.poll() is None, f"bulletin serve stopped:\n{log.read_text()}"
        yield _Server(base_url, database_url)
    finally:
        _stop(process)


@pytest.fixture
def live(_server: _Server) -> LiveBulletin:
    """A running Bulletin and, for this test alone, a new organization with an admin API key
    and a portal user: what one test does is not seen by another."""
    email = f"pat-{uuid.uuid4().hex[:12]}@example.com"
    password = f"pw-{uuid.uuid4()}"
    org_id, api_key = _run(_add_organization(_server.database_url, email, password))
    return LiveBulletin(_server.base_url, api_key, org_id, email, password)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, shared by the tests of a module (each gets its own context).

    Per module, not per run: while Playwright's sync API is started, its event loop counts as
    running in this thread, and every asyncio test or fixture run after it (the rest of the
    suite) would fail with "asyncio.run() cannot be called from a running event loop"."""
    if not CHROMIUM.exists():
        unavailable(NO_CHROMIUM)
    playwright: Playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a new browser context (no cookies from other tests), closed afterwards."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def screenshots() -> Path:
    """Where tests save screenshots: ``test-artifacts/screenshots/`` (ignored by git)."""
    folder = REPOSITORY / "test-artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
