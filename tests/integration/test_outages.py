"""G6 for the database: it may be missing at start, or go away and come back, at any moment.

PostgreSQL is reached through :class:`~support.outage_proxy.OutageProxy`, which cuts every
connection and refuses (or silently holds) new ones without disturbing the shared server. What
is checked is what a user sees: the API listens at once and answers 503 with ``Retry-After``
(never a 500, never a hang) until the database is there; the engine waits the outage out and
resumes; every delivery ends ``sent``, handed to the provider once; no outcome learned while
the database was away is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

from bulletin import migrate
from bulletin.app import create_app
from bulletin.bootstrap import running
from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, is_unavailable, utcnow
from bulletin.deliveries import queue
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery, DeliveryEvent
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.states import DeliveryState
from bulletin.devservers.whatsapp import Latency, WhatsAppCloudServer
from bulletin.messages.models import Message
from bulletin.orgs import service as orgs
from bulletin.signals import CHANNEL, Hub, Listener
from bulletin.worker.completer import Completer
from conftest import PG_URL, make_settings
from support.db_factories import (
    count_states,
    delivery_rows,
    insert_announcement,
    insert_people,
    new_org,
    person_row,
)
from support.http import problem
from support.outage_proxy import OutageProxy
from support.processes import free_port
from support.waiting import eventually

WA_TOKEN = "EAAG-outage-token"
WA_NUMBER_ID = "100000000000001"


def outage_settings(database_url: str, **overrides: Any) -> Settings:
    """Test settings with short database timeouts, so that an outage shows within a second."""
    return make_settings(
        database_url,
        db_connect_timeout_seconds=1.0,
        db_pool_timeout_seconds=1.0,
        **overrides,
    )


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` served by uvicorn on a free port, and a client for it.

    uvicorn listens only once the app's start-up hook has returned, so an answer at all
    proves that the app did not wait for its database before listening.
    """
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):  # it must listen at once, database or not
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        if not server.started:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def ready_is(client: httpx.AsyncClient, status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await client.get("/ready")).status_code == status

    return check


def assert_unavailable(response: httpx.Response, slug: str) -> None:
    body = problem(response, 503)
    assert body["type"] == f"urn:bulletin:problem:{slug}", body
    assert int(response.headers["Retry-After"]) > 0


@pytest.fixture
def pg_url(make_database_url: Callable[[str], str]) -> str:
    """A fresh, migrated PostgreSQL database (skips without a server, as every PG test)."""
    return make_database_url("postgresql")


@pytest.fixture
def empty_pg_url(postgres_template: str) -> Iterator[str]:
    """A PostgreSQL database that exists but has never been migrated."""
    name = f"bulletin_e_{uuid.uuid4().hex[:12]}"
    admin = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)

    async def execute(statement: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    yield (
        make_url(PG_URL)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )
    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[OutageProxy]:
    async with OutageProxy.for_url(pg_url) as running_proxy:
        yield running_proxy


@pytest.fixture
async def direct(pg_url: str) -> AsyncIterator[Database]:
    """The same database, reached without the proxy: the test's own view, never cut."""
    database = Database(pg_url)
    yield database
    await database.dispose()


async def admin_key(db: Database) -> tuple[uuid.UUID, str]:
    async with db.transaction() as session:
        org, key = await orgs.create_organization(session, "Acme")
    return org.id, key.secret


# --- start-up ---------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_the_api_listens_at_once_and_starts_when_the_database_arrives(
    empty_pg_url: str,
) -> None:
    """``bulletin serve`` on a new database that is not reachable yet: alive, not ready, 503;
    once it is reachable: migrated, the default organization made, its key usable, sending."""
    keys: list[str] = []

    async def first_start(db: Database) -> None:  # what `bulletin serve` does
        async with db.transaction() as session:
            key = await orgs.create_default_if_empty(session)
        if key is not None:
            keys.append(key.secret)

    async with OutageProxy.for_url(empty_pg_url) as proxy:
        await proxy.cut()
        settings = outage_settings(proxy.url(empty_pg_url))
        app = create_app(settings, run_worker=True, migrate_it=True, prepare=first_start)
        async with served(app) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            waiting = await client.get("/ready")
            assert waiting.status_code == 503
            assert waiting.json() == {"status": "starting", "database": "waiting for the database"}
            assert int(waiting.headers["Retry-After"]) > 0
            early = await client.post(
                "/v1/notifications",
                json={"recipient": "ada", "title": "Hi", "body": "Too early"},
                headers={"X-API-Key": "bk_not_checked_yet"},
            )
            assert_unavailable(early, "starting")
            assert keys == []

            await proxy.restore()
            await eventually(ready_is(client, 200))
            [key] = keys
            auth = {"X-API-Key": key}
            person_ = {"email": "ada@example.com"}
            assert (await client.put("/v1/recipients/ada", json=person_, headers=auth)).is_success
            posted = await client.post(
                "/v1/notifications",
                json={"recipient": "ada", "title": "Hi", "body": "Now"},
                headers=auth,
            )
            assert posted.status_code == 202, posted.text

            async def sandbox_has_it() -> bool:
                page = await client.get("/v1/sandbox/messages", headers=auth)
                return len(page.json()["items"]) == 1

            await eventually(sandbox_has_it)  # the engine started too
            assert (await client.get("/health")).status_code == 200


async def test_an_unmigrated_database_keeps_the_api_unready_until_it_is_migrated(
    tmp_path: Path,
) -> None:
    """Without ``--migrate`` the API waits for someone to run ``bulletin migrate``."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    app = create_app(make_settings(url))
    async with served(app) as client:

        async def says_waiting_for_migrations() -> bool:
            answer = await client.get("/ready")
            return answer.status_code == 503 and answer.json() == {
                "status": "starting",
                "database": "waiting for migrations",
            }

        await eventually(says_waiting_for_migrations)
        assert_unavailable(await client.get("/v1/recipients"), "starting")
        db = Database(url)
        try:
            await migrate.upgrade(db)
        finally:
            await db.dispose()
        await eventually(ready_is(client, 200))
        assert (await client.get("/v1/recipients")).status_code == 401


def test_processes_started_without_a_database_wait_and_stop_cleanly(tmp_path: Path) -> None:
    """``serve`` listens and ``worker`` waits while no database answers; SIGTERM stops both."""
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/bulletin"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULLETIN_")}
    env.update(BULLETIN_DATABASE_URL=nowhere, BULLETIN_LOG_FORMAT="json")
    bulletin = str(Path(sys.executable).with_name("bulletin"))
    port = free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("serve", "worker")}
    commands = {"serve": ["serve", "--port", str(port)], "worker": ["worker"]}
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in commands.items():
            with logs[name].open("w") as out:
                started[name] = subprocess.Popen(
                    [bulletin, *args], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
                )
        deadline = time.monotonic() + 60
        while not all("startup.waiting_for_database" in p.read_text() for p in logs.values()):
            assert time.monotonic() < deadline, {n: p.read_text() for n, p in logs.items()}
            assert all(p.poll() is None for p in started.values())
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        assert httpx.get(f"{base}/ready", timeout=5).json()["database"] == (
            "waiting for the database"
        )
        assert httpx.get(f"{base}/v1/recipients", timeout=5).status_code == 503
        for name, process in started.items():
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            output = logs[name].read_text()
            assert code in (0, -signal.SIGTERM), output
            assert "Traceback" not in output, output
            assert "worker.stopped" in output, output
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


# --- the API during an outage -------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("hang", [False, True], ids=["refused", "silent"])
async def test_requests_during_an_outage_answer_503_and_succeed_once_it_ends(
    pg_url: str, proxy: OutageProxy, direct: Database, hang: bool
) -> None:
    org_id, key = await admin_key(direct)
    app = create_app(outage_settings(proxy.url(pg_url)))
    async with served(app) as client:
        await eventually(ready_is(client, 200))
        auth = {"X-API-Key": key}
        ada = {"email": "ada@example.com"}
        assert (await client.put("/v1/recipients/ada", json=ada, headers=auth)).is_success

        await proxy.cut(hang=hang)
        payload = {"recipient": "ada", "title": "Hi", "body": "During the outage"}
        keyed = {**auth, "Idempotency-Key": "outage-1"}
        # The client's own timeout (10 s) would fail the test if the API hung.
        during = await client.post("/v1/notifications", json=payload, headers=keyed)
        assert_unavailable(during, "database-unavailable")
        assert_unavailable(
            await client.get("/v1/recipients/ada", headers=auth), "database-unavailable"
        )
        assert (await client.get("/ready")).status_code == 503
        assert (await client.get("/health")).status_code == 200

        await proxy.restore()
        after = await client.post("/v1/notifications", json=payload, headers=keyed)
        assert after.status_code == 202, after.text
        replayed = await client.post("/v1/notifications", json=payload, headers=keyed)
        assert replayed.status_code == 202
        assert replayed.headers["Idempotent-Replayed"] == "true"
        assert replayed.json()["id"] == after.json()["id"]
        assert (await client.get("/ready")).status_code == 200

    async with direct.read() as session:
        made = await session.scalar(
            select(func.count()).select_from(Message).where(Message.org_id == org_id)
        )
    assert made == 1


# --- the engine during an outage ----------------------------------------------------------------


@pytest.mark.postgres
async def test_the_engine_waits_out_an_outage_and_sends_each_delivery_once(
    pg_url: str, proxy: OutageProxy, direct: Database
) -> None:
    people = 40
    in_flight = 4
    async with WhatsAppCloudServer(access_token=WA_TOKEN, phone_number_id=WA_NUMBER_ID) as wa:
        wa.script = lambda _body: Latency(0.2)  # accepted at once, answered later
        settings = outage_settings(
            proxy.url(pg_url),
            whatsapp_phone_number_id=WA_NUMBER_ID,
            whatsapp_access_token=WA_TOKEN,
            whatsapp_base_url=wa.base_url,
            whatsapp_template="bulletin_notice",
            allow_private_provider_addresses=True,  # the stand-in listens on 127.0.0.1
            max_in_flight=in_flight,
            claim_batch_size=in_flight,
        )
        org = await new_org(direct)
        await insert_people(
            direct, org, [person_row(i, whatsapp=f"+2782555{i:04d}") for i in range(people)]
        )
        message = await insert_announcement(direct, org, channels=["whatsapp"])

        with structlog.testing.capture_logs() as logged:
            async with running(settings, dispatch=True, schedule=True):

                async def some_sent() -> bool:
                    return len(wa.accepted) >= 2 * in_flight

                await eventually(some_sent)
                await proxy.cut()  # with sends in flight at the provider
                at_cut = len(wa.accepted)
                logged_at_cut = len(logged)

                async def a_claim_failed() -> bool:
                    return any(e["event"] == "worker.claim_failed" for e in logged[logged_at_cut:])

                await eventually(a_claim_failed)
                # Sends already started could finish; nothing new could be claimed.
                assert len(wa.accepted) <= at_cut + in_flight
                assert len(wa.accepted) < people
                await proxy.restore()

                async def completed() -> bool:
                    async with direct.read() as session:
                        found = await session.get(Message, message.id, populate_existing=True)
                        return found is not None and found.state == "completed"

                await eventually(completed, timeout=60)

        events = Counter(entry["event"] for entry in logged)
        assert events["worker.complete_failed"] > 0, "no outcome had to wait for the database"
        assert events["worker.claim_failed"] + events["scheduler.tick_failed"] > 0

        ids = {d.id for d in await delivery_rows(direct, message.id)}
        handed_over = Counter(int(m.body["biz_opaque_callback_data"]) for m in wa.accepted)
        assert set(handed_over) == ids
        assert set(handed_over.values()) == {1}, "a delivery was handed to WhatsApp twice"
        assert await count_states(direct, message.id) == {"sent": people}


class CutAfterClaim(ChannelRegistry):
    """Every channel to one provider; takes the database away just after the first claim,
    when the dispatcher looks up its channels, before anything is sent."""

    def __init__(self, provider: RecordingProvider, proxy: OutageProxy) -> None:
        super().__init__(provider)
        self.proxy = proxy
        self.cut = asyncio.Event()

    async def confirm_unconfigured(
        self, keys: Iterable[tuple[uuid.UUID, str]], since: float
    ) -> None:
        if not self.cut.is_set():
            self.cut.set()
            await self.proxy.cut()
        await super().confirm_unconfigured(keys, since)


@pytest.mark.postgres
async def test_deliveries_claimed_as_the_database_goes_away_go_back_unsent(
    pg_url: str, proxy: OutageProxy, direct: Database
) -> None:
    """Claimed, then the database is gone before they were decided: they go back to the queue
    (written once the database returns), and are sent once; they are not left to the lease,
    which would settle them as in doubt (``unknown``) although nothing was sent."""
    provider = RecordingProvider()  # does not deduplicate: in doubt would mean unknown
    registry = CutAfterClaim(provider, proxy)
    org = await new_org(direct)
    await insert_people(direct, org, [person_row(i) for i in range(5)])
    message = await insert_announcement(direct, org, channels=["email"])
    settings = outage_settings(proxy.url(pg_url))
    with structlog.testing.capture_logs() as logged:
        async with running(settings, dispatch=True, schedule=True, registry=registry):
            async with asyncio.timeout(30):
                await registry.cut.wait()

            async def decided() -> bool:  # their outcome is waiting for the database
                return any(e["event"] == "worker.complete_failed" for e in logged)

            await eventually(decided)
            assert provider.calls == Counter()
            await proxy.restore()

            async def all_sent() -> bool:
                return await count_states(direct, message.id) == {"sent": 5}

            await eventually(all_sent)
    assert set(provider.calls.values()) == {1}
    async with direct.read() as session:
        released = await session.scalar(
            select(func.count())
            .select_from(DeliveryEvent)
            .where(DeliveryEvent.detail.like("released before sending%"))
        )
    assert released == 5


async def _one_claimed_per_person(db: Database, people: int) -> list[queue.ClaimedRow]:
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(people)])
    message = await insert_announcement(db, org)
    while True:
        async with db.transaction() as session:
            fresh = await session.get(Message, message.id)
            assert fresh is not None
            _, done = await resolve_chunk(session, fresh, 1000)
        if done:
            break
    now = utcnow()
    async with db.transaction() as session:
        return await queue.claim(session, now, now + dt.timedelta(seconds=30), people)


@pytest.mark.postgres
async def test_an_outcome_the_database_missed_is_written_when_it_returns(
    pg_url: str, proxy: OutageProxy, direct: Database
) -> None:
    """The provider took both; the database is away. Each outcome is written once it is back,
    unless the lease was taken over meanwhile: then the fence turns it away, and no more."""
    kept, taken_over = await _one_claimed_per_person(direct, 2)
    via_proxy = Database(proxy.url(pg_url), connect_timeout=1.0, pool_timeout=1.0)
    completer = Completer(via_proxy, flush_seconds=0)
    flushing = asyncio.create_task(completer.run())
    try:
        with structlog.testing.capture_logs() as logged:
            await proxy.cut()
            for row in (kept, taken_over):
                completer.add(
                    Outcome(
                        row.id,
                        row.attempt,
                        DeliveryState.SENT,
                        provider="whatsapp",
                        provider_message_id=f"wamid.{row.id}",
                    )
                )

            async def failed_twice() -> bool:
                failures = [e for e in logged if e["event"] == "worker.complete_failed"]
                return len(failures) >= 2

            await eventually(failed_twice)
            # While it is away from this worker, another took over the second delivery.
            async with direct.transaction() as session:
                await session.execute(
                    update(Delivery)
                    .where(Delivery.id == taken_over.id)
                    .values(state="pending", lease_expires_at=None, next_attempt_at=utcnow())
                )
            now = utcnow()
            async with direct.transaction() as session:
                [again] = await queue.claim(session, now, now + dt.timedelta(seconds=30), 5)
            assert again.id == taken_over.id
            assert again.attempt == taken_over.attempt + 1

            await proxy.restore()
            async with asyncio.timeout(30):
                await completer.wait_idle()
    finally:
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        await via_proxy.dispose()

    async with direct.read() as session:
        rows = {
            d.id: d
            for d in (
                await session.execute(select(Delivery).where(Delivery.id.in_([kept.id, again.id])))
            ).scalars()
        }
    assert rows[kept.id].state == "sent"
    assert rows[kept.id].provider_message_id == f"wamid.{kept.id}"
    assert rows[again.id].state == "sending"
    assert rows[again.id].attempt == again.attempt
    assert (completer.applied, completer.fenced_out) == (1, 1)
    assert any(e["event"] == "worker.complete_resumed" for e in logged)


@pytest.mark.postgres
async def test_the_listener_reconnects_after_a_silent_outage_and_hears_again(
    pg_url: str, proxy: OutageProxy, direct: Database
) -> None:
    """A connection attempt that gets no answer gives up in time, so LISTEN comes back."""
    hub = Hub()
    woken = hub.subscribe()
    via_proxy = Database(proxy.url(pg_url), connect_timeout=1.0)
    listening = asyncio.create_task(Listener(via_proxy, hub).run())

    async def notify() -> None:
        async with direct.engine.connect() as conn:
            await conn.execute(text(f"NOTIFY {CHANNEL}"))
            await conn.commit()

    try:
        assert await woken.wait(10), "the listener never connected"  # it pokes on connecting
        await notify()
        assert await woken.wait(5)

        await proxy.cut(hang=True)
        await asyncio.sleep(1.5)  # at least one connection attempt meets the silence
        await proxy.restore()
        assert await woken.wait(20), "the listener did not come back"
        await notify()
        assert await woken.wait(5), "the listener came back deaf"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await via_proxy.dispose()


# --- telling outages from errors -----------------------------------------------------------


async def _error_of(db: Database, statement: str) -> Exception:
    try:
        async with db.transaction() as session:
            await session.execute(text(statement))
    except Exception as exc:
        return exc
    raise AssertionError(f"{statement!r} did not fail")


async def test_only_an_outage_counts_as_unavailable(db: Database, tmp_path: Path) -> None:
    """What answers 503 and is waited out, and what stays an error (500, or a crash to fix)."""
    await new_org(db)
    duplicate = await _error_of(
        db,
        "INSERT INTO organizations (id, name, created_at) "
        "SELECT id, name, created_at FROM organizations",
    )
    broken = await _error_of(db, "SELECT * FROM no_such_table")
    assert type(duplicate).__name__ == "IntegrityError"
    assert not is_unavailable(duplicate)
    assert not is_unavailable(broken)
    assert not is_unavailable(ValueError("a bug"))
    if db.is_postgres:
        assert not is_unavailable(await _error_of(db, "SELECT 1/0"))
        unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    else:
        unreachable = f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    nowhere = Database(unreachable, connect_timeout=1.0)
    try:
        assert is_unavailable(await _error_of(nowhere, "SELECT 1"))
    finally:
        await nowhere.dispose()
