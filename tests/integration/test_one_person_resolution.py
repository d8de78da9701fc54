"""Many one-person messages are resolved together, into exactly the rows one at a time makes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import event

from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.deliveries import audience
from bulletin.messages.models import Message
from bulletin.messages.states import MessageState
from bulletin.signals import Hub, Notifier, Wakeup
from bulletin.worker.scheduler import Scheduler
from support.db_factories import delivery_rows, insert_announcement, insert_people, new_org
from support.db_factories import person_row as row


def scheduler_for(db: Database, settings: Settings) -> Scheduler:
    return Scheduler(
        db, ChannelRegistry(RecordingProvider()), settings, Wakeup(), Notifier(db, Hub())
    )


SHAPES: list[dict[str, Any]] = [
    {"channels": ["whatsapp", "email", "sms"], "routing": "first"},
    {"channels": ["sms", "email"], "routing": "first"},
    {"channels": ["email", "whatsapp"], "routing": "all"},
    {"channels": ["whatsapp"], "routing": "first"},
]
PEOPLE = [
    row(1),
    row(2, email=None, phone="+27820000002"),
    row(3, whatsapp="+27820000003"),
    row(4, email=None, phone="+27820000004", whatsapp="+27820000004"),
]


async def _one_person_messages(db: Database, org: Any) -> list[Message]:
    later = (utcnow() + dt.timedelta(minutes=5)).isoformat()
    return [
        await insert_announcement(
            db, org, {"recipients": [person["external_id"]]}, send_at=later, **shape
        )
        for shape in SHAPES
        for person in PEOPLE
    ]


def _rows(found: list[Any], message: Message) -> list[tuple[Any, ...]]:
    """The rows' content, each due at its message's send_at."""
    assert {(d.next_attempt_at, d.created_at) for d in found} <= {
        (message.send_at, message.send_at)
    }
    return sorted((d.recipient_id, d.org_id, d.channel, d.state, d.fallback_at) for d in found)


async def test_together_they_make_the_rows_each_makes_alone(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, PEOPLE)
    alone, together = await _one_person_messages(db, org), await _one_person_messages(db, org)
    async with db.transaction() as session:
        for message in alone:
            mine = await session.get(Message, message.id)
            assert mine is not None
            await audience.resolve_chunk(session, mine, 1000, utcnow())
    async with db.transaction() as session:
        mine_all = [await session.get(Message, m.id) for m in together]
        resolved = await audience.resolve_one_person_messages(
            session, [m for m in mine_all if m is not None]
        )
    assert set(resolved.values()) == {1}
    for one, many in zip(alone, together, strict=True):
        made = _rows(await delivery_rows(db, many.id), many)
        assert made
        assert made == _rows(await delivery_rows(db, one.id), one)
    async with db.read() as session:
        stored = [await session.get(Message, m.id) for m in together]
    assert {(m.audience_size, m.resolve_cursor > 0) for m in stored if m} == {(1, True)}


async def test_the_statements_do_not_grow_with_the_messages(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, PEOPLE)
    counts = []
    for copies in (1, 6):
        made = [m for _ in range(copies) for m in await _one_person_messages(db, org)]
        statements: list[str] = []

        def seen(*args: Any, statements: list[str] = statements) -> None:
            statements.append(args[2])

        event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
        try:
            async with db.transaction() as session:
                mine = [await session.get(Message, m.id) for m in made]
                statements.clear()
                await audience.resolve_one_person_messages(session, [m for m in mine if m])
                counts.append(len(statements))
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert counts[0] == counts[1], counts


async def test_the_scheduler_resolves_due_one_person_messages_and_others_alike(
    db: Database, settings: Settings
) -> None:
    org = await new_org(db)
    await insert_people(db, org, PEOPLE)
    now = utcnow().isoformat()
    singles = [
        await insert_announcement(db, org, {"recipients": [p["external_id"]]}, send_at=now)
        for p in PEOPLE
    ]
    everyone = await insert_announcement(db, org, {"all": True}, send_at=now)
    assert await scheduler_for(db, settings).resolve_due() == 2 * len(PEOPLE)
    async with db.read() as session:
        stored = [await session.get(Message, m.id) for m in [*singles, everyone]]
    assert {(m.state, m.audience_size) for m in stored if m} == {
        (MessageState.SENDING.value, 1)
    } | {(MessageState.SENDING.value, len(PEOPLE))}


async def test_the_scheduler_resolves_due_one_person_messages_in_a_fixed_number_of_statements(
    db: Database, settings: Settings
) -> None:
    org = await new_org(db)
    await insert_people(db, org, PEOPLE)
    counts = []
    for copies in (1, 6):
        now = utcnow().isoformat()
        for _ in range(copies):
            for person in PEOPLE:
                await insert_announcement(
                    db, org, {"recipients": [person["external_id"]]}, send_at=now
                )
        statements: list[str] = []

        def seen(*args: Any, statements: list[str] = statements) -> None:
            statements.append(args[2])

        event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
        try:
            assert await scheduler_for(db, settings).resolve_due() == copies * len(PEOPLE)
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
        counts.append(len(statements))
    assert counts[0] == counts[1], counts
