"""Every query about messages."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Table, func, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import chunked
from bulletin.messages.models import Message, MessageRecipient
from bulletin.messages.states import MessageState

_WAITING = (MessageState.SCHEDULED.value, MessageState.RESOLVING.value)


_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_MESSAGE_RECIPIENTS: Table = MessageRecipient.__table__  # type: ignore[assignment]


async def add(session: AsyncSession, message: Message) -> None:
    """Store a new message, made with every column set, as one INSERT.

    A new message is written once and not changed in the transaction that creates it, so it
    is inserted directly rather than through the session's unit of work (which costs more
    than the statement on the API's busiest path). ``message`` is not added to the session.
    """
    given = inspect(message).dict
    values = {column.key: given[column.key] for column in _MESSAGES.c if column.key in given}
    await session.execute(insert(_MESSAGES), values)


async def add_recipients(session: AsyncSession, message_id: uuid.UUID, ids: list[int]) -> None:
    rows = [{"message_id": message_id, "recipient_id": i} for i in sorted(set(ids))]
    for part in chunked(rows, 2000):
        await session.execute(insert(_MESSAGE_RECIPIENTS), part)


async def get(
    session: AsyncSession, org_id: uuid.UUID, message_id: uuid.UUID, kind: str
) -> Message | None:
    return (
        await session.execute(
            select(Message)
            .where(Message.id == message_id, Message.org_id == org_id, Message.kind == kind)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def page(
    session: AsyncSession, org_id: uuid.UUID, kind: str, before: uuid.UUID | None, limit: int
) -> list[Message]:
    query = select(Message).where(Message.org_id == org_id, Message.kind == kind)
    if before is not None:
        query = query.where(Message.id < before)
    return list((await session.execute(query.order_by(Message.id.desc()).limit(limit))).scalars())


async def lock_for_cancel(
    session: AsyncSession, org_id: uuid.UUID, message_id: uuid.UUID, kind: str
) -> Message | None:
    """The message, locked until the transaction ends (PostgreSQL): waits for a scheduler
    resolving it to finish its chunk, so cancel and resolution never interleave. SQLite has no
    row locks (SQLAlchemy drops ``FOR UPDATE`` there); its writers run one at a time."""
    query = (
        select(Message)
        .where(Message.id == message_id, Message.org_id == org_id, Message.kind == kind)
        .execution_options(populate_existing=True)
        .with_for_update()
    )
    return (await session.execute(query)).scalar_one_or_none()


async def by_id(session: AsyncSession, message_id: uuid.UUID) -> Message | None:
    """The message with this id, whichever organization and kind it is."""
    return await session.get(Message, message_id)


async def by_ids(session: AsyncSession, ids: list[uuid.UUID]) -> list[Message]:
    """The messages of ``ids`` that exist, in no particular order."""
    return list((await session.execute(select(Message).where(Message.id.in_(ids)))).scalars())


async def cancelled_among(session: AsyncSession, ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``ids`` whose message is cancelled."""
    query = select(Message.id).where(
        Message.id.in_(list(ids)), Message.state == MessageState.CANCELLED.value
    )
    return set((await session.execute(query)).scalars())


async def next_due_for_resolution(session: AsyncSession, now: dt.datetime) -> Message | None:
    """The earliest due message whose audience is not fully resolved, locked for this caller."""
    due = await due_for_resolution(session, now, 1)
    return due[0] if due else None


async def due_for_resolution(session: AsyncSession, now: dt.datetime, limit: int) -> list[Message]:
    """The earliest ``limit`` due messages whose audiences are not fully resolved, locked for
    this caller (PostgreSQL: those another scheduler holds are skipped; SQLite, which drops
    ``FOR UPDATE``, runs writers one at a time)."""
    query = (
        select(Message)
        .where(Message.state.in_(_WAITING), Message.send_at <= now)
        .order_by(Message.send_at)
        .limit(limit)
        .execution_options(populate_existing=True)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(query)).scalars())


async def next_send_at(
    session: AsyncSession, after: dt.datetime | None = None
) -> dt.datetime | None:
    """The earliest ``send_at`` of a message not yet resolved (later than ``after``, if given)."""
    query = select(func.min(Message.send_at)).where(Message.state.in_(_WAITING))
    if after is not None:
        query = query.where(Message.send_at > after)
    return (await session.execute(query)).scalar_one_or_none()
