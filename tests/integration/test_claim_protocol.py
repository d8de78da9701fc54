"""The claim protocol of docs/architecture.md, exercised on the real repository and databases."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import event, select, update

from bulletin.db import Database, utcnow
from bulletin.deliveries import queue, repository
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery, DeliveryEvent
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.states import DeliveryState
from bulletin.messages.models import Message
from support.db_factories import (
    delivery_rows,
    insert_announcement,
    insert_people,
    new_org,
    person_row,
)

LEASE = dt.timedelta(seconds=30)


async def _resolve_all(db: Database, message: Message, chunk: int = 1000) -> None:
    while True:
        async with db.transaction() as session:
            fresh = await session.get(Message, message.id)
            assert fresh is not None
            _, done = await resolve_chunk(session, fresh, chunk)
        if done:
            return


async def _claim(db: Database, limit: int = 100) -> list[queue.ClaimedRow]:
    now = utcnow()
    async with db.transaction() as session:
        return await queue.claim(session, now, now + LEASE, limit)


async def _complete(db: Database, outcomes: list[Outcome]) -> list[Outcome]:
    async with db.transaction() as session:
        return await queue.complete(session, outcomes, utcnow())


async def test_claim_takes_due_pending_rows_once(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(5)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)

    first = await _claim(db, limit=3)
    second = await _claim(db, limit=10)
    third = await _claim(db)

    assert len(first) == 3
    assert len(second) == 2
    assert third == []
    assert {r.id for r in first}.isdisjoint({r.id for r in second})
    assert all(r.attempt == 1 and r.send_attempts == 1 for r in first + second)
    rows = await delivery_rows(db, message.id)
    assert {d.state for d in rows} == {"sending"}
    assert all(d.lease_expires_at is not None and d.lease_expires_at > utcnow() for d in rows)


async def test_claim_ignores_rows_not_yet_due(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    later = utcnow() + dt.timedelta(minutes=5)
    message = await insert_announcement(db, org, send_at=later.isoformat())
    await _resolve_all(db, message)
    assert await _claim(db) == []
    async with db.read() as session:
        assert await repository.next_due(session) == later


async def test_completion_is_fenced_by_attempt(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    [row] = await _claim(db)

    # The lease runs out; the delivery goes back to pending and another worker claims it.
    async with db.transaction() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.id == row.id)
            .values(state="pending", lease_expires_at=None)
        )
    [again] = await _claim(db)
    assert again.id == row.id
    assert again.attempt == row.attempt + 1

    zombie = Outcome(row.id, row.attempt, DeliveryState.FAILED, detail="zombie")
    assert await _complete(db, [zombie]) == []
    owner = Outcome(
        row.id, again.attempt, DeliveryState.SENT, provider="p", provider_message_id="x"
    )
    assert await _complete(db, [owner]) == [owner]
    # A repeat of the same completion changes nothing.
    assert await _complete(db, [owner]) == []

    [delivery] = await delivery_rows(db, message.id)
    assert delivery.state == "sent"
    assert delivery.provider_message_id == "x"
    assert delivery.lease_expires_at is None
    async with db.read() as session:
        events = await repository.events(session, row.id)
    assert [(e.state, e.attempt) for e in events] == [("sending", 1), ("sending", 2), ("sent", 2)]


async def test_proof_of_acceptance_settles_unknown_of_same_attempt_only(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1), person_row(2)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    rows = await _claim(db)
    a, b = rows
    unknown = [
        Outcome(r.id, r.attempt, DeliveryState.UNKNOWN, detail="lease expired") for r in rows
    ]
    assert len(await _complete(db, unknown)) == 2

    late_success = Outcome(a.id, a.attempt, DeliveryState.SENT, provider_message_id="late")
    late_failure = Outcome(b.id, b.attempt, DeliveryState.FAILED, detail="late failure")
    wrong_attempt = Outcome(b.id, b.attempt + 1, DeliveryState.SENT, provider_message_id="no")
    applied = await _complete(db, [late_success, late_failure, wrong_attempt])

    assert applied == [late_success]
    states = {d.id: d.state for d in await delivery_rows(db, message.id)}
    assert states == {a.id: "sent", b.id: "unknown"}


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_concurrent_claims_never_share_a_row(db: Database) -> None:
    """G1 where claims really overlap: 20 transactions begin together, then each claims.

    PostgreSQL only: SQLite writers take turns, so there a claim without row locks would
    pass too. Here a claim that does not lock and skip the rows another claim holds takes
    them a second time.
    """
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(300)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message, chunk=128)
    claimers = 20
    all_begun = asyncio.Barrier(claimers)

    async def claim_with_the_others() -> list[queue.ClaimedRow]:
        async with db.transaction() as session:
            await session.execute(select(1))  # holds a connection, in its transaction
            await all_begun.wait()
            now = utcnow()
            return await queue.claim(session, now, now + LEASE, 20)

    batches = await asyncio.gather(*[claim_with_the_others() for _ in range(claimers)])
    claimed = [r.id for batch in batches for r in batch]
    assert len(claimed) == len(set(claimed))
    assert len(claimed) == 300
    assert {d.attempt for d in await delivery_rows(db, message.id)} == {1}


async def test_resolution_is_idempotent_and_resumable(db: Database) -> None:
    org = await new_org(db)
    await insert_people(
        db,
        org,
        [person_row(i, groups=["sales", "north"] if i % 2 else ["sales"]) for i in range(50)],
    )
    message = await insert_announcement(db, org, {"groups": ["sales", "north"]})

    # A first attempt writes a chunk and then dies before committing.
    async def crash_after_one_chunk() -> None:
        async with db.transaction() as session:
            fresh = await session.get(Message, message.id)
            assert fresh is not None
            await resolve_chunk(session, fresh, 20)
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        await crash_after_one_chunk()
    assert await delivery_rows(db, message.id) == []

    # Chunks commit one by one; replaying a chunk whose cursor was lost makes nothing twice.
    async with db.transaction() as session:
        fresh = await session.get(Message, message.id)
        assert fresh is not None
        await resolve_chunk(session, fresh, 20)
    async with db.transaction() as session:
        fresh = await session.get(Message, message.id)
        assert fresh is not None
        fresh.resolve_cursor = 0  # as if the cursor update had been lost
        fresh.audience_size = 0
    await _resolve_all(db, message, chunk=20)

    rows = await delivery_rows(db, message.id)
    assert len(rows) == 50
    assert len({d.recipient_id for d in rows}) == 50


async def test_routing_all_makes_one_delivery_per_channel(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1, phone="+27821234567", whatsapp="+27821234567")])
    message = await insert_announcement(db, org, channels=["email", "sms"], routing="all")
    await _resolve_all(db, message)
    assert sorted(d.channel for d in await delivery_rows(db, message.id)) == ["email", "sms"]


async def test_routing_first_picks_the_first_usable_channel(db: Database) -> None:
    org = await new_org(db)
    ids = await insert_people(
        db,
        org,
        [
            person_row(1, whatsapp="+27821234567"),  # whatsapp first
            person_row(2),  # email only
            person_row(3, email=None, phone="+27821234568"),  # sms only
        ],
    )
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    channel_of = {d.recipient_id: d.channel for d in await delivery_rows(db, message.id)}
    assert channel_of == {ids["p1"]: "whatsapp", ids["p2"]: "email", ids["p3"]: "sms"}


async def test_cancel_pending_records_an_event_for_each(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(4)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    [claimed] = await _claim(db, limit=1)
    async with db.transaction() as session:
        cancelled = await repository.cancel_pending(session, message.id, utcnow())
    assert cancelled == 3
    rows = await delivery_rows(db, message.id)
    assert sorted(d.state for d in rows) == ["cancelled"] * 3 + ["sending"]
    async with db.read() as session:
        events = (
            (await session.execute(select(DeliveryEvent).where(DeliveryEvent.state == "cancelled")))
            .scalars()
            .all()
        )
    assert sorted(e.delivery_id for e in events) == sorted(d.id for d in rows if d.id != claimed.id)


async def test_expired_leases_are_found(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1), person_row(2)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    a, _b = await _claim(db)
    async with db.transaction() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.id == a.id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    async with db.transaction() as session:
        expired = await queue.expired_leases(session, utcnow(), 10)
    assert [r.id for r in expired] == [a.id]


def _rows_touched(plan: dict[str, Any]) -> int:
    """Rows every node of an EXPLAIN ANALYZE plan produced, over all its loops."""
    own = int(plan.get("Actual Rows", 0)) * int(plan.get("Actual Loops", 1))
    removed = int(plan.get("Rows Removed by Join Filter", 0)) + int(
        plan.get("Rows Removed by Filter", 0)
    )
    return own + removed + sum(_rows_touched(p) for p in plan.get("Plans", []))


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    "audience",
    [{"groups": ["sales", "north"]}, {"all": True}, {"recipients": [f"p{i}" for i in range(3000)]}],
    ids=["groups", "all", "recipients"],
)
async def test_resolution_work_is_linear_without_planner_statistics(
    db: Database, audience: dict[str, Any]
) -> None:
    """Right after a bulk import PostgreSQL has no statistics; plans must not go quadratic.

    Counts rows processed by the plan (EXPLAIN ANALYZE), not time, so it is not a timing test.
    """
    org = await new_org(db)
    await insert_people(db, org, [person_row(i, groups=["sales", "north"]) for i in range(3000)])
    message = await insert_announcement(db, org, audience)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        captured.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    async with db.transaction() as session:
        fresh = await session.get(Message, message.id)
        assert fresh is not None
        await resolve_chunk(session, fresh, 5000)
        await session.rollback()
    event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    chosen = [
        (sql, params)
        for sql, params in captured
        if sql.lstrip().startswith(("SELECT count(*)", "INSERT INTO deliveries"))
    ]
    assert len(chosen) == 2
    for sql, params in chosen:
        async with db.engine.connect() as conn:
            result = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            plan = result.scalar_one()
            await conn.rollback()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        touched = _rows_touched(plan[0]["Plan"])
        assert touched < 20 * 3000, f"{touched} rows touched for 3,000 recipients:\n{sql}"


async def _cancel_message(db: Database, message: Message) -> int:
    async with db.transaction() as session:
        await session.execute(
            update(Message).where(Message.id == message.id).values(state="cancelled")
        )
        return await repository.cancel_pending(session, message.id, utcnow())


async def test_a_send_in_flight_at_cancel_that_must_be_retried_is_cancelled_not_resent(
    db: Database,
) -> None:
    """G5: the delivery was sending when the cancel came; its send then failed for a while.
    It must end cancelled, and no later claim may start it again."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    (claimed,) = await _claim(db)

    assert await _cancel_message(db, message) == 0  # it was in flight, not pending
    retry = Outcome(claimed.id, claimed.attempt, DeliveryState.PENDING, "will retry", utcnow())
    assert len(await _complete(db, [retry])) == 1

    assert await _claim(db) == []
    (delivery,) = await delivery_rows(db, message.id)
    assert delivery.state == "cancelled"
    assert delivery.reason == "message cancelled"


async def test_claims_pass_pending_deliveries_of_cancelled_messages_and_tidying_ends_them(
    db: Database,
) -> None:
    """A retry written in the same instant as the cancel can leave a delivery pending in a
    cancelled message: no claim starts it, and the scheduler's tidying cancels it."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(1), person_row(2)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    async with db.transaction() as session:
        await session.execute(
            update(Message).where(Message.id == message.id).values(state="cancelled")
        )

    assert await _claim(db) == []
    async with db.transaction() as session:
        assert await repository.cancel_orphans(session, utcnow()) == 2
    assert {d.state for d in await delivery_rows(db, message.id)} == {"cancelled"}


async def test_a_late_hand_back_of_the_same_attempt_undoes_unknown(db: Database) -> None:
    """The database was away longer than the lease: the reaper made the delivery unknown,
    then the worker could finally write that it never called the provider. That is
    certain, so the delivery goes back to the queue; a later attempt's hand-back is not."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    message = await insert_announcement(db, org)
    await _resolve_all(db, message)
    [row] = await _claim(db)
    doubt = Outcome(row.id, row.attempt, DeliveryState.UNKNOWN, "the worker's lease expired")
    assert await _complete(db, [doubt]) == [doubt]

    stale = Outcome(row.id, row.attempt - 1, DeliveryState.PENDING, "released", gave_back=True)
    assert await _complete(db, [stale]) == []
    failure = Outcome(row.id, row.attempt, DeliveryState.PENDING, "will retry", utcnow())
    assert await _complete(db, [failure]) == []  # a failed call may have reached it
    released = Outcome(
        row.id,
        row.attempt,
        DeliveryState.PENDING,
        "released: database unavailable",
        utcnow(),
        gave_back=True,
    )
    assert await _complete(db, [released]) == [released]
    [delivery] = await delivery_rows(db, message.id)
    assert delivery.state == "pending"
    assert delivery.send_attempts == row.send_attempts - 1
