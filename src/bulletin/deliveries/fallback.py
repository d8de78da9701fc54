"""What a person gets after a delivery fails, or stays without a report for too long: their
next channel (routing ``first``), or, for a WhatsApp window that had closed, the approved
template, once.

A failure at send time (through :func:`bulletin.deliveries.queue.complete`), a ``failed``
receipt (:mod:`bulletin.deliveries.receipts`) and a passed ``fallback_after`` deadline (the
scheduler) all move the person on with :func:`fall_back`, so each path follows the same rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import upsert_statement
from bulletin.deliveries import repository, suppressions
from bulletin.deliveries.models import Delivery, DeliveryEvent
from bulletin.deliveries.outcomes import AS_TEMPLATE, SENDING_TEMPLATE
from bulletin.deliveries.repository import Change
from bulletin.deliveries.states import DeliveryState
from bulletin.messages.models import Message
from bulletin.messages.states import MessageState
from bulletin.recipients.addresses import address_of, unusable
from bulletin.recipients.models import Recipient


async def fall_back(session: AsyncSession, delivery_ids: Sequence[int], now: dt.datetime) -> int:
    """Give each person whose delivery failed their next channel (routing ``first``).

    The new delivery is on the next channel, in the message's order, that the person has no
    delivery on yet; the dispatcher checks it is usable and moves on again if not. The unique
    (message, recipient, channel) key means that a second fallback for the same person (a
    failed receipt arriving twice) creates nothing. Returns how many deliveries were made.
    """
    rows = await session.execute(
        select(Delivery, Message)
        .join(Message, Message.id == Delivery.message_id)
        .where(Delivery.id.in_(list(delivery_ids)), Message.routing == "first")
        .execution_options(populate_existing=True)
    )
    made = 0
    for delivery, message in rows:
        if message.state == MessageState.CANCELLED.value:
            continue
        taken = await repository.sibling_channels(session, message.id, delivery.recipient_id)
        remaining = await _usable_channels(
            session, delivery, [c for c in message.channels if c not in taken]
        )
        if not remaining:
            continue
        fallback_at = None
        if message.fallback_after_seconds:
            fallback_at = now + dt.timedelta(seconds=message.fallback_after_seconds)
        statement = (
            upsert_statement(session, Delivery)
            .values(
                org_id=delivery.org_id,
                message_id=delivery.message_id,
                recipient_id=delivery.recipient_id,
                channel=remaining[0],
                state=DeliveryState.PENDING.value,
                attempt=0,
                send_attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
                reason=f"fallback from {delivery.channel}",
                fallback_at=fallback_at,
            )
            .on_conflict_do_nothing(index_elements=["message_id", "recipient_id", "channel"])
            .returning(Delivery.id)
        )
        new_id = (await session.execute(statement)).scalar_one_or_none()
        if new_id is None:
            continue
        made += 1
        detail = f"fallback from {delivery.channel}: {delivery.reason or 'failed'}"
        await repository.record_events(
            session, now, [Change(new_id, DeliveryState.PENDING, 0, detail)]
        )
        if message.state == MessageState.COMPLETED.value:
            message.state = MessageState.SENDING.value
            message.completed_at = None
    await session.flush()
    return made


async def _usable_channels(
    session: AsyncSession, delivery: Delivery, channels: list[str]
) -> list[str]:
    """Those of ``channels`` the person can be reached on now (address, choice, no block)."""
    # The dispatcher's own rule, so that a fallback is never made to a channel it would skip.
    if not channels:
        return []
    person = await session.get(Recipient, delivery.recipient_id)
    if person is None or not person.active:
        return []
    addresses = {a for c in channels if (a := address_of(person, c)) is not None}
    blocked = await suppressions.suppressed_addresses(session, {delivery.org_id}, addresses)
    return [
        c
        for c in channels
        if unusable(person, c, lambda ch, a: (delivery.org_id, ch, a) in blocked) is None
    ]


# --- After a deadline without a delivery report ---------------------------------------------

_FALLBACK_WAITS = (DeliveryState.PENDING.value, DeliveryState.SENT.value)


async def due_fallbacks(session: AsyncSession, now: dt.datetime, limit: int) -> list[Delivery]:
    """Deliveries whose ``fallback_after`` has passed without a delivery report, locked."""
    # Deliveries that reached a settled state no longer need their deadline.
    await session.execute(
        update(Delivery)
        .where(
            Delivery.fallback_at <= now,
            Delivery.state.not_in([*_FALLBACK_WAITS, DeliveryState.SENDING.value]),
        )
        .values(fallback_at=None)
    )
    query = (
        select(Delivery)
        .where(Delivery.fallback_at <= now, Delivery.state.in_(_FALLBACK_WAITS))
        .order_by(Delivery.fallback_at)
        .limit(limit)
        # Locked and skipped on PostgreSQL; SQLite has no row locks (bulletin.deliveries.queue).
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(query)).scalars())


async def fall_back_after_deadline(
    session: AsyncSession, overdue: Sequence[Delivery], now: dt.datetime
) -> int:
    """Move each overdue person on to their next channel; an unsent delivery is cancelled."""
    why = "no delivery report in time; moved on to the next channel"
    cancelled: list[Change] = []
    for delivery in overdue:
        if delivery.state == DeliveryState.PENDING.value:
            delivery.state = DeliveryState.CANCELLED.value
            delivery.reason = why
            delivery.updated_at = now
            cancelled.append(Change(delivery.id, DeliveryState.CANCELLED, delivery.attempt, why))
        delivery.fallback_at = None
    await session.flush()
    await repository.record_events(session, now, cancelled)
    return await fall_back(session, [d.id for d in overdue], now)


# --- The approved template, once, after a closed WhatsApp window ----------------------------


async def may_send_template_instead(session: AsyncSession, delivery: Delivery) -> bool:
    """Whether a WhatsApp delivery that failed for a closed window may be sent again as the
    approved template.

    Not if its message was cancelled (G5: nothing of it starts again), and not if a template was
    already tried for it, so that a closed-window failure leads to at most one more send. The
    delivery's events are the marker, because every path leaves one there whatever happened
    since: a send accepted as a template ends its ``sent`` event with :data:`AS_TEMPLATE`, and a
    return to ``pending`` to send the template (after a refusal at send time, or after a failed
    receipt) starts with :data:`SENDING_TEMPLATE`. One query, on a rare path.
    """
    tried = (
        select(DeliveryEvent.id)
        .where(
            DeliveryEvent.delivery_id == delivery.id,
            or_(
                DeliveryEvent.detail.startswith(SENDING_TEMPLATE, autoescape=True),
                and_(
                    DeliveryEvent.state == DeliveryState.SENT.value,
                    DeliveryEvent.detail.endswith(AS_TEMPLATE, autoescape=True),
                ),
            ),
        )
        .exists()
    )
    row = (
        await session.execute(select(Message.state, tried).where(Message.id == delivery.message_id))
    ).one_or_none()
    if row is None:
        return False
    state, already = row
    return state != MessageState.CANCELLED.value and not already
