"""The consume loop without a broker or a database: reading events, batching, the order of
commit, dead letter and acknowledgement, outages, defects, and the consumer's settings."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin import jsonvalue
from bulletin.config import Settings
from bulletin.consumers import loop, reading
from bulletin.consumers.loop import Consumer
from bulletin.consumers.port import (
    LINK_LOST,
    Batch,
    DeadLetter,
    Item,
    SourceUnavailable,
    gather_batch,
)
from bulletin.consumers.rabbitmq import MAX_ERRORS_CHARACTERS, errors_header
from bulletin.consumers.reading import Malformed, Readable, Routing, decode, one_line
from bulletin.errors import FieldError
from support.waiting import eventually

ORG = uuid.UUID("00000000-0000-4000-8000-000000000001")
OTHER = uuid.UUID("00000000-0000-4000-8000-000000000002")
MAX = 10_000


def body(value: object) -> bytes:
    return json.dumps(value).encode()


# Reading one item.


def test_an_event_of_a_single_organization_queue_needs_no_organization_key() -> None:
    reading = decode(body({"id": "e1", "type": "t"}), Routing.one(ORG), max_bytes=MAX)
    assert reading == Readable(ORG, {"id": "e1", "type": "t"})


def test_naming_the_queues_own_organization_is_allowed_and_the_key_is_taken_out() -> None:
    given = body({"id": "e1", "organization": str(ORG)})
    assert decode(given, Routing.one(ORG), max_bytes=MAX) == Readable(ORG, {"id": "e1"})


def test_naming_another_organization_on_a_single_organization_queue_is_malformed() -> None:
    reading = decode(body({"organization": str(OTHER)}), Routing.one(ORG), max_bytes=MAX)
    assert isinstance(reading, Malformed)
    assert str(OTHER) in reading.reason
    assert reading.errors[0].loc == ("organization",)


def test_a_shared_queue_takes_each_event_for_the_organization_it_names() -> None:
    routing = Routing.several([ORG, OTHER])
    reading = decode(body({"id": "e", "organization": str(OTHER)}), routing, max_bytes=MAX)
    assert reading == Readable(OTHER, {"id": "e"})


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"id": "e"}, "missing"),
        ({"organization": "acme"}, "uuid"),
        ({"organization": 7}, "uuid"),
        ({"organization": str(uuid.uuid4())}, "organization_not_served"),
    ],
)
def test_a_shared_queue_refuses_events_without_a_served_organization(
    event: dict[str, Any], kind: str
) -> None:
    reading = decode(body(event), Routing.several([ORG, OTHER]), max_bytes=MAX)
    assert isinstance(reading, Malformed)
    assert reading.errors[0].type == kind
    assert reading.errors[0].loc == ("organization",)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"not json", "json_invalid"),
        (b'{"id": "e"', "json_invalid"),
        (b"\xff\xfe{}", "json_invalid"),
        (b"[1, 2]", "object_type"),
        (b'"text"', "object_type"),
        (b"null", "object_type"),
        (b'{"n": ' + b"9" * 5000 + b"}", "json_invalid"),
        (
            b"[" * (jsonvalue.MAX_BODY_DEPTH + 1) + b"]" * (jsonvalue.MAX_BODY_DEPTH + 1),
            "json_depth",
        ),
        (b'{"id": "' + b"x" * MAX + b'"}', "too_large"),
    ],
)
def test_what_is_not_an_event_is_malformed_with_a_reason(raw: bytes, kind: str) -> None:
    reading = decode(raw, Routing.one(ORG), max_bytes=MAX)
    assert isinstance(reading, Malformed)
    assert reading.errors[0].type == kind
    assert reading.reason
    assert "\n" not in reading.reason


def test_a_reason_is_one_line_of_bounded_length() -> None:
    assert one_line("a\nb\r\n  c\t d") == "a b c d"
    long = one_line("x" * 10_000)
    assert len(long) == reading.MAX_REASON_CHARACTERS
    assert long.endswith("...")


# Gathering a batch from a buffer a client pushes into.


async def test_a_batch_takes_what_is_there_up_to_the_limit() -> None:
    buffer: asyncio.Queue[Any] = asyncio.Queue()
    for n in range(5):
        buffer.put_nowait(n)
    assert await gather_batch(buffer, asyncio.Event(), limit=3, wait=10) == [0, 1, 2]
    assert await gather_batch(buffer, asyncio.Event(), limit=3, wait=0) == [3, 4]


async def test_a_batch_waits_for_more_only_until_its_time_is_up() -> None:
    buffer: asyncio.Queue[Any] = asyncio.Queue()
    buffer.put_nowait("first")
    assert await gather_batch(buffer, asyncio.Event(), limit=100, wait=0.05) == ["first"]


async def test_a_batch_takes_what_arrives_while_it_waits() -> None:
    buffer: asyncio.Queue[Any] = asyncio.Queue()

    async def later() -> None:
        await asyncio.sleep(0.01)
        buffer.put_nowait("first")
        await asyncio.sleep(0.01)
        buffer.put_nowait("second")

    task = asyncio.create_task(later())
    assert await gather_batch(buffer, asyncio.Event(), limit=2, wait=30) == ["first", "second"]
    await task


async def test_stopping_ends_the_wait_for_a_first_item_and_takes_nothing() -> None:
    buffer: asyncio.Queue[Any] = asyncio.Queue()
    stopping = asyncio.Event()
    waiting = asyncio.create_task(gather_batch(buffer, stopping, limit=10, wait=1))
    await asyncio.sleep(0.01)
    stopping.set()
    assert await waiting is None
    buffer.put_nowait("late")
    assert buffer.qsize() == 1  # still there for whoever reads next


async def test_a_broken_link_voids_the_batch_in_hand() -> None:
    buffer: asyncio.Queue[Any] = asyncio.Queue()
    buffer.put_nowait("delivered")
    buffer.put_nowait(LINK_LOST)
    with pytest.raises(SourceUnavailable):
        await gather_batch(buffer, asyncio.Event(), limit=10, wait=1)


# The loop, with a source, a database and an events service that write in one journal.


@dataclass
class Result:
    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "refused"]
    reason: str | None = None
    errors: tuple[FieldError, ...] = ()


@dataclass
class World:
    """What happened, in order, and what is committed."""

    journal: list[str] = field(default_factory=list)
    committed: set[str] = field(default_factory=set)
    #: Transactions that fail as an outage before one succeeds.
    outages: int = 0
    #: Event ids whose acceptance raises a defect.
    poison: set[str] = field(default_factory=set)
    calls: list[tuple[uuid.UUID, list[str]]] = field(default_factory=list)


class FakeDb:
    def __init__(self, world: World) -> None:
        self.world = world

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        session = cast(AsyncSession, {"pending": set()})
        self.world.journal.append("begin")
        if self.world.outages:
            self.world.outages -= 1
            self.world.journal.append("outage")
            raise OSError("connection refused")
        try:
            yield session
        except BaseException:
            self.world.journal.append("rollback")
            raise
        self.world.committed |= cast(dict[str, set[str]], session)["pending"]
        self.world.journal.append("commit")


def fake_accept(world: World) -> loop.Accept:
    async def accept(
        session: AsyncSession,
        org_id: uuid.UUID,
        raw_events: Sequence[object],
        *,
        region: str | None,
        now: dt.datetime,
    ) -> list[Result]:
        pending = cast(dict[str, set[str]], session)["pending"]
        events = [cast(dict[str, Any], e) for e in raw_events]
        world.calls.append((org_id, [e["id"] for e in events]))
        if any(e["id"] in world.poison for e in events):
            raise RuntimeError("a defect")
        results = []
        for index, event in enumerate(events):
            event_id = event["id"]
            world.journal.append(f"accept {event_id}")
            if event.get("type") == "unknown":
                error = FieldError(("type",), "no such event type", "unknown_type")
                results.append(Result(index, event_id, "refused", "unknown type", (error,)))
            elif event_id in world.committed or event_id in pending:
                results.append(Result(index, event_id, "duplicate"))
            else:
                pending.add(event_id)
                results.append(Result(index, event_id, "accepted"))
        return results

    return accept


class FakeSource:
    """Hands out the given batches once each, and records acks and dead letters."""

    name = "fake"

    def __init__(self, world: World, batches: list[list[bytes]], *, ack_fails: int = 0) -> None:
        self.world = world
        self.pending = [
            Batch([Item(b, handle=i) for i, b in enumerate(items)]) for items in batches
        ]
        self.ack_fails = ack_fails
        self.letters: list[DeadLetter] = []
        self.opened = 0

    async def open(self) -> None:
        self.opened += 1

    async def batches(self, stopping: asyncio.Event) -> AsyncGenerator[Batch, None]:
        while self.pending and not stopping.is_set():
            yield self.pending[0]
        stopping.set()

    async def ack(self, batch: Batch) -> None:
        if self.ack_fails:
            self.ack_fails -= 1
            raise SourceUnavailable("link broke")
        self.world.journal.append(f"ack {len(batch)}")
        assert batch is self.pending[0] or all(i in self.pending[0].items for i in batch.items)
        if batch.items[-1] is self.pending[0].items[-1]:
            self.pending.pop(0)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        if letters:
            self.world.journal.append(f"dead_letter {len(letters)}")
            self.letters += letters

    async def close(self) -> None:
        pass


def consumer(world: World, source: FakeSource, routing: Routing | None = None) -> Consumer:
    return Consumer(
        FakeDb(world),
        source,
        fake_accept(world),
        routing or Routing.one(ORG),
        region=None,
        max_event_bytes=MAX,
        on_accepted=lambda: world.journal.append("wake"),
        retry_first=0.001,
        reconnect_cap=0.01,
    )


async def test_a_batch_is_acknowledged_after_its_commit_and_its_dead_letters() -> None:
    world = World()
    source = FakeSource(
        world, [[body({"id": "a"}), b"not json", body({"id": "b", "type": "unknown"})]]
    )
    await consumer(world, source).run(asyncio.Event())
    assert world.journal == [
        "begin",
        "accept a",
        "accept b",
        "commit",
        "dead_letter 2",
        "ack 3",
        "wake",
    ]
    reasons = [letter.reason for letter in source.letters]
    assert reasons[0].startswith("the event is not JSON")
    assert reasons[1] == "unknown type"
    assert source.letters[1].errors == [
        {"loc": ["type"], "message": "no such event type", "type": "unknown_type"}
    ]


async def test_a_batch_of_duplicates_wakes_no_one() -> None:
    world = World(committed={"a"})
    await consumer(world, FakeSource(world, [[body({"id": "a"})]])).run(asyncio.Event())
    assert world.journal == ["begin", "accept a", "commit", "ack 1"]


async def test_while_the_database_is_away_nothing_is_acknowledged_then_the_batch_goes_in() -> None:
    world = World(outages=3)
    await consumer(world, FakeSource(world, [[body({"id": "a"})]])).run(asyncio.Event())
    assert world.journal == [
        *["begin", "outage"] * 3,
        "begin",
        "accept a",
        "commit",
        "ack 1",
        "wake",
    ]


async def test_stopping_while_the_database_is_away_leaves_the_batch_unacknowledged() -> None:
    world = World(outages=10**6)
    stopping = asyncio.Event()
    source = FakeSource(world, [[body({"id": "a"})]])
    run = asyncio.create_task(consumer(world, source).run(stopping))

    async def waited_out_three() -> bool:
        return world.journal.count("outage") >= 3

    await eventually(waited_out_three)
    stopping.set()
    await run
    assert not any(entry.startswith("ack") for entry in world.journal)


async def test_a_broken_link_opens_the_source_again_and_the_batch_comes_again() -> None:
    world = World()
    source = FakeSource(world, [[body({"id": "a"})]], ack_fails=1)
    await consumer(world, source).run(asyncio.Event())
    assert source.opened == 2
    # The second delivery is a duplicate of the committed first: nothing is made twice.
    assert world.journal == [
        "begin",
        "accept a",
        "commit",
        "begin",
        "accept a",
        "commit",
        "ack 1",
    ]
    assert world.committed == {"a"}


async def test_an_event_that_fails_alone_is_dead_lettered_and_holds_up_no_other() -> None:
    world = World(poison={"p"})
    ids = ["a", "b", "p", "c", "d"]
    source = FakeSource(world, [[body({"id": i}) for i in ids]])
    await consumer(world, source).run(asyncio.Event())
    assert world.committed == {"a", "b", "c", "d"}
    assert [letter.item.body for letter in source.letters] == [body({"id": "p"})]
    assert source.letters[0].reason == loop.DEFECT_REASON
    assert [c for _, c in world.calls].count(["p"]) == loop.DEFECT_TRIES
    acks = [entry for entry in world.journal if entry.startswith("ack")]
    assert sum(int(a.split()[1]) for a in acks) == len(ids)  # each acknowledged once, in order


async def test_a_shared_queue_accepts_each_organizations_events_for_it() -> None:
    world = World()
    source = FakeSource(
        world,
        [
            [
                body({"id": "a", "organization": str(ORG)}),
                body({"id": "b", "organization": str(OTHER)}),
                body({"id": "c", "organization": str(ORG)}),
            ]
        ],
    )
    await consumer(world, source, Routing.several([ORG, OTHER])).run(asyncio.Event())
    assert sorted(world.calls) == sorted([(ORG, ["a", "c"]), (OTHER, ["b"])])


async def test_more_events_than_one_call_takes_are_accepted_in_several_calls() -> None:
    world = World()
    count = loop.EVENTS_PER_ACCEPT + 5
    source = FakeSource(world, [[body({"id": f"e{n}"}) for n in range(count)]])
    await consumer(world, source).run(asyncio.Event())
    assert [len(ids) for _, ids in world.calls] == [loop.EVENTS_PER_ACCEPT, 5]
    assert world.journal.count("commit") == 1
    assert len(world.committed) == count


# Settings.


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("BULLETIN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_the_consumer_defaults(clean_environment: None) -> None:
    settings = Settings()
    assert settings.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert "guest:guest" not in repr(settings)
    assert "guest:guest" not in str(settings.amqp_url)
    assert settings.consume_queue == "bulletin.events"
    assert settings.consume_prefetch == 1000
    assert settings.consume_batch_ms == 20
    assert settings.consume_org_ids == ()


def test_a_list_of_organizations_is_read_and_tidied(
    clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULLETIN_CONSUME_ORGS", f" {ORG} ,{OTHER},,{ORG}".upper())
    settings = Settings()
    assert settings.consume_org_ids == (ORG, OTHER)
    assert settings.consume_names_organizations


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("AMQP_URL", "http://user:hunter2@host/", "amqp:// or amqps://"),
        ("AMQP_URL", "amqp://user:hunter2@host:99999/", "not a URL"),
        ("AMQP_URL", "amqp://user:hunter2@:5672/", "no host"),
        ("AMQP_URL", "amqp://user:hunter2@host:0/", "port 0"),
        ("CONSUME_QUEUE", "", "1 to 250 bytes"),
        ("CONSUME_QUEUE", "q" * 251, "1 to 250 bytes"),
        ("CONSUME_QUEUE", "amq.mine", "reserved"),
        ("CONSUME_QUEUE", "a\nb", "control characters"),
        ("CONSUME_ORG", "acme", "UUID"),
        ("CONSUME_ORGS", "acme,hunter2", "not an organization id"),
        ("CONSUME_ORGS", " , ", "names no organization"),
        ("CONSUME_PREFETCH", "0", "greater than or equal to 1"),
        ("CONSUME_PREFETCH", "100000", "less than or equal to 10000"),
        ("CONSUME_PREFETCH", "many", "valid integer"),
        ("CONSUME_BATCH_MS", "-1", "greater than or equal to 0"),
        ("CONSUME_BATCH_MS", "3600000", "less than or equal to 10000"),
    ],
)
def test_nonsense_is_refused_saying_which_setting_and_why_never_echoing_it(
    clean_environment: None, monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    monkeypatch.setenv(f"BULLETIN_{name}", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    text = str(refused.value)
    assert name.lower() in text
    assert said in text
    assert "hunter2" not in text


def test_one_organization_and_a_list_of_them_together_are_refused(
    clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULLETIN_CONSUME_ORG", str(ORG))
    monkeypatch.setenv("BULLETIN_CONSUME_ORGS", str(OTHER))
    with pytest.raises(ValidationError, match="not both"):
        Settings()


def test_the_errors_header_of_a_dead_letter_stays_small() -> None:
    errors = [
        {"loc": ["recipients", n], "message": "unknown recipient", "type": "x"} for n in range(5000)
    ]
    header = errors_header(errors)
    assert len(header) <= MAX_ERRORS_CHARACTERS
    kept = json.loads(header)
    assert kept[0] == errors[0]
    assert kept[-1]["type"] == "more_errors"
    assert kept[-1]["message"] == f"and {5000 - (len(kept) - 1)} more"
    assert json.loads(errors_header(errors[:3])) == errors[:3]
