"""Status out: the outbox written with each change, and the sender that delivers it, signed,
retried and fenced, to a local receiver that verifies every request with the Standard
Webhooks reference package."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from structlog.testing import capture_logs

from bulletin.bootstrap import running
from bulletin.channels.egress import AddrInfo
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings, parse_delays
from bulletin.db import Database, utcnow
from bulletin.deliveries import progress, queue
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.states import DeliveryState
from bulletin.messages.models import Message
from bulletin.metrics import WEBHOOK_ENDPOINTS_FAILING, WEBHOOKS_SENT
from bulletin.sandbox.provider import SandboxProvider
from bulletin.subscriptions import kinds, sender
from bulletin.subscriptions import outbox_repository as outbox
from bulletin.subscriptions import service as endpoints
from bulletin.subscriptions.dispatcher import WebhookDispatcher
from bulletin.subscriptions.models import (
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
    WebhookSubscription,
)
from bulletin.subscriptions.outbox_repository import Claimed
from bulletin.subscriptions.schemas import EndpointIn
from conftest import make_settings
from support.db_factories import (
    delivery_rows,
    insert_announcement,
    insert_people,
    new_org,
    person_row,
)
from support.waiting import eventually
from support.webhook_receiver import Receiver

EVERY_KIND = list(kinds.KINDS)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(
        database_url,
        allow_private_provider_addresses=True,
        webhook_retry_delays="0s,0s",
        webhook_timeout_seconds=2,
        webhook_lease_seconds=10,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = await Receiver().start()
    yield found
    await found.close()


async def add_endpoint(
    db: Database, org: uuid.UUID, url: str, wanted: Sequence[str] = EVERY_KIND
) -> tuple[uuid.UUID, str]:
    """An active endpoint of ``org`` made by the endpoints service; its id and secret."""
    async with db.transaction() as session:
        made = await endpoints.create_endpoint(
            session, None, org, EndpointIn(url=url, kinds=list(wanted)), allow_private=True
        )
    assert made.secret is not None
    return made.id, made.secret


async def outbox_rows(db: Database) -> list[WebhookMessage]:
    async with db.read() as session:
        rows = await session.execute(select(WebhookMessage).order_by(WebhookMessage.id))
        return list(rows.scalars())


async def all_settled(db: Database) -> bool:
    rows = await outbox_rows(db)
    return bool(rows) and all(r.state != "pending" for r in rows)


def engine(settings: Settings, db: Database) -> Any:
    return running(
        settings,
        dispatch=True,
        schedule=True,
        db=db,
        registry=ChannelRegistry(SandboxProvider(db)),
    )


# --- Through the engine ---------------------------------------------------------------------


async def test_the_events_of_an_announcement_reach_the_receiver_signed(
    settings: Settings, db: Database, receiver: Receiver
) -> None:
    org = await new_org(db)
    _, receiver.secret = await add_endpoint(db, org, receiver.url)
    await insert_people(db, org, [person_row(i) for i in range(20)])
    message = await insert_announcement(db, org, channels=["email"])
    async with engine(settings, db):
        await eventually(lambda: _completed_told(receiver, message.id))
        await eventually(lambda: all_settled(db))

    assert receiver.refused == []
    deliveries = await delivery_rows(db, message.id)
    sent = receiver.payloads("delivery.sent")
    assert sorted(p["data"]["delivery_id"] for p in sent) == sorted(d.id for d in deliveries)
    first = next(p for p in sent if p["data"]["recipient"] == "p3")
    assert first["data"] == {
        "delivery_id": first["data"]["delivery_id"],
        "message_id": str(message.id),
        "message_kind": "announcement",
        "recipient": "p3",
        "channel": "email",
        "state": "sent",
        "detail": "accepted by sandbox",
        "attempt": 1,
    }
    assert dt.datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    [completed] = receiver.payloads(kinds.MESSAGE_COMPLETED)
    assert completed["data"] == {"message_id": str(message.id), "message_kind": "announcement"}
    # Every outbox row was delivered once, under the id derived from it.
    rows = await outbox_rows(db)
    assert {f"msg_{r.id}" for r in rows} == set(receiver.by_id)
    assert all(r.state == "delivered" and r.attempts == 1 and r.last_status == 200 for r in rows)
    assert all(len(tries) == 1 for tries in receiver.by_id.values())


async def _completed_told(receiver: Receiver, message_id: uuid.UUID) -> bool:
    return any(
        p["data"]["message_id"] == str(message_id)
        for p in receiver.payloads(kinds.MESSAGE_COMPLETED)
    )


async def test_a_500_is_retried_with_the_same_webhook_id_and_body(
    settings: Settings, db: Database, receiver: Receiver
) -> None:
    receiver.answer = lambda _id, nth: 500 if nth < 3 else 204
    org = await new_org(db)
    _, receiver.secret = await add_endpoint(db, org, receiver.url, [kinds.MESSAGE_CANCELLED])
    message = await insert_announcement(db, org, send_at=utcnow() + dt.timedelta(hours=1))
    async with db.transaction() as session:
        await progress.cancel(session, org, message.id, "announcement")
    async with engine(settings, db):
        await eventually(lambda: all_settled(db))

    [row] = await outbox_rows(db)
    tries = receiver.by_id[f"msg_{row.id}"]
    assert len(tries) == 3
    assert len({t.body for t in tries}) == 1
    assert tries[0].payload["type"] == "message.cancelled"
    assert (row.state, row.attempts, row.last_status) == ("delivered", 3, 204)
    async with db.read() as session:
        history = (
            await session.execute(
                select(WebhookAttempt.status_code)
                .where(WebhookAttempt.webhook_message_id == row.id)
                .order_by(WebhookAttempt.id)
            )
        ).scalars()
        assert list(history) == [500, 500, 204]


async def test_used_up_retries_fail_the_row_and_the_endpoint(
    settings: Settings, db: Database, receiver: Receiver
) -> None:
    receiver.answer = lambda _id, _nth: 503
    org = await new_org(db)
    endpoint_id, receiver.secret = await add_endpoint(db, org, receiver.url)
    await insert_people(db, org, [person_row(1)])
    failing_before = WEBHOOK_ENDPOINTS_FAILING._value.get()
    failed_before = WEBHOOKS_SENT.labels(outcome="failed")._value.get()
    with capture_logs() as logs:
        async with engine(settings, db):
            await insert_announcement(db, org, channels=["email"])
            await eventually(lambda: _endpoint_state(db, endpoint_id, "failing"))

    # Three tries (the first and two retries), then the row failed and the endpoint stopped.
    failed = [r for r in await outbox_rows(db) if r.state == "failed"]
    assert failed
    assert all(r.attempts == 3 and r.last_status == 503 for r in failed)
    assert all(len(receiver.by_id[f"msg_{r.id}"]) == 3 for r in failed)
    async with db.read() as session:
        endpoint = await session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        assert endpoint.failing_since is not None
        subscriptions = await session.scalar(select(func.count()).select_from(WebhookSubscription))
        assert subscriptions == 0
    assert WEBHOOK_ENDPOINTS_FAILING._value.get() == failing_before + 1
    assert WEBHOOKS_SENT.labels(outcome="failed")._value.get() >= failed_before + 1
    [line] = [entry for entry in logs if entry["event"] == "webhooks.endpoint_failing"]
    assert line["endpoint_id"] == str(endpoint_id)
    assert receiver.secret not in repr(logs)

    # A failing endpoint is told nothing new.
    before = len(await outbox_rows(db))
    await insert_people(db, org, [person_row(2)])
    async with engine(settings, db):
        message = await insert_announcement(db, org, channels=["email"])
        await eventually(lambda: _message_state(db, message.id, "completed"))
    assert len(await outbox_rows(db)) == before


async def _endpoint_state(db: Database, endpoint_id: uuid.UUID, state: str) -> bool:
    async with db.read() as session:
        endpoint = await session.get(WebhookEndpoint, endpoint_id)
        return endpoint is not None and endpoint.state == state


async def _message_state(db: Database, message_id: uuid.UUID, state: str) -> bool:
    async with db.read() as session:
        message = await session.get(Message, message_id)
        return message is not None and message.state == state


async def test_only_the_kinds_an_endpoint_wants_and_only_its_organization(
    settings: Settings, db: Database, receiver: Receiver
) -> None:
    org, other = await new_org(db), await new_org(db, "Other")
    _, receiver.secret = await add_endpoint(db, org, receiver.url, [kinds.MESSAGE_COMPLETED])
    await insert_people(db, org, [person_row(i) for i in range(3)])
    await insert_people(db, other, [person_row(i) for i in range(3)])
    mine = await insert_announcement(db, org, channels=["email"])
    theirs = await insert_announcement(db, other, channels=["email"])
    async with engine(settings, db):
        await eventually(lambda: _message_state(db, theirs.id, "completed"))
        await eventually(lambda: _completed_told(receiver, mine.id))
        await eventually(lambda: all_settled(db))
    assert [p["type"] for p in receiver.payloads()] == ["message.completed"]
    assert {r.org_id for r in await outbox_rows(db)} == {org}


# --- The outbox insert ----------------------------------------------------------------------


def count_outbox_inserts(db: Database) -> list[str]:
    """Every statement run on ``db``'s engine from now on (a listener, for this test)."""
    seen: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def _seen(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    return seen


async def claimed_batch(db: Database, org: uuid.UUID, people: int) -> list[queue.ClaimedRow]:
    await insert_people(db, org, [person_row(i) for i in range(people)])
    message = await insert_announcement(db, org, channels=["email"])
    async with db.transaction() as session:
        loaded = await session.get(Message, message.id)
        assert loaded is not None
        await resolve_chunk(session, loaded, 10_000)
    now = utcnow()
    async with db.transaction() as session:
        return await queue.claim(session, now, now + dt.timedelta(seconds=60), 10_000, "test")


def sent(rows: Sequence[queue.ClaimedRow]) -> list[Outcome]:
    return [Outcome(r.id, r.attempt, DeliveryState.SENT, None, provider="sandbox") for r in rows]


@pytest.mark.parametrize("people", [1, 300])
async def test_one_outbox_statement_per_batch_of_changes_none_for_a_claim(
    db: Database, people: int
) -> None:
    """The send path pays one statement per completed batch, whatever its size, and none for
    a claim (``sending`` is not told); without any endpoint it writes no row."""
    org = await new_org(db)
    statements = count_outbox_inserts(db)
    rows = await claimed_batch(db, org, people)
    assert len(rows) == people
    assert not [s for s in statements if "INSERT INTO webhook_messages" in s]
    async with db.transaction() as session:
        applied = await queue.complete(session, sent(rows), utcnow())
    assert len(applied) == people
    assert len([s for s in statements if "INSERT INTO webhook_messages" in s]) == 1
    assert await outbox_rows(db) == []


async def test_each_change_is_written_once_per_subscribed_endpoint(
    db: Database, receiver: Receiver
) -> None:
    org = await new_org(db)
    one, _ = await add_endpoint(db, org, receiver.url, ["delivery.sent"])
    two, _ = await add_endpoint(db, org, receiver.url, ["delivery.sent", "delivery.failed"])
    await add_endpoint(db, org, receiver.url, ["delivery.delivered"])
    rows = await claimed_batch(db, org, 5)
    async with db.transaction() as session:
        await queue.complete(session, sent(rows), utcnow())
    written = await outbox_rows(db)
    assert sorted((r.endpoint_id, r.delivery_id) for r in written) == sorted(
        (e, r.id) for e in (one, two) for r in rows
    )
    assert {r.kind for r in written} == {"delivery.sent"}
    assert all(r.delivery_event_id is not None and r.state == "pending" for r in written)


async def test_the_outbox_row_is_rolled_back_with_its_change(
    db: Database, receiver: Receiver
) -> None:
    org = await new_org(db)
    await add_endpoint(db, org, receiver.url)
    rows = await claimed_batch(db, org, 3)
    written: list[int] = []

    async def change_then_fail() -> None:
        async with db.transaction() as session:
            await queue.complete(session, sent(rows), utcnow())
            written.extend(await _count_outbox(session))
            raise RuntimeError("the transaction fails after the change")

    with pytest.raises(RuntimeError):
        await change_then_fail()
    assert len(written) == 3
    assert await outbox_rows(db) == []
    assert {d.state for d in await delivery_rows(db, rows[0].message_id)} == {"sending"}


async def _count_outbox(session: Any) -> list[int]:
    return list((await session.execute(select(WebhookMessage.id))).scalars())


# --- The sender on its own ------------------------------------------------------------------


async def test_a_claim_is_fenced_a_stale_result_changes_nothing(
    settings: Settings, db: Database, receiver: Receiver
) -> None:
    org = await new_org(db)
    endpoint_id, _ = await add_endpoint(db, org, receiver.url)
    async with db.transaction() as session:
        await endpoints.send_test(session, org, endpoint_id)
    now = utcnow()
    async with db.transaction() as session:
        [first] = await outbox.claim(
            session, now, now - dt.timedelta(seconds=1), limit=10, per_endpoint=10
        )
    # Its lease is over: another worker takes it again.
    async with db.transaction() as session:
        [second] = await outbox.claim(
            session, utcnow(), utcnow() + dt.timedelta(seconds=60), limit=10, per_endpoint=10
        )
    assert (first.id, first.attempts, second.attempts) == (second.id, 1, 2)
    stale = outbox.Result(first.id, endpoint_id, first.attempts, "failed", None, True, now, 500)
    async with db.transaction() as session:
        assert await outbox.record_results(session, [stale], utcnow()) == []
        assert await outbox.mark_failing(session, set(), utcnow()) == []
    [row] = await outbox_rows(db)
    assert (row.state, row.attempts) == ("pending", 2)


async def test_an_endpoint_at_an_internal_address_is_refused_when_connecting(
    database_url: str, db: Database, receiver: Receiver
) -> None:
    """With private addresses not allowed, a public-looking name that resolves to this
    machine is refused at connect time: the receiver hears nothing."""
    org = await new_org(db)
    endpoint_id, _ = await add_endpoint(db, org, f"https://hooks.example.com:{receiver.port}/")
    async with db.transaction() as session:
        await endpoints.send_test(session, org, endpoint_id)

    async def to_loopback(host: str, port: int) -> Sequence[AddrInfo]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    strict = make_settings(database_url, webhook_retry_delays="1h")
    webhooks = WebhookDispatcher(db, strict, resolver=to_loopback)
    stopping = asyncio.Event()
    task = asyncio.create_task(webhooks.run(stopping))

    async def tried() -> bool:
        rows = await outbox_rows(db)
        return bool(rows) and rows[0].last_error is not None

    await eventually(tried)
    stopping.set()
    await task
    [row] = await outbox_rows(db)
    assert row.last_error == "the address is not allowed (it resolves to a non-public address)"
    assert (row.state, row.last_status) == ("pending", None)
    assert receiver.received == []


async def test_rows_of_a_disabled_endpoint_wait_and_go_out_once_it_is_enabled(
    settings: Settings, db: Database, receiver: Receiver
) -> None:
    org = await new_org(db)
    endpoint_id, receiver.secret = await add_endpoint(db, org, receiver.url)
    async with db.transaction() as session:
        await endpoints.send_test(session, org, endpoint_id)
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(state="disabled")
        )
    async with engine(settings, db) as services:
        await eventually(lambda: _nothing_held(services))
        assert receiver.received == []
        async with db.transaction() as session:
            await endpoints.set_enabled(session, org, endpoint_id, True)
        await eventually(lambda: all_settled(db))
    [test] = receiver.payloads()
    assert test["type"] == "webhook.test"
    assert test["data"] == {"endpoint_id": str(endpoint_id), "test": True}


async def _nothing_held(services: Any) -> bool:
    # One idle round of the sender at least: it looked, and found nothing it may send.
    webhooks: WebhookDispatcher = services.engine.webhooks
    return webhooks.held == 0


# --- Pure pieces ----------------------------------------------------------------------------


def test_the_default_retry_schedule_spans_about_three_days() -> None:
    delays = parse_delays(Settings.model_fields["webhook_retry_delays"].default)
    assert len(delays) == 9
    assert 2.5 * 86400 < sum(delays) < 3.5 * 86400
    with pytest.raises(ValueError, match="not a duration"):
        parse_delays("5s,soon")


def test_after_an_attempt_retry_then_fail() -> None:
    now = utcnow()
    delays = (5.0, 300.0)
    ok = sender.Answer(204, None, 3)
    bad = sender.Answer(500, None, 3)
    busy = sender.Answer(429, None, 3, retry_after=60.0)
    assert sender.after_attempt(ok, 3, delays, now) == ("delivered", None)
    assert sender.after_attempt(bad, 1, delays, now) == ("pending", now + dt.timedelta(seconds=5))
    assert sender.after_attempt(bad, 2, delays, now)[1] == now + dt.timedelta(seconds=300)
    assert sender.after_attempt(bad, 3, delays, now) == ("failed", None)
    # The endpoint's Retry-After is honoured when longer, up to the longest delay.
    assert sender.after_attempt(busy, 1, delays, now)[1] == now + dt.timedelta(seconds=60)


def test_the_body_is_compact_json_of_the_row() -> None:
    row = Claimed(
        7, uuid.uuid4(), uuid.uuid4(), "message.completed",
        dt.datetime(2026, 12, 3, 20, 0, tzinfo=dt.UTC), None, uuid.UUID(int=1),
        "notification", None, None, None, None, None, 1,
    )  # fmt: skip
    body = sender.body(row)
    assert b" " not in body
    assert json.loads(body) == {
        "type": "message.completed",
        "timestamp": "2026-12-03T20:00:00Z",
        "data": {"message_id": str(uuid.UUID(int=1)), "message_kind": "notification"},
    }
