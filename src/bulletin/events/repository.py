"""Every query about event types and accepted events, and the batched writes of the messages
that events become.

Accepting a batch of events costs a fixed number of statements whatever its size: each query
here takes every row of the call at once (in chunks of :data:`_ROWS_PER_STATEMENT`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import chunked, upsert_statement
from bulletin.events.models import Event, EventType
from bulletin.messages.models import Message, MessageRecipient
from bulletin.recipients.models import Recipient

_ROWS_PER_STATEMENT = 1000
_TYPES: Table = EventType.__table__  # type: ignore[assignment]
_EVENTS: Table = Event.__table__  # type: ignore[assignment]
_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_MESSAGE_RECIPIENTS: Table = MessageRecipient.__table__  # type: ignore[assignment]
_RECIPIENTS: Table = Recipient.__table__  # type: ignore[assignment]
#: What a PUT of an event type replaces (besides the version and updated_at).
TYPE_COLUMNS = (
    "description",
    "title",
    "body",
    "overrides",
    "channels",
    "routing",
    "category",
    "urgent",
    "delay_seconds",
    "fallback_after_seconds",
)


async def put_type(
    session: AsyncSession,
    org_id: uuid.UUID,
    key: str,
    values: dict[str, Any],
    now: dt.datetime,
) -> EventType:
    """Create or replace an event type in one statement (two PUTs at once cannot collide);
    its version is 1 when created and goes up by one on every replacement."""
    given = {name: values[name] for name in TYPE_COLUMNS}
    statement = upsert_statement(session, _TYPES).values(
        org_id=org_id, key=key, version=1, created_at=now, updated_at=now, **given
    )
    statement = statement.on_conflict_do_update(
        index_elements=[_TYPES.c.org_id, _TYPES.c.key],
        set_={**given, "version": _TYPES.c.version + 1, "updated_at": now},
    ).returning(EventType)
    found: EventType = (
        await session.execute(
            select(EventType).from_statement(statement),
            execution_options={"populate_existing": True},
        )
    ).scalar_one()
    return found


async def get_type(session: AsyncSession, org_id: uuid.UUID, key: str) -> EventType | None:
    query = select(EventType).where(EventType.org_id == org_id, EventType.key == key)
    return (await session.execute(query)).scalar_one_or_none()


async def types_by_key(
    session: AsyncSession, org_id: uuid.UUID, keys: Sequence[str]
) -> dict[str, EventType]:
    found: dict[str, EventType] = {}
    for part in chunked(sorted(set(keys)), _ROWS_PER_STATEMENT):
        query = select(EventType).where(EventType.org_id == org_id, EventType.key.in_(part))
        found.update({row.key: row for row in (await session.execute(query)).scalars()})
    return found


async def page_types(
    session: AsyncSession, org_id: uuid.UUID, after: str | None, limit: int
) -> list[EventType]:
    query = select(EventType).where(EventType.org_id == org_id)
    if after is not None:
        query = query.where(EventType.key > after)
    return list((await session.execute(query.order_by(EventType.key).limit(limit))).scalars())


async def delete_type(session: AsyncSession, org_id: uuid.UUID, key: str) -> bool:
    result = await session.execute(
        delete(_TYPES).where(_TYPES.c.org_id == org_id, _TYPES.c.key == key).returning(_TYPES.c.key)
    )
    return result.first() is not None


async def stored_events(
    session: AsyncSession, org_id: uuid.UUID, client_ids: Sequence[str]
) -> dict[str, tuple[str, list[str]]]:
    """The type and message ids of those of ``client_ids`` accepted in the organization."""
    found: dict[str, tuple[str, list[str]]] = {}
    for part in chunked(sorted(set(client_ids)), _ROWS_PER_STATEMENT):
        query = select(_EVENTS.c.client_id, _EVENTS.c.type, _EVENTS.c.message_ids).where(
            _EVENTS.c.org_id == org_id, _EVENTS.c.client_id.in_(part)
        )
        rows = await session.execute(query)
        found.update({row.client_id: (row.type, list(row.message_ids)) for row in rows})
    return found


async def add_events(session: AsyncSession, rows: list[dict[str, Any]]) -> set[str]:
    """Insert accepted events; returns the client ids that were new.

    An event whose id another transaction has just stored (and committed, or is about to) is
    skipped, not an error: PostgreSQL makes this statement wait for that transaction and then
    skip the row, so that the caller can tell it is a duplicate before it writes anything
    else. Rows go in client id order, so that two calls naming the same ids lock them in the
    same order and cannot deadlock.
    """
    if not rows:
        return set()
    ordered = sorted(rows, key=lambda row: str(row["client_id"]))
    statement = (
        upsert_statement(session, _EVENTS)
        .on_conflict_do_nothing(index_elements=[_EVENTS.c.org_id, _EVENTS.c.client_id])
        .returning(_EVENTS.c.client_id)
    )
    new: set[str] = set()
    for part in chunked(ordered, _ROWS_PER_STATEMENT):
        new.update((await session.execute(statement, part)).scalars())
    return new


async def forget_events(session: AsyncSession, org_id: uuid.UUID, client_ids: list[str]) -> None:
    """Remove events stored by this transaction that were refused after all."""
    for part in chunked(client_ids, _ROWS_PER_STATEMENT):
        await session.execute(
            delete(_EVENTS).where(_EVENTS.c.org_id == org_id, _EVENTS.c.client_id.in_(part))
        )


#: What accepting an event reads of each stored recipient it names: the id and whether they
#: are active, and what templates see of them.
_PERSON = select(
    _RECIPIENTS.c.id,
    _RECIPIENTS.c.active,
    _RECIPIENTS.c.external_id,
    _RECIPIENTS.c.name,
    _RECIPIENTS.c.email,
    _RECIPIENTS.c.phone,
    _RECIPIENTS.c.whatsapp,
    _RECIPIENTS.c.locale,
    _RECIPIENTS.c.timezone,
    _RECIPIENTS.c.attributes,
)


async def recipients_by_external_id(
    session: AsyncSession, org_id: uuid.UUID, external_ids: Sequence[str]
) -> dict[str, Row[Any]]:
    """The stored recipients among ``external_ids``, active or not (rows of ``_PERSON``: plain
    rows, read many at a time on the busiest path, cost a fraction of ORM objects)."""
    found: dict[str, Row[Any]] = {}
    for part in chunked(sorted(set(external_ids)), _ROWS_PER_STATEMENT):
        query = _PERSON.where(_RECIPIENTS.c.org_id == org_id, _RECIPIENTS.c.external_id.in_(part))
        found.update({row.external_id: row for row in await session.execute(query)})
    return found


async def add_messages(
    session: AsyncSession, messages: list[dict[str, Any]], recipients: list[dict[str, Any]]
) -> None:
    """Insert new messages (each a dict of every column) and their message_recipients rows
    (``message_id``, ``recipient_id``), many rows per statement."""
    for part in chunked(messages, _ROWS_PER_STATEMENT):
        await session.execute(insert(_MESSAGES), part)
    for part in chunked(recipients, _ROWS_PER_STATEMENT):
        await session.execute(insert(_MESSAGE_RECIPIENTS), part)


async def messages_by_id(
    session: AsyncSession, org_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Message]:
    found: dict[uuid.UUID, Message] = {}
    for part in chunked(list(ids), _ROWS_PER_STATEMENT):
        query = select(Message).where(Message.org_id == org_id, Message.id.in_(part))
        found.update({m.id: m for m in (await session.execute(query)).scalars()})
    return found
