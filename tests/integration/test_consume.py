"""``bulletin consume`` against the real RabbitMQ and both databases: events become messages
and are acknowledged only once committed, malformed and refused ones go to the dead-letter
queue with their reason, an event delivered again creates nothing, outages of the database
and of the broker are waited out, SIGTERM finishes the batch in hand, and the command says
clearly what is wrong with its settings."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.config import Settings
from bulletin.consumers import run
from bulletin.consumers.loop import Consumer, Outcome
from bulletin.consumers.port import Batch, SourceUnavailable
from bulletin.consumers.rabbitmq import ERRORS_HEADER, REASON_HEADER, RabbitSource
from bulletin.consumers.reading import Routing
from bulletin.db import Database
from bulletin.events import service as events
from bulletin.events.models import Event
from bulletin.messages.models import Message
from bulletin.orgs.keys import Scope
from conftest import Api
from support.outage_proxy import OutageProxy
from support.processes import BULLETIN, environment, free_port
from support.rabbit import Rabbit
from support.waiting import eventually

TYPE = "order.shipped"


@pytest.fixture
async def rabbit() -> AsyncIterator[Rabbit]:
    server = await Rabbit.open()
    yield server
    await server.close()


async def prepare(api: Api, recipients: int = 3) -> None:
    """An event type and a few recipients (r0, r1...) in ``api``'s organization."""
    answer = await api.put(
        f"/v1/event-types/{TYPE}",
        {
            "title": "Order {{ data.order }} shipped",
            "body": "Hello {{ recipient.name }}, order {{ data.order }} is on its way.",
            "channels": ["email"],
        },
        scope=Scope.ADMIN,
    )
    assert answer.status_code in (200, 201), answer.text
    for n in range(recipients):
        answer = await api.put(
            f"/v1/recipients/r{n}", {"name": f"R{n}", "email": f"r{n}@example.com"}
        )
        assert answer.status_code in (200, 201), answer.text


def event(event_id: str, recipient: str = "r0", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "type": TYPE, "recipient": recipient, "data": {"order": 7}, **extra}


def consume_settings(api: Api, rabbit: Rabbit, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": SecretStr(rabbit.url),
        "consume_queue": rabbit.queue,
        "consume_org": api.org_id,
        "consume_batch_ms": 5.0,
        **overrides,
    }
    return api.services.settings.model_copy(update=values)


@contextlib.asynccontextmanager
async def consuming(settings: Settings, db: Database) -> AsyncIterator[asyncio.Task[None]]:
    """``bulletin consume``'s work in this process, stopped (as by SIGTERM) at the end."""
    stopping = asyncio.Event()
    task = asyncio.create_task(run.consume(settings, db, stopping))
    try:
        yield task
    finally:
        stopping.set()
        await task


async def accepted(db: Database, org_id: uuid.UUID | None = None) -> dict[str, list[str]]:
    """Each accepted event's id, with the ids of the messages it became."""
    async with db.read() as session:
        query = select(Event.client_id, Event.message_ids)
        if org_id is not None:
            query = query.where(Event.org_id == org_id)
        return {client_id: ids for client_id, ids in (await session.execute(query)).all()}


async def messages(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


async def until_accepted(db: Database, count: int) -> None:
    async def done() -> bool:
        return len(await accepted(db)) >= count

    await eventually(done)


async def test_events_become_messages_and_leave_the_queue_once_committed(
    api: Api, rabbit: Rabbit
) -> None:
    await prepare(api)
    db = api.services.db
    published = [event(f"e{n}", f"r{n % 3}") for n in range(20)]
    published.append({"id": "many", "type": TYPE, "recipients": ["r0", "r1"], "data": {"order": 7}})
    await rabbit.publish(published)
    async with consuming(consume_settings(api, rabbit), db):
        await until_accepted(db, len(published))
    found = await accepted(db, api.org_id)
    assert set(found) == {e["id"] for e in published}
    assert len(found["many"]) == 2
    assert await messages(db) == 22
    async with db.read() as session:
        stored = (await session.scalars(select(Message.data))).all()
    assert all(data == {"order": 7} for data in stored)
    assert await rabbit.waiting() == 0
    assert await rabbit.take() == []


async def test_malformed_and_refused_events_go_to_the_dead_letter_queue_with_the_reason(
    api: Api, rabbit: Rabbit
) -> None:
    await prepare(api)
    db = api.services.db
    bodies: list[bytes] = [
        json.dumps(event("good")).encode(),
        b"not json",
        b"[1, 2, 3]",
        json.dumps(event("unknown-type") | {"type": "no.such.type"}).encode(),
        json.dumps(event("unknown-person", "nobody")).encode(),
        json.dumps(event("elsewhere") | {"organization": str(uuid.uuid4())}).encode(),
    ]
    await rabbit.publish(bodies, headers={"x-producer": "tests"})
    async with consuming(consume_settings(api, rabbit), db):
        await until_accepted(db, 1)

        async def all_dead_lettered() -> bool:
            return await rabbit.waiting(rabbit.dead) == 5

        await eventually(all_dead_lettered)
    assert set(await accepted(db)) == {"good"}
    assert await rabbit.waiting() == 0  # each acknowledged: none is delivered again
    dead = {m.body: m for m in await rabbit.take()}
    assert set(dead) == set(bodies[1:])  # unchanged
    for message in dead.values():
        assert message.headers["x-producer"] == "tests"
        reason = message.headers[REASON_HEADER]
        assert isinstance(reason, str)
        assert reason.strip()
        assert "\n" not in reason
        errors = json.loads(str(message.headers[ERRORS_HEADER]))
        assert isinstance(errors, list)
        assert message.delivery_mode == 2  # persistent
    assert "not JSON" in str(dead[b"not json"].headers[REASON_HEADER])
    assert "object" in str(dead[b"[1, 2, 3]"].headers[REASON_HEADER])
    assert "organization" in str(dead[bodies[5]].headers[REASON_HEADER])
    refused = json.loads(str(dead[bodies[3]].headers[ERRORS_HEADER]))
    assert refused
    assert all({"loc", "message", "type"} <= set(error) for error in refused)


async def test_an_event_delivered_again_creates_nothing(api: Api, rabbit: Rabbit) -> None:
    await prepare(api)
    db = api.services.db
    # The same id in one batch, and again in a later one with another body.
    await rabbit.publish([event("once"), event("once", "r1")])
    async with consuming(consume_settings(api, rabbit), db):
        await until_accepted(db, 1)

        async def both_taken() -> bool:
            return await rabbit.waiting() == 0

        await eventually(both_taken)
        await rabbit.publish([event("once", "r2"), event("other")])
        await until_accepted(db, 2)

        await eventually(both_taken)
    found = await accepted(db)
    assert set(found) == {"once", "other"}
    assert await messages(db) == 2
    assert await rabbit.take() == []  # a duplicate is not refused


class AckLostOnce(RabbitSource):
    """RabbitMQ, with the link breaking once between a commit and its acknowledgement."""

    broke = False

    async def ack(self, batch: Batch) -> None:
        if not self.broke:
            self.broke = True
            raise SourceUnavailable("the link broke before the acknowledgement")
        await super().ack(batch)


async def test_a_batch_committed_but_not_acknowledged_comes_again_and_creates_nothing(
    api: Api, rabbit: Rabbit
) -> None:
    await prepare(api)
    db = api.services.db
    await rabbit.publish([event(f"e{n}", f"r{n % 3}") for n in range(10)])
    source = AckLostOnce(rabbit.url, rabbit.queue, prefetch=100, batch_wait=0.2)
    statuses: list[str] = []

    async def watched_accept(
        session: AsyncSession,
        org_id: uuid.UUID,
        raw_events: Sequence[object],
        *,
        region: str | None,
        now: dt.datetime,
    ) -> Sequence[Outcome]:
        outcomes = await events.accept(session, org_id, raw_events, region=region, now=now)
        statuses.extend(outcome.status for outcome in outcomes)
        return outcomes

    stopping = asyncio.Event()
    consumer = Consumer(
        db, source, watched_accept, Routing.one(api.org_id), region=None, max_event_bytes=10_000
    )
    task = asyncio.create_task(consumer.run(stopping))

    async def came_again() -> bool:
        return statuses.count("duplicate") == 10

    await eventually(came_again)

    async def acknowledged() -> bool:
        return await rabbit.waiting() == 0

    await eventually(acknowledged)
    stopping.set()
    await task
    assert statuses == ["accepted"] * 10 + ["duplicate"] * 10
    assert len(await accepted(db)) == 10
    assert await messages(db) == 10
    assert await rabbit.waiting() == 0
    assert await rabbit.take() == []


async def test_a_queue_shared_by_organizations_gives_each_its_own_events(
    api: Api, rabbit: Rabbit
) -> None:
    other = await api.other_org()
    await prepare(api)
    await prepare(other)
    db = api.services.db
    await rabbit.publish(
        [
            event("a", organization=str(api.org_id)),
            event("b", organization=str(other.org_id)),
            event("c"),  # names none: refused on a shared queue
        ]
    )
    settings = consume_settings(
        api, rabbit, consume_org=None, consume_orgs=f"{api.org_id},{other.org_id}"
    )
    async with consuming(settings, db):
        await until_accepted(db, 2)
    assert set(await accepted(db, api.org_id)) == {"a"}
    assert set(await accepted(db, other.org_id)) == {"b"}
    (dead,) = await rabbit.take()
    assert json.loads(dead.body)["id"] == "c"


class Unreachable:
    """The database, or, while ``down``, an outage at the start of every transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.down = True
        self.tries = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        self.tries += 1
        if self.down:
            raise ConnectionRefusedError("the database is away")
        async with self.db.transaction() as session:
            yield session


async def test_nothing_is_acknowledged_while_the_database_is_away(api: Api, rabbit: Rabbit) -> None:
    await prepare(api)
    await rabbit.publish([event("e1"), event("e2")])
    unreachable = Unreachable(api.services.db)

    def consumer() -> Consumer:
        source = RabbitSource(rabbit.url, rabbit.queue, prefetch=10, batch_wait=0.01)
        return Consumer(
            unreachable,
            source,
            events.accept,
            Routing.one(api.org_id),
            region=None,
            max_event_bytes=10_000,
            retry_first=0.01,
        )

    stopping = asyncio.Event()
    task = asyncio.create_task(consumer().run(stopping))

    async def tried_thrice() -> bool:
        return unreachable.tries >= 3

    await eventually(tried_thrice)
    stopping.set()
    await task
    assert await rabbit.waiting() == 2  # given back: they were never acknowledged
    assert await accepted(api.services.db) == {}

    unreachable.down = False
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer().run(stopping))
    await until_accepted(api.services.db, 2)

    async def acknowledged() -> bool:
        return await rabbit.waiting() == 0

    await eventually(acknowledged)
    stopping.set()
    await task
    assert await rabbit.waiting() == 0
    assert await messages(api.services.db) == 2


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_postgresql_outage_holds_the_batch_until_the_database_is_back(
    api: Api, rabbit: Rabbit
) -> None:
    await prepare(api)
    settings = consume_settings(api, rabbit, db_connect_timeout_seconds=1.0)
    async with OutageProxy.for_url(settings.database_url) as proxy:
        db = Database(proxy.url(settings.database_url), connect_timeout=1.0, pool_timeout=1.0)
        try:
            async with consuming(settings, db):

                async def reading() -> bool:
                    return await rabbit.consumers() == 1

                await eventually(reading)
                await proxy.cut()
                await rabbit.publish([event("during")])

                async def delivered() -> bool:  # to the consumer, and not acknowledged
                    return await rabbit.waiting() == 0

                await eventually(delivered)
                await asyncio.sleep(1.0)  # let it fail a few times
                assert await accepted(api.services.db) == {}
                await proxy.restore()
                await until_accepted(api.services.db, 1)
        finally:
            await db.dispose()
    assert await rabbit.waiting() == 0
    assert await messages(api.services.db) == 1


async def test_a_broken_link_to_rabbitmq_is_opened_again(api: Api, rabbit: Rabbit) -> None:
    await prepare(api)
    db = api.services.db
    async with OutageProxy("127.0.0.1", 5672) as proxy:
        url = rabbit.url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        async with consuming(consume_settings(api, rabbit, amqp_url=SecretStr(url)), db):
            await rabbit.publish([event("before")])
            await until_accepted(db, 1)
            await proxy.cut()
            await rabbit.publish([event("while-cut")])
            await proxy.restore()
            await until_accepted(db, 2)
            await rabbit.publish([event("after")])
            await until_accepted(db, 3)
        assert proxy.connections >= 2
    assert set(await accepted(db)) == {"before", "while-cut", "after"}
    assert await messages(db) == 3
    assert await rabbit.waiting() == 0


async def test_stopping_finishes_the_batch_in_hand(api: Api, rabbit: Rabbit) -> None:
    await prepare(api)
    db = api.services.db
    await rabbit.publish([event(f"e{n}") for n in range(6)])
    in_hand = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_accept(
        session: AsyncSession,
        org_id: uuid.UUID,
        raw_events: Sequence[object],
        *,
        region: str | None,
        now: dt.datetime,
    ) -> Sequence[Outcome]:
        in_hand.set()
        await go_on.wait()
        return await events.accept(session, org_id, raw_events, region=region, now=now)

    source = RabbitSource(rabbit.url, rabbit.queue, prefetch=2, batch_wait=0.2)
    consumer = Consumer(
        db, source, slow_accept, Routing.one(api.org_id), region=None, max_event_bytes=10_000
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping))
    await in_hand.wait()
    stopping.set()  # as SIGTERM does
    go_on.set()
    await task
    assert set(await accepted(db)) == {"e0", "e1"}
    assert await rabbit.waiting() == 4  # the rest stay for the next consumer


# The command.


def run_consume(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(
        [BULLETIN, "consume"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


def test_the_command_asks_whose_events_the_queue_carries(tmp_path: Path) -> None:
    code, output = run_consume(environment(f"sqlite:///{tmp_path / 'b.db'}"), tmp_path)
    assert code == 2
    assert "BULLETIN_CONSUME_ORG" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("BULLETIN_CONSUME_PREFETCH", "0", "greater than or equal to 1"),
        ("BULLETIN_CONSUME_BATCH_MS", "soon", "valid number"),
        ("BULLETIN_AMQP_URL", "https://me:hunter2@rabbit.example/", "amqp:// or amqps://"),
        ("BULLETIN_CONSUME_ORGS", "acme", "not an organization id"),
    ],
)
def test_the_command_names_a_nonsense_setting_and_says_why(
    tmp_path: Path, name: str, value: str, said: str
) -> None:
    env = environment(f"sqlite:///{tmp_path / 'b.db'}", **{name: value})
    code, output = run_consume(env, tmp_path)
    assert code == 2
    assert f"{name}: " in output
    assert said in output
    assert "hunter2" not in output
    assert "Traceback" not in output


def test_the_command_refuses_an_organization_that_does_not_exist(
    database_url: str, tmp_path: Path
) -> None:
    env = environment(database_url, BULLETIN_CONSUME_ORG=str(uuid.uuid4()))
    code, output = run_consume(env, tmp_path)
    assert code == 1
    assert "BULLETIN_CONSUME_ORG" in output
    assert "Traceback" not in output


async def test_the_command_consumes_until_sigterm(
    api: Api, rabbit: Rabbit, database_url: str, tmp_path: Path
) -> None:
    await prepare(api)
    await rabbit.publish([event(f"e{n}") for n in range(50)])
    env = environment(
        database_url,
        BULLETIN_AMQP_URL=rabbit.url,
        BULLETIN_CONSUME_QUEUE=rabbit.queue,
        BULLETIN_CONSUME_ORG=str(api.org_id),
        BULLETIN_LOG_FORMAT="json",
    )
    log = tmp_path / "consume.log"
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(
            BULLETIN, "consume", env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            await until_accepted(api.services.db, 50)
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                code = await process.wait()
    output = log.read_text()
    assert code == 0, output
    assert "consume.stopped" in output
    assert "Traceback" not in output
    assert "guest:guest" not in output  # the URL is logged without its password
    assert await rabbit.waiting() == 0
    assert await messages(api.services.db) == 50


async def test_the_command_waits_for_rabbitmq_and_stops_on_sigterm(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    nowhere = free_port()
    env = environment(
        database_url,
        BULLETIN_AMQP_URL=f"amqp://guest:hunter2@127.0.0.1:{nowhere}/",
        BULLETIN_CONSUME_ORG=str(api.org_id),
        BULLETIN_LOG_FORMAT="json",
    )
    log = tmp_path / "consume.log"
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(
            BULLETIN, "consume", env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
        try:

            async def waiting_for_rabbitmq() -> bool:
                return "consume.source_unavailable" in log.read_text()

            await eventually(waiting_for_rabbitmq)
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                code = await process.wait()
    output = log.read_text()
    assert code == 0, output
    assert f"127.0.0.1:{nowhere}" in output  # it says where it is trying
    assert "hunter2" not in output
    assert "Traceback" not in output
