"""Reading deliveries and cancelling them, and the record every change of a delivery leaves:
its event.

The rest of the package's queries live by concept: :mod:`~bulletin.deliveries.audience` turns
a message's audience into deliveries, :mod:`~bulletin.deliveries.queue` claims and completes
them (the claim protocol), :mod:`~bulletin.deliveries.fallback` moves a person on to their
next channel, :mod:`~bulletin.deliveries.suppressions` keeps the suppression list,
:mod:`~bulletin.deliveries.metrics_repository` the metrics scrape's figures. Every change of a
delivery's state, whichever module makes it, is recorded through :func:`record_events`, with
its webhook event (the outbox of :mod:`bulletin.subscriptions`).

A little over 400 lines, because it holds the many short reads of the deliveries table that
the API, the portal and the scheduler each need (one or two statements apiece, independent of
one another); split further, one table's reads would be scattered without any of them
becoming easier to follow.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import chunked
from bulletin.deliveries.models import Delivery, DeliveryEvent
from bulletin.deliveries.states import ACTIVE_STATES, DeliveryState
from bulletin.messages.models import Message
from bulletin.messages.states import MessageState
from bulletin.recipients.models import Recipient
from bulletin.subscriptions import outbox_repository as outbox
from bulletin.subscriptions.kinds import DELIVERY_KINDS, MESSAGE_COMPLETED

# --- What every change leaves: an event ---------------------------------------------------


class Change(NamedTuple):
    """A delivery's move to ``state``, as its event records it."""

    delivery_id: int
    state: DeliveryState
    #: The claim's attempt, when the change belongs to one.
    attempt: int | None
    detail: str | None


_EVENTS = cast(Table, DeliveryEvent.__table__)


async def record_events(session: AsyncSession, at: dt.datetime, changes: Iterable[Change]) -> None:
    """Append an event at ``at`` for each change to the deliveries' history, in batches.

    Every change of a delivery's state is recorded here, in the transaction that makes it,
    and so is its webhook event (the outbox) for the endpoints subscribed to that state: one
    more statement, only when a change has a state that webhooks tell.
    """
    changes = list(changes)
    rows = [
        {
            "delivery_id": c.delivery_id,
            "at": at,
            "state": c.state.value,
            "attempt": c.attempt,
            "detail": c.detail,
        }
        for c in changes
    ]
    # Through the table, not the ORM class: the same rows without the ORM's bulk bookkeeping,
    # which cost more than the insert itself on the hot path.
    for part in chunked(rows, 2000):
        await session.execute(insert(_EVENTS), part)
    told = [c for c in changes if c.state.value in DELIVERY_KINDS]
    if told:
        await outbox.record_delivery_events(
            session, [c.delivery_id for c in told], at, {c.state.value for c in told}
        )


# --- Lookups for dispatch and fallback ------------------------------------------------------


async def recipients_by_id(session: AsyncSession, ids: Sequence[int]) -> dict[int, Recipient]:
    found: dict[int, Recipient] = {}
    for part in chunked(sorted(set(ids)), 1000):
        rows = await session.execute(select(Recipient).where(Recipient.id.in_(part)))
        found.update({r.id: r for r in rows.scalars()})
    return found


async def sibling_channels(
    session: AsyncSession, message_id: uuid.UUID, recipient_id: int
) -> set[str]:
    rows = await session.execute(
        select(Delivery.channel).where(
            Delivery.message_id == message_id, Delivery.recipient_id == recipient_id
        )
    )
    return set(rows.scalars())


# --- Reading and cancelling -----------------------------------------------------------------


async def next_due(session: AsyncSession, after: dt.datetime | None = None) -> dt.datetime | None:
    """When the earliest pending delivery falls due (of those due later than ``after``, if
    given)."""
    query = select(func.min(Delivery.next_attempt_at)).where(
        Delivery.state == DeliveryState.PENDING.value
    )
    if after is not None:
        query = query.where(Delivery.next_attempt_at > after)
    return (await session.execute(query)).scalar_one_or_none()


async def count_by_state(session: AsyncSession, message_id: uuid.UUID) -> dict[str, int]:
    rows = await session.execute(
        select(Delivery.state, func.count())
        .where(Delivery.message_id == message_id)
        .group_by(Delivery.state)
    )
    counts = {state.value: 0 for state in DeliveryState}
    counts.update({state: n for state, n in rows})
    return counts


async def count_by_state_for(
    session: AsyncSession, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """:func:`count_by_state` of several messages in one query."""
    counts = {m: {state.value: 0 for state in DeliveryState} for m in message_ids}
    if not counts:
        return counts
    rows = await session.execute(
        select(Delivery.message_id, Delivery.state, func.count())
        .where(Delivery.message_id.in_(list(message_ids)))
        .group_by(Delivery.message_id, Delivery.state)
    )
    for message_id, state, n in rows:
        counts[message_id][state] = n
    return counts


async def reopen_unknown(
    session: AsyncSession, org_id: uuid.UUID, delivery_id: int, now: dt.datetime, detail: str
) -> Delivery | None:
    """Make an ``unknown`` delivery pending again, due now; ``None`` if it is not unknown.

    Fenced on the state, so two operators resending at once make one send.
    """
    delivery = (
        await session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.org_id == org_id,
                Delivery.state == DeliveryState.UNKNOWN.value,
            )
            .values(
                state=DeliveryState.PENDING.value,
                next_attempt_at=now,
                lease_expires_at=None,
                reason=detail,
                updated_at=now,
            )
            .returning(Delivery)
            .execution_options(synchronize_session=False)
        )
    ).scalar_one_or_none()
    if delivery is None:
        return None
    await record_events(session, now, [Change(delivery_id, DeliveryState.PENDING, None, detail)])
    # A message already marked completed has work again.
    await session.execute(
        update(Message)
        .where(Message.id == delivery.message_id, Message.state == MessageState.COMPLETED.value)
        .values(state=MessageState.SENDING.value, completed_at=None)
        .execution_options(synchronize_session=False)
    )
    return delivery


async def reopen_messages(session: AsyncSession, message_ids: Sequence[uuid.UUID]) -> None:
    """Mark these messages ``sending`` again if they were ``completed``: they have work again."""
    if not message_ids:
        return
    await session.execute(
        update(Message)
        .where(
            Message.id.in_(sorted(set(message_ids))),
            Message.state == MessageState.COMPLETED.value,
        )
        .values(state=MessageState.SENDING.value, completed_at=None)
        .execution_options(synchronize_session=False)
    )


async def finish_completed(session: AsyncSession, now: dt.datetime) -> int:
    """Mark ``completed`` every sending message none of whose deliveries has work left, with
    its ``message.completed`` webhook event."""
    work_left = exists().where(
        Delivery.message_id == Message.id,
        Delivery.state.in_([s.value for s in ACTIVE_STATES]),
    )
    result = await session.execute(
        update(Message)
        .where(Message.state == MessageState.SENDING.value, ~work_left)
        .values(state=MessageState.COMPLETED.value, completed_at=now)
        .returning(Message.id)
    )
    completed = list(result.scalars())
    await outbox.record_message_events(session, completed, MESSAGE_COMPLETED, now)
    return len(completed)


async def for_recipient(
    session: AsyncSession, recipient_id: int, limit: int
) -> list[tuple[Delivery, str, str]]:
    """A recipient's latest deliveries, newest first, with their message's title and kind."""
    rows = await session.execute(
        select(Delivery, Message.title, Message.kind)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.recipient_id == recipient_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    return [(d, title, kind) for d, title, kind in rows]


async def categories_sent_to(
    session: AsyncSession, org_id: uuid.UUID, recipient_id: int, limit: int = 100
) -> list[str]:
    """Categories of the organization's messages that ``recipient_id`` had a delivery of, in
    alphabetical order: what that person's preference page may name (never the categories of
    messages sent only to others). One query, over the deliveries index by recipient."""
    rows = await session.execute(
        select(Message.category)
        .join(Delivery, Delivery.message_id == Message.id)
        .where(
            Delivery.recipient_id == recipient_id,
            Delivery.org_id == org_id,
            Message.org_id == org_id,
            Message.category.is_not(None),
        )
        .distinct()
        .order_by(Message.category)
        .limit(limit)
    )
    return [category for category in rows.scalars() if category is not None]


async def count_in_flight(session: AsyncSession, message_id: uuid.UUID) -> int:
    return (
        await session.execute(
            select(func.count()).where(
                Delivery.message_id == message_id, Delivery.state == DeliveryState.SENDING.value
            )
        )
    ).scalar_one()


async def cancel_pending(session: AsyncSession, message_id: uuid.UUID, now: dt.datetime) -> int:
    """Cancel every delivery of the message that has not started; returns how many."""
    return await _cancel_pending_where(session, now, Delivery.message_id == message_id)


async def cancel_orphans(
    session: AsyncSession, now: dt.datetime, delivery_ids: Sequence[int] | None = None
) -> int:
    """Cancel pending deliveries whose message is cancelled; returns how many.

    A send in flight when its message was cancelled may end with "try again": its delivery
    is then pending in a cancelled message. Claims pass such deliveries by (G5); this gives
    them their final state, for ``delivery_ids`` right after such an outcome, or for all of
    them when the scheduler tidies up after a race between the two.
    """
    cancelled = select(Message.id).where(Message.state == MessageState.CANCELLED.value)
    conditions = [Delivery.message_id.in_(cancelled)]
    if delivery_ids is not None:
        conditions.append(Delivery.id.in_(list(delivery_ids)))
    return await _cancel_pending_where(session, now, *conditions)


async def _cancel_pending_where(
    session: AsyncSession, now: dt.datetime, *conditions: ColumnElement[bool]
) -> int:
    statement = (
        update(Delivery)
        .where(Delivery.state == DeliveryState.PENDING.value, *conditions)
        .values(state=DeliveryState.CANCELLED.value, reason="message cancelled", updated_at=now)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    ids = list((await session.execute(statement)).scalars())
    await record_events(
        session, now, (Change(i, DeliveryState.CANCELLED, None, "message cancelled") for i in ids)
    )
    return len(ids)


async def by_id(session: AsyncSession, delivery_id: int) -> Delivery | None:
    """The delivery with this id, whichever organization it belongs to (for signed links,
    whose signature already names it)."""
    return await session.get(Delivery, delivery_id)


async def get(session: AsyncSession, org_id: uuid.UUID, delivery_id: int) -> Delivery | None:
    return (
        await session.execute(
            select(Delivery).where(Delivery.id == delivery_id, Delivery.org_id == org_id)
        )
    ).scalar_one_or_none()


async def named_by_receipt(
    session: AsyncSession,
    *,
    orgs: Sequence[uuid.UUID],
    channel: str,
    provider: str,
    account: str,
    delivery_id: int | None = None,
    provider_message_id: str | None = None,
) -> list[Delivery]:
    """The deliveries, two at most, locked, that a receipt from a provider account names.

    Named by ``delivery_id`` when given, else by the provider's own id
    (``ix_deliveries_provider_message_id``). Only a delivery on ``channel`` of one of ``orgs``
    can match, and only one sent through this very account (``provider`` and ``account``),
    or one with no account recorded (a send whose outcome was never written, or one from
    before accounts were recorded), for which the account serving the organization now is
    the one. Two at most, so that the caller can tell one match from several.
    """
    if delivery_id is not None:
        key = Delivery.id == delivery_id
    else:
        key = Delivery.provider_message_id == provider_message_id
    query = select(Delivery).where(
        key,
        Delivery.org_id.in_(list(orgs)),
        Delivery.channel == channel,
        or_(
            and_(Delivery.provider_account == account, Delivery.provider == provider),
            and_(
                Delivery.provider_account.is_(None),
                or_(Delivery.provider.is_(None), Delivery.provider == provider),
            ),
        ),
    )
    # Locked on PostgreSQL; SQLite has no row locks (see bulletin.deliveries.queue).
    return list((await session.execute(query.with_for_update().limit(2))).scalars().all())


async def events(session: AsyncSession, delivery_id: int) -> list[DeliveryEvent]:
    rows = await session.execute(
        select(DeliveryEvent)
        .where(DeliveryEvent.delivery_id == delivery_id)
        .order_by(DeliveryEvent.id)
    )
    return list(rows.scalars())


async def page_for_message(
    session: AsyncSession,
    message_id: uuid.UUID,
    *,
    state: str | None,
    after_id: int | None,
    limit: int,
    states: Sequence[str] | None = None,
) -> list[tuple[Delivery, str]]:
    """Deliveries of a message by id, with their recipient's external id; only those in
    ``state``, or in any of ``states``, when given."""
    query = (
        select(Delivery, Recipient.external_id)
        .join(Recipient, Recipient.id == Delivery.recipient_id)
        .where(Delivery.message_id == message_id)
    )
    if state is not None:
        query = query.where(Delivery.state == state)
    if states is not None:
        query = query.where(Delivery.state.in_(list(states)))
    if after_id is not None:
        query = query.where(Delivery.id > after_id)
    rows = await session.execute(query.order_by(Delivery.id).limit(limit))
    return [(d, external_id) for d, external_id in rows]


async def anything_overdue(session: AsyncSession, now: dt.datetime) -> tuple[bool, bool]:
    """Whether any lease has expired, and whether any fallback deadline has passed.

    A cheap read, so that the scheduler opens a write transaction only when there is work:
    on SQLite every write transaction waits for the one writer.
    """
    expired = select(literal(1)).where(
        Delivery.state == DeliveryState.SENDING.value, Delivery.lease_expires_at < now
    )
    overdue = select(literal(1)).where(Delivery.fallback_at <= now)
    row = (await session.execute(select(expired.exists(), overdue.exists()))).one()
    return bool(row[0]), bool(row[1])
