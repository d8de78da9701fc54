"""The delivery engine end to end below HTTP: scheduler, dispatcher, providers, database."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from bulletin.bootstrap import running
from bulletin.channels.base import Accepted, OutboundMessage
from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.deliveries import progress
from bulletin.deliveries.models import Delivery
from bulletin.errors import InDoubtSendError, PermanentSendError, TransientSendError
from bulletin.messages.models import Message
from bulletin.sandbox.models import SandboxMessage
from bulletin.sandbox.provider import SandboxProvider
from bulletin.worker import dispatcher
from conftest import make_settings
from support.db_factories import (
    count_states,
    delivery_rows,
    insert_announcement,
    insert_people,
    new_org,
    person_row,
)
from support.waiting import eventually


def message_state(db: Database, message_id: object, state: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with db.read() as session:
            message = await session.get(Message, message_id)
            return message is not None and message.state == state

    return check


class CountingSandbox(SandboxProvider):
    """The real sandbox, plus a count of every call made to it."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.calls: Counter[int] = Counter()

    async def send(self, message: OutboundMessage) -> Accepted:
        self.calls[message.delivery_id] += 1
        return await super().send(message)


async def sandbox_rows(db: Database) -> list[SandboxMessage]:
    async with db.read() as session:
        return list((await session.execute(select(SandboxMessage))).scalars())


async def test_each_recipient_is_sent_once(settings: Settings, db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(300)])
    message = await insert_announcement(db, org)
    sandbox = CountingSandbox(db)
    async with running(
        settings, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(sandbox)
    ):
        await eventually(message_state(db, message.id, "completed"))
    rows = await sandbox_rows(db)
    assert len(rows) == 300
    assert {r.recipient_external_id for r in rows} == {f"p{i}" for i in range(300)}
    assert all(r.attempts == 1 for r in rows)
    assert set(sandbox.calls.values()) == {1}
    assert await count_states(db, message.id) == {"sent": 300}


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_many_workers_and_schedulers_send_each_recipient_once(settings: Settings) -> None:
    """G1 and G2 under contention: 4 dispatchers and 2 schedulers, each with its own pool."""
    setup = Database(settings.database_url)
    org = await new_org(setup)
    await insert_people(
        setup, org, [person_row(i, groups=["all-staff", "site-a"]) for i in range(2000)]
    )
    message = await insert_announcement(setup, org, {"groups": ["all-staff", "site-a"]})
    tuned = make_settings(settings.database_url, claim_batch_size=50, resolve_chunk_size=250)

    databases = [Database(settings.database_url, pool_size=4) for _ in range(6)]
    sandboxes = [CountingSandbox(d) for d in databases]
    roles = [(True, False)] * 4 + [(False, True)] * 2  # (dispatch, schedule)
    async with contextlib.AsyncExitStack() as processes:
        for (dispatch, schedule), database, sandbox in zip(
            roles, databases, sandboxes, strict=True
        ):
            await processes.enter_async_context(
                running(
                    tuned,
                    dispatch=dispatch,
                    schedule=schedule,
                    db=database,
                    registry=ChannelRegistry(sandbox),
                )
            )
        await eventually(message_state(setup, message.id, "completed"), timeout=60)

    calls: Counter[int] = sum((s.calls for s in sandboxes), Counter())
    rows = await sandbox_rows(setup)
    assert len(calls) == 2000
    assert set(calls.values()) == {1}, "a delivery was handed over twice"
    assert len(rows) == 2000
    assert len({r.recipient_external_id for r in rows}) == 2000
    assert all(r.attempts == 1 for r in rows)
    busy = [s for s in sandboxes[:4] if s.calls]
    assert len(busy) >= 2, "the work was not shared between workers"
    assert await count_states(setup, message.id) == {"sent": 2000}
    for d in [setup, *databases]:
        await d.dispose()


@pytest.mark.parametrize("deduplicates", [False, True], ids=["plain", "deduplicating"])
async def test_worker_that_stalls_past_its_lease_does_not_cause_a_second_send(
    settings: Settings, db: Database, deduplicates: bool
) -> None:
    """A worker stops mid-send, its lease expires, another worker runs, then it wakes."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    message = await insert_announcement(db, org)
    zombie_provider = RecordingProvider(name="p", deduplicates=deduplicates)
    zombie_provider.stall = asyncio.Event()
    healthy_provider = RecordingProvider(name="p", deduplicates=deduplicates)
    slow = make_settings(settings.database_url, lease_seconds=60, send_timeout_seconds=30)
    # With its one send slot taken by the stalled call, the zombie claims nothing more, as a
    # frozen process would not.
    frozen = make_settings(
        settings.database_url, lease_seconds=60, send_timeout_seconds=30, max_in_flight=1
    )

    async with running(
        frozen, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(zombie_provider)
    ) as zombie:
        await asyncio.wait_for(zombie_provider.started.wait(), 10)
        # Time passes beyond the lease while the worker is frozen mid-call.
        async with db.transaction() as session:
            await session.execute(
                update(Delivery).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
            )
        other_db = Database(settings.database_url)
        async with running(
            slow,
            dispatch=True,
            schedule=True,
            db=other_db,
            registry=ChannelRegistry(healthy_provider),
        ) as other:
            assert other.engine is not None
            assert other.engine.scheduler is not None
            await other.engine.scheduler.reap_expired()
            [delivery] = await delivery_rows(db, message.id)
            if deduplicates:
                # Policy: the provider recognises the delivery id, so it is sent again.
                await eventually(lambda: _has_state(db, delivery.id, "sent"))
                assert healthy_provider.calls[delivery.id] == 1
            else:
                assert delivery.state == "unknown"
                assert "may or may not" in (delivery.reason or "")
                # A later delivery: once the healthy worker has sent it, it has run the claim
                # that would have taken the earlier one, were it claimable again.
                await insert_people(db, org, [person_row(2)])
                marker = await insert_announcement(db, org, {"recipients": ["p2"]})
                await eventually(lambda: _sent_some_of(healthy_provider, marker.id))
                assert healthy_provider.calls[delivery.id] == 0
        await other_db.dispose()
        # The frozen worker wakes up and finishes its call.
        zombie_provider.stall.set()
        assert zombie.engine is not None
        assert zombie.engine.dispatcher is not None
        await zombie.engine.dispatcher.completer.wait_idle()

    [delivery] = await delivery_rows(db, message.id)
    assert zombie_provider.calls[delivery.id] == 1
    assert delivery.state == "sent"
    if deduplicates:
        # The zombie's late answer was fenced out; the healthy worker's attempt stands.
        assert delivery.provider_message_id == f"p-{delivery.id}-2"
    else:
        # The late proof of acceptance settles the unknown: the person got it once.
        assert delivery.provider_message_id == f"p-{delivery.id}-1"


async def _has_state(db: Database, delivery_id: int, state: str) -> bool:
    async with db.read() as session:
        delivery = await session.get(Delivery, delivery_id, populate_existing=True)
        return delivery is not None and delivery.state == state


async def test_cancel_racing_the_worker_stops_every_later_send(
    settings: Settings, db: Database
) -> None:
    """G5: once cancel has answered, nothing more of the message is sent."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(400)])
    message = await insert_announcement(db, org)
    message_id = message.id
    call_times: list[float] = []

    class Slow(RecordingProvider):
        async def send(self, message: OutboundMessage) -> Accepted:
            if message.message_id == message_id:
                call_times.append(time.monotonic())
            await asyncio.sleep(0.01)
            return await super().send(message)

    provider = Slow(name="slow")
    tuned = make_settings(settings.database_url, max_in_flight=8, claim_batch_size=8)
    async with running(
        tuned, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        await eventually(lambda: _calls_at_least(call_times, 40))
        async with db.transaction() as session:
            _, cancelled = await progress.cancel(session, org, message.id, "announcement")
        in_flight = await progress.wait_for_in_flight(db, message.id, 5.0)
        answered = time.monotonic()
        # The worker keeps running: a message made after the cancel is due after every
        # delivery of the cancelled one, so once it is sent, none of those is still waiting.
        await insert_people(db, org, [person_row(1000)])
        marker = await insert_announcement(db, org, {"recipients": ["p1000"]})
        await eventually(lambda: _sent_some_of(provider, marker.id))

    assert in_flight == 0
    assert cancelled > 0
    assert [t for t in call_times if t > answered] == []
    states = await count_states(db, message.id)
    assert set(states) <= {"sent", "cancelled"}
    sent_of_message = [m for m in provider.accepted if m.message_id == message.id]
    assert states["sent"] == len(sent_of_message) == len(call_times)
    assert states["cancelled"] == cancelled
    assert states["sent"] + states["cancelled"] == 400


async def _calls_at_least(calls: list[float], n: int) -> bool:
    return len(calls) >= n


async def _sent_some_of(provider: RecordingProvider, message_id: uuid.UUID) -> bool:
    return any(m.message_id == message_id for m in provider.accepted)


def flaky(failures: int, error: Exception) -> Callable[[OutboundMessage], None]:
    seen: Counter[int] = Counter()

    def behaviour(message: OutboundMessage) -> None:
        seen[message.delivery_id] += 1
        if seen[message.delivery_id] <= failures:
            raise error

    return behaviour


@pytest.mark.parametrize(
    ("failures", "error", "state", "calls", "reason"),
    [
        (2, TransientSendError("busy"), "sent", 3, "accepted by p"),
        (99, TransientSendError("busy"), "failed", 3, "gave up after 3 attempts: busy"),
        (1, PermanentSendError("invalid number"), "failed", 1, "invalid number"),
        (1, InDoubtSendError("timed out after sending"), "unknown", 1, "timed out after sending"),
    ],
    ids=["transient-then-ok", "transient-exhausted", "permanent", "in-doubt"],
)
async def test_provider_errors_end_in_the_right_state(
    settings: Settings,
    db: Database,
    failures: int,
    error: Exception,
    state: str,
    calls: int,
    reason: str,
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    message = await insert_announcement(db, org)
    provider = RecordingProvider(name="p", behaviour=flaky(failures, error))
    tuned = make_settings(settings.database_url, max_attempts=3)
    async with running(
        tuned, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        await eventually(message_state(db, message.id, "completed"))
    [delivery] = await delivery_rows(db, message.id)
    assert delivery.state == state
    assert reason in (delivery.reason or "")
    assert provider.calls[delivery.id] == calls
    assert delivery.send_attempts == calls


async def test_permanent_failure_can_suppress_the_address(settings: Settings, db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    first = await insert_announcement(db, org, channels=["email"])
    error = PermanentSendError("mailbox does not exist", suppress_address=True)
    provider = RecordingProvider(name="p", behaviour=flaky(1, error))
    async with running(
        settings, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        await eventually(message_state(db, first.id, "completed"))
        second = await insert_announcement(db, org, channels=["email"])
        await eventually(message_state(db, second.id, "completed"))
    [delivery] = await delivery_rows(db, second.id)
    assert delivery.state == "suppressed"
    assert "email: email address is on the suppression list" in (delivery.reason or "")
    assert sum(provider.calls.values()) == 1


async def test_graceful_stop_finishes_sends_in_flight(settings: Settings, db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    message = await insert_announcement(db, org)
    provider = RecordingProvider(name="p")
    provider.stall = asyncio.Event()
    async with running(
        settings, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ) as svc:
        await asyncio.wait_for(provider.started.wait(), 10)
        assert svc.engine is not None
        with capture_logs() as logs:
            stopping = asyncio.create_task(svc.engine.stop())

            async def draining() -> bool:
                return any(e["event"] == "worker.draining" for e in logs)

            await eventually(draining)
        assert not stopping.done(), "stop did not wait for the send in flight"
        provider.stall.set()
        await asyncio.wait_for(stopping, 10)
        svc.engine = None  # already stopped
    [delivery] = await delivery_rows(db, message.id)
    assert delivery.state == "sent"


async def test_send_cut_off_by_the_grace_period_is_in_doubt(
    settings: Settings, db: Database
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    message = await insert_announcement(db, org)
    provider = RecordingProvider(name="p")
    provider.stall = asyncio.Event()  # never set: the provider never answers
    tuned = make_settings(settings.database_url, shutdown_grace_seconds=0.3)
    async with running(
        tuned, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        await asyncio.wait_for(provider.started.wait(), 10)
    [delivery] = await delivery_rows(db, message.id)
    assert delivery.state == "unknown"
    assert "interrupted by shutdown" in (delivery.reason or "")


async def test_a_cancel_stops_deliveries_claimed_ahead_of_their_time(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """G5: a delivery claimed before it is due has not started; a cancel that commits while
    it waits for its time stops it."""
    monkeypatch.setattr(dispatcher, "CLAIM_AHEAD", dt.timedelta(seconds=5))
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(3)])
    due = utcnow() + dt.timedelta(seconds=2)
    message = await insert_announcement(db, org, send_at=due.isoformat())
    provider = RecordingProvider(name="p")
    async with running(
        settings, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):

        async def all_claimed() -> bool:
            return (await count_states(db, message.id)).get("sending", 0) == 3

        await eventually(all_claimed)
        async with db.transaction() as session:
            await progress.cancel(session, org, message.id, "announcement")
        # A message due just after them, not cancelled: once it is sent, their time has come.
        await insert_people(db, org, [person_row(9)])
        marker = await insert_announcement(
            db,
            org,
            {"recipients": ["p9"]},
            send_at=(due + dt.timedelta(seconds=0.2)).isoformat(),
        )
        await eventually(lambda: _sent_some_of(provider, marker.id))

        async def all_settled() -> bool:
            return not {"pending", "sending"} & set(await count_states(db, message.id))

        await eventually(all_settled)
    assert await count_states(db, message.id) == {"cancelled": 3}
    assert [m.message_id for m in provider.accepted] == [marker.id]


async def test_idle_worker_sends_a_scheduled_message_on_time(
    settings: Settings, db: Database, backend: str
) -> None:
    """An idle worker sends a message due at T within a second of T.

    The worker polls only every 30 s here, so only the wake-up path can meet the deadline: in
    one process on SQLite, and from a separate API process via LISTEN/NOTIFY on PostgreSQL.
    """
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    provider = RecordingProvider(name="p")
    tuned = make_settings(settings.database_url, idle_poll_seconds=30)
    api_db = Database(settings.database_url) if backend == "postgresql" else db
    async with (
        running(
            tuned, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
        ) as worker,
        contextlib.AsyncExitStack() as stack,
    ):
        api = worker
        if backend == "postgresql":
            api = await stack.enter_async_context(
                running(tuned, dispatch=False, schedule=False, db=api_db)
            )
        await asyncio.sleep(0.5)  # everyone is idle, the listener is connected
        due = utcnow() + dt.timedelta(seconds=1.5)
        await insert_announcement(api_db, org, send_at=due.isoformat())
        api.notifier.work_available()  # what the API does after each commit
        await eventually(lambda: _calls_at_least([0.0] * len(provider.sent_at), 1), timeout=40)
    if api_db is not db:
        await api_db.dispose()
    assert provider.sent_at[0] >= due
    assert (provider.sent_at[0] - due).total_seconds() < 1.0


async def test_quiet_hours_defer_and_urgent_does_not(settings: Settings, db: Database) -> None:
    org = await new_org(db)
    now = utcnow()
    start = (now - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (now + dt.timedelta(hours=2)).strftime("%H:%M")
    ids = await insert_people(db, org, [person_row(1, timezone="UTC")])
    async with db.transaction() as session:
        from bulletin.recipients.models import Recipient

        await session.execute(
            update(Recipient)
            .where(Recipient.id == ids["p1"])
            .values(quiet_start=start, quiet_end=end)
        )
    normal = await insert_announcement(db, org)
    urgent = await insert_announcement(db, org, urgent=True)
    provider = RecordingProvider(name="p")
    async with running(
        settings, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        await eventually(message_state(db, urgent.id, "completed"))
        await eventually(lambda: _has_state_for(db, normal.id, "pending"))
    [deferred] = await delivery_rows(db, normal.id)
    assert deferred.state == "pending"
    assert deferred.send_attempts == 0
    assert "quiet hours" in (deferred.reason or "")
    expected_end = now.replace(second=0, microsecond=0) + dt.timedelta(hours=2)
    assert abs((deferred.next_attempt_at - expected_end).total_seconds()) <= 60
    assert [m.message_id for m in provider.accepted] == [urgent.id]


async def _has_state_for(db: Database, message_id: object, state: str) -> bool:
    async with db.read() as session:
        n = (
            await session.execute(
                select(func.count()).where(
                    Delivery.message_id == message_id,
                    Delivery.state == state,
                    Delivery.reason.is_not(None),
                )
            )
        ).scalar_one()
        return bool(n)
