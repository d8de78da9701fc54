"""On time without busy loops: messages resolved just before they are due, wake-ups by kind of
work across processes, and loops that do not wake again and again for work another process
holds."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import text

from bulletin.bootstrap import running
from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.deliveries import queue
from bulletin.deliveries import repository as deliveries
from bulletin.messages import repository as messages
from bulletin.signals import CHANNEL, Hub, Listener, Notifier, Wakeup, Work, payload
from bulletin.worker.dispatcher import CLAIM_AHEAD
from bulletin.worker.scheduler import RESOLVE_AHEAD, Scheduler
from integration.test_engine import message_state
from support.db_factories import (
    delivery_rows,
    insert_announcement,
    insert_people,
    new_org,
    person_row,
)
from support.waiting import eventually


def scheduler_for(db: Database, settings: Settings) -> Scheduler:
    registry = ChannelRegistry(RecordingProvider())
    return Scheduler(db, registry, settings, Wakeup(), Notifier(db, Hub()))


async def test_a_message_is_resolved_just_before_it_is_due_into_deliveries_due_at_its_send_at(
    settings: Settings, db: Database
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1), person_row(2)])
    soon = await insert_announcement(db, org, send_at=(utcnow() + RESOLVE_AHEAD / 2).isoformat())
    later = await insert_announcement(db, org, send_at=(utcnow() + RESOLVE_AHEAD * 60).isoformat())

    assert await scheduler_for(db, settings).resolve_due() == 2
    made = await delivery_rows(db, soon.id)
    assert [(d.state, d.next_attempt_at) for d in made] == [("pending", soon.send_at)] * 2
    assert await delivery_rows(db, later.id) == []
    # Resolved early, but not sent early: nothing can be claimed before its send_at.
    lease = soon.send_at + dt.timedelta(seconds=60)
    async with db.transaction() as session:
        early = soon.send_at - dt.timedelta(microseconds=1)
        assert await queue.claim(session, early, lease, 10) == []
    async with db.transaction() as session:
        assert len(await queue.claim(session, soon.send_at, lease, 10)) == 2


async def test_the_next_due_times_can_leave_out_what_is_already_due(
    settings: Settings, db: Database
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    now = utcnow()
    due = await insert_announcement(db, org, send_at=now.isoformat())
    later = await insert_announcement(db, org, send_at=(now + dt.timedelta(hours=1)).isoformat())
    async with db.read() as session:
        assert await messages.next_send_at(session) == due.send_at
        assert await messages.next_send_at(session, after=now) == later.send_at
    await scheduler_for(db, settings).resolve_due()
    async with db.read() as session:
        assert await deliveries.next_due(session) == due.send_at
        assert await deliveries.next_due(session, after=now) is None


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_scheduler_does_not_wake_again_and_again_for_a_message_another_one_holds(
    settings: Settings, db: Database
) -> None:
    """While another scheduler resolves a due message, this one sleeps until the next message
    or the poll interval, rather than looking again at once until the other commits."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    await insert_announcement(db, org)
    scheduler = scheduler_for(db, settings)
    async with db.transaction() as other:
        assert await messages.next_due_for_resolution(other, utcnow()) is not None
        assert await scheduler.resolve_due() == 0
        assert await scheduler._until_next_due() == settings.idle_poll_seconds


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_notify_wakes_the_loops_of_its_kind_in_other_processes_only(
    settings: Settings, db: Database
) -> None:
    here, there = Hub(), Hub()
    local_dispatcher = here.subscribe(Work.DELIVERIES)
    local_scheduler = here.subscribe(Work.MESSAGES)
    scheduler = there.subscribe(Work.MESSAGES)
    dispatcher = there.subscribe(Work.DELIVERIES)
    listening = asyncio.create_task(Listener(db, there).run())
    notifier = Notifier(db, here)
    notifying = asyncio.create_task(notifier.run())

    async def notify(payload: str) -> None:
        async with db.engine.connect() as conn:
            await conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": payload},
            )
            await conn.commit()

    try:
        assert await dispatcher.wait(10), "the listener never connected"  # pokes all then
        await scheduler.wait(0)
        # Its own notification: it woke its loops when it sent it.
        await notify(payload(there.origin, [Work.MESSAGES]))
        notifier.work_available(Work.DELIVERIES)
        assert await local_dispatcher.wait(0), "the sending process's loops are woken at once"
        assert not await local_scheduler.wait(0)
        assert await dispatcher.wait(10)
        # Notifications arrive in order: the first one was heard, and woke no scheduler.
        assert not await scheduler.wait(0)
        # A plain NOTIFY (an older version) wakes every loop.
        await notify("")
        assert await scheduler.wait(10)
    finally:
        for task in (listening, notifying):
            task.cancel()
        await asyncio.gather(listening, notifying, return_exceptions=True)


async def test_a_claim_can_take_deliveries_a_little_ahead_of_their_time(
    settings: Settings, db: Database
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    now = utcnow()
    message = await insert_announcement(db, org, send_at=(now + RESOLVE_AHEAD / 2).isoformat())
    assert await scheduler_for(db, settings).resolve_due() == 1
    lease = now + dt.timedelta(seconds=60)
    async with db.transaction() as session:
        assert await queue.claim(session, now, lease, 10) == []
        [row] = await queue.claim(session, now, lease, 10, due_by=message.send_at)
    # The claim says when it is due: the dispatcher sends it then, not before.
    assert row.due == message.send_at


async def test_a_delivery_claimed_ahead_of_its_time_is_not_sent_before_it(
    settings: Settings, db: Database
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    provider = RecordingProvider()
    async with running(
        settings, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        message = await insert_announcement(
            db, org, send_at=(utcnow() + CLAIM_AHEAD * 4).isoformat()
        )
        await eventually(message_state(db, message.id, "completed"))
    assert len(provider.sent_at) == 1
    assert provider.sent_at[0] >= message.send_at
