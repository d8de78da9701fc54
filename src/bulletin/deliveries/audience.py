"""The queries that turn a message's audience into deliveries, and that count an audience.

An audience is a named list of recipients, some groups, or everyone in the organization.
:func:`resolve_chunk` makes the deliveries of one chunk of it at a time, in recipient id order,
so that the scheduler can resolve a large audience in short transactions; :func:`count_audience`
counts it with the same query, so that what the portal shows is what will be sent.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import UTCDateTime, upsert_statement
from bulletin.deliveries.models import Delivery
from bulletin.deliveries.states import DeliveryState
from bulletin.messages.models import Message, MessageRecipient
from bulletin.recipients.addresses import address_column, choice_column
from bulletin.recipients.models import Recipient, RecipientGroup


def _members(message: Message, after: int, upper: int | None = None) -> Select[Any]:
    """Ids (as ``rid``) of the message's recipients with ``after < id <= upper``.

    Each audience is read from its own index (the explicit list, the group memberships, or
    the organization's recipients by id) and joined to recipients by primary key. That plan
    is right whatever the planner's statistics say: right after a bulk import PostgreSQL has
    none, and a correlated EXISTS was then planned as a nested loop rescanning every
    recipient for every member.
    """
    audience = message.audience
    if audience.get("recipients"):
        rid: Any = MessageRecipient.recipient_id
        query = select(rid.label("rid")).where(MessageRecipient.message_id == message.id)
    elif audience.get("groups"):
        rid = RecipientGroup.recipient_id
        query = (
            select(rid.label("rid"))
            .join(Recipient, Recipient.id == rid)
            .where(
                RecipientGroup.org_id == message.org_id,
                RecipientGroup.name.in_(audience["groups"]),
                Recipient.active.is_(True),
            )
            .group_by(rid)
        )
    else:
        rid = Recipient.id
        query = select(rid.label("rid")).where(
            Recipient.org_id == message.org_id, Recipient.active.is_(True)
        )
    query = query.where(rid > after)
    if upper is not None:
        query = query.where(rid <= upper)
    return query.order_by(rid)


def _first_usable_channel(channels: Sequence[str]) -> ColumnElement[str]:
    """SQL for the first channel, in the message's order, that a recipient can be reached on.

    The worker checks again at dispatch (preferences may change in between); this choice only
    decides which row is created for ``routing: "first"``.
    """
    whens: list[tuple[ColumnElement[bool], ColumnElement[str]]] = []
    for channel in channels:
        address, choice = address_column(channel), choice_column(channel)
        whens.append((and_(address.is_not(None), func.coalesce(choice, true())), literal(channel)))
    return case(*whens, else_=literal(channels[0]))


async def resolve_chunk(
    session: AsyncSession, message: Message, chunk: int, now: dt.datetime | None = None
) -> tuple[int, bool]:
    """Turn the next ``chunk`` recipients after ``message.resolve_cursor`` into deliveries.

    Set-based (``INSERT ... SELECT``) and idempotent (``ON CONFLICT DO NOTHING`` on message,
    recipient and channel), so a crash part-way and a second attempt make each delivery once.
    Returns how many recipients the chunk held and whether the audience is exhausted; the
    caller stores the advanced cursor in the same transaction.
    """
    window = _members(message, message.resolve_cursor).limit(chunk).subquery()
    count, upper = (await session.execute(select(func.count(), func.max(window.c.rid)))).one()
    if not count:
        return 0, True
    members = _members(message, message.resolve_cursor, int(upper)).subquery()
    in_chunk = select(Recipient.id).join(members, Recipient.id == members.c.rid)
    fallback_at = None
    if message.routing == "first" and message.fallback_after_seconds:
        start = max(message.send_at, now or message.send_at)
        fallback_at = start + dt.timedelta(seconds=message.fallback_after_seconds)
    if message.routing == "all":
        channel_choices: list[ColumnElement[str]] = [literal(c) for c in message.channels]
    else:
        channel_choices = [_first_usable_channel(message.channels)]
    for channel in channel_choices:
        rows = in_chunk.with_only_columns(
            literal(message.org_id, Delivery.org_id.type),
            literal(message.id, Delivery.message_id.type),
            Recipient.id,
            channel,
            literal(DeliveryState.PENDING.value),
            literal(0),
            literal(0),
            literal(message.send_at, UTCDateTime()),
            literal(message.send_at, UTCDateTime()),
            literal(message.send_at, UTCDateTime()),
            literal(fallback_at, UTCDateTime()),
        )
        columns = [
            "org_id",
            "message_id",
            "recipient_id",
            "channel",
            "state",
            "attempt",
            "send_attempts",
            "next_attempt_at",
            "created_at",
            "updated_at",
            "fallback_at",
        ]
        statement = (
            upsert_statement(session, Delivery)
            .from_select(columns, rows)
            .on_conflict_do_nothing(index_elements=["message_id", "recipient_id", "channel"])
        )
        await session.execute(statement)
    message.resolve_cursor = int(upper)
    message.audience_size = (message.audience_size or 0) + int(count)
    return int(count), int(count) < chunk


async def resolve_one_person_messages(
    session: AsyncSession, messages: Sequence[Message]
) -> dict[uuid.UUID, int]:
    """Make the deliveries of many messages that each name one recipient (notifications, and
    the messages events become), a few statements for them all instead of a few each.

    The same rows as :func:`resolve_chunk` makes for each, by one ``INSERT ... SELECT`` per
    routing, channel list and channel choice, reading each message's own ids and ``send_at``
    from its row. Messages with ``fallback_after`` are not for this function (their deadline
    depends on when they are resolved). Sets each message's cursor and audience size, and
    returns the recipients resolved per message (0 or 1).
    """
    groups: dict[tuple[str, tuple[str, ...]], list[uuid.UUID]] = {}
    for message in messages:
        groups.setdefault((message.routing, tuple(message.channels)), []).append(message.id)
    columns = [
        "org_id",
        "message_id",
        "recipient_id",
        "channel",
        "state",
        "attempt",
        "send_attempts",
        "next_attempt_at",
        "created_at",
        "updated_at",
        "fallback_at",
    ]
    for (routing, channels), ids in groups.items():
        named = (
            select(Recipient.id)
            .join(MessageRecipient, MessageRecipient.recipient_id == Recipient.id)
            .join(Message, Message.id == MessageRecipient.message_id)
            .where(MessageRecipient.message_id.in_(ids))
        )
        if routing == "all":
            choices: list[ColumnElement[str]] = [literal(c) for c in channels]
        else:
            choices = [_first_usable_channel(channels)]
        for channel in choices:
            rows = named.with_only_columns(
                Message.org_id,
                Message.id,
                Recipient.id,
                channel,
                literal(DeliveryState.PENDING.value),
                literal(0),
                literal(0),
                Message.send_at,
                Message.send_at,
                Message.send_at,
                literal(None, UTCDateTime()),
            )
            await session.execute(
                upsert_statement(session, Delivery)
                .from_select(columns, rows)
                .on_conflict_do_nothing(index_elements=["message_id", "recipient_id", "channel"])
            )
    found = await session.execute(
        select(MessageRecipient.message_id, func.max(MessageRecipient.recipient_id))
        .where(MessageRecipient.message_id.in_([m.id for m in messages]))
        .group_by(MessageRecipient.message_id)
    )
    upper = {message_id: int(rid) for message_id, rid in found}
    for message in messages:
        message.resolve_cursor = upper.get(message.id, 0)
        message.audience_size = 1 if message.id in upper else 0
    return {m.id: m.audience_size or 0 for m in messages}


async def count_audience(session: AsyncSession, org_id: uuid.UUID, audience: dict[str, Any]) -> int:
    """How many people an audience of everyone or of groups resolves to now, counted with the
    same query that resolves it (a named list is counted by its caller)."""
    probe = Message(id=uuid.UUID(int=0), org_id=org_id, audience=audience)
    members = _members(probe, 0).order_by(None).subquery()
    return (await session.execute(select(func.count()).select_from(members))).scalar_one()
