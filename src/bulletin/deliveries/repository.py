"""Every query on the deliveries table, which is Bulletin's work queue.

The claim protocol lives here (ARCHITECTURE.md, "Claiming work without duplicates"):

1. :func:`claim` takes a batch of due ``pending`` rows, locked with ``FOR UPDATE SKIP LOCKED``
   on PostgreSQL (SQLite serializes writers by itself), sets them ``sending``, increments
   ``attempt`` (the fencing token) and sets the lease.
2. The worker sends while the lease holds.
3. :func:`complete` applies outcomes in one statement, each only where ``state`` is still
   ``sending`` and ``attempt`` still matches: a worker whose lease was taken over changes
   nothing. The one exception is proof of acceptance, which may also settle an ``unknown``
   left by the same attempt.
4. :func:`expired_leases` finds sends whose worker went silent; the caller decides, per
   channel, whether they go back to ``pending`` or become ``unknown``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import UTCDateTime, chunked, dialect_name, upsert_statement
from bulletin.deliveries.models import Delivery, DeliveryEvent, Suppression
from bulletin.deliveries.outcomes import AS_TEMPLATE, SENDING_TEMPLATE, Outcome
from bulletin.deliveries.states import DeliveryState, MessageState
from bulletin.messages.models import Message
from bulletin.recipients import repository as recipients
from bulletin.recipients.models import Recipient
from bulletin.worker.policy import address_of, unusable

# --- Claiming -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A delivery this worker now holds, with the recipient facts dispatch needs."""

    id: int
    attempt: int
    send_attempts: int
    org_id: uuid.UUID
    message_id: uuid.UUID
    recipient_id: int
    channel: str
    #: When it is due (``next_attempt_at``), where the query read it.
    due: dt.datetime | None = None


_CLAIM_PG = text(
    """
    WITH due AS MATERIALIZED (
        SELECT id FROM deliveries
        WHERE state = 'pending' AND next_attempt_at <= :due_by
          AND NOT EXISTS (
              SELECT 1 FROM messages m WHERE m.id = deliveries.message_id AND m.state = 'cancelled'
          )
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE deliveries AS d
    SET state = 'sending', attempt = d.attempt + 1, send_attempts = d.send_attempts + 1,
        lease_expires_at = :lease, updated_at = :now
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.attempt, d.send_attempts, d.org_id, d.message_id, d.recipient_id, d.channel,
        d.next_attempt_at
    """
)
_CLAIM_SQLITE = text(
    """
    UPDATE deliveries
    SET state = 'sending', attempt = attempt + 1, send_attempts = send_attempts + 1,
        lease_expires_at = :lease, updated_at = :now
    WHERE id IN (
        SELECT id FROM deliveries
        WHERE state = 'pending' AND next_attempt_at <= :due_by
          AND NOT EXISTS (
              SELECT 1 FROM messages m WHERE m.id = deliveries.message_id AND m.state = 'cancelled'
          )
        ORDER BY next_attempt_at
        LIMIT :limit
    )
    RETURNING id, attempt, send_attempts, org_id, message_id, recipient_id, channel,
        next_attempt_at
    """
)


def _timed(statement: Any, *names: str) -> Any:
    return statement.bindparams(*(bindparam(n, type_=UTCDateTime()) for n in names))


async def claim(
    session: AsyncSession,
    now: dt.datetime,
    lease_until: dt.datetime,
    limit: int,
    claimer: str | None = None,
    due_by: dt.datetime | None = None,
) -> list[ClaimedRow]:
    """Take up to ``limit`` pending deliveries due by ``due_by`` (by ``now`` when not given):
    ``sending``, next attempt, leased. Each row says when it is due: one taken ahead of time
    must not be sent before.

    Each claim is recorded as an event, like every other change of state, naming the
    ``claimer`` (host and process), so that an attempt left in doubt can be traced to the
    process that held it.
    """
    postgres = dialect_name(session) == "postgresql"
    statement = _timed(_CLAIM_PG if postgres else _CLAIM_SQLITE, "now", "lease", "due_by")
    statement = statement.columns(
        id=Delivery.id.type,
        attempt=Delivery.attempt.type,
        send_attempts=Delivery.send_attempts.type,
        org_id=Delivery.org_id.type,
        message_id=Delivery.message_id.type,
        recipient_id=Delivery.recipient_id.type,
        channel=Delivery.channel.type,
        next_attempt_at=UTCDateTime(),
    )
    values = {"now": now, "lease": lease_until, "limit": limit, "due_by": due_by or now}
    result = await session.execute(statement, values)
    claimed = [ClaimedRow(*row) for row in result]
    await add_events(
        session,
        [
            {
                "delivery_id": row.id,
                "at": now,
                "state": DeliveryState.SENDING.value,
                "attempt": row.attempt,
                "detail": claimer,
            }
            for row in claimed
        ],
    )
    return claimed


async def recipients_by_id(session: AsyncSession, ids: Sequence[int]) -> dict[int, Recipient]:
    found: dict[int, Recipient] = {}
    for part in chunked(sorted(set(ids)), 1000):
        rows = await session.execute(select(Recipient).where(Recipient.id.in_(part)))
        found.update({r.id: r for r in rows.scalars()})
    return found


async def suppressed_addresses(
    session: AsyncSession, org_ids: set[uuid.UUID], addresses: set[str]
) -> set[tuple[uuid.UUID, str, str]]:
    """Which of these addresses are on their organization's suppression list, per channel."""
    if not addresses:
        return set()
    rows = await session.execute(
        select(Suppression.org_id, Suppression.channel, Suppression.address).where(
            Suppression.org_id.in_(org_ids), Suppression.address.in_(addresses)
        )
    )
    return {(row.org_id, row.channel, row.address) for row in rows}


async def sibling_channels(
    session: AsyncSession, message_id: uuid.UUID, recipient_id: int
) -> set[str]:
    rows = await session.execute(
        select(Delivery.channel).where(
            Delivery.message_id == message_id, Delivery.recipient_id == recipient_id
        )
    )
    return set(rows.scalars())


# --- Completing -----------------------------------------------------------------------------

_COMPLETE_PG = text(
    """
    UPDATE deliveries AS d
    SET state = v.state,
        reason = v.reason,
        next_attempt_at = COALESCE(v.next_attempt_at, d.next_attempt_at),
        lease_expires_at = NULL,
        provider = COALESCE(v.provider, d.provider),
        provider_message_id = COALESCE(v.provider_message_id, d.provider_message_id),
        provider_account = COALESCE(v.provider_account, d.provider_account),
        channel = COALESCE(v.channel, d.channel),
        send_attempts = d.send_attempts - v.gave_back,
        sent_at = CASE WHEN v.state = 'sent' THEN :now ELSE d.sent_at END,
        updated_at = :now
    FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS v(
        id bigint, attempt int, state text, reason text, next_attempt_at timestamptz,
        provider text, provider_message_id text, provider_account text, channel text,
        gave_back int)
    WHERE d.id = v.id AND d.attempt = v.attempt
      AND (d.state = 'sending'
           OR (d.state = 'unknown' AND (v.state = 'sent' OR v.gave_back = 1)))
    RETURNING d.id, d.attempt
    """
)
_COMPLETE_SQLITE = text(
    """
    UPDATE deliveries
    SET state = v.state,
        reason = v.reason,
        next_attempt_at = COALESCE(v.next_attempt_at, deliveries.next_attempt_at),
        lease_expires_at = NULL,
        provider = COALESCE(v.provider, deliveries.provider),
        provider_message_id = COALESCE(v.provider_message_id, deliveries.provider_message_id),
        provider_account = COALESCE(v.provider_account, deliveries.provider_account),
        channel = COALESCE(v.channel, deliveries.channel),
        send_attempts = deliveries.send_attempts - v.gave_back,
        sent_at = CASE WHEN v.state = 'sent' THEN :now ELSE deliveries.sent_at END,
        updated_at = :now
    FROM (
        SELECT json_extract(value, '$.id') AS id,
               json_extract(value, '$.attempt') AS attempt,
               json_extract(value, '$.state') AS state,
               json_extract(value, '$.reason') AS reason,
               json_extract(value, '$.next_attempt_at') AS next_attempt_at,
               json_extract(value, '$.provider') AS provider,
               json_extract(value, '$.provider_message_id') AS provider_message_id,
               json_extract(value, '$.provider_account') AS provider_account,
               json_extract(value, '$.channel') AS channel,
               json_extract(value, '$.gave_back') AS gave_back
        FROM json_each(:payload)
    ) AS v
    WHERE deliveries.id = v.id AND deliveries.attempt = v.attempt
      AND (deliveries.state = 'sending'
           OR (deliveries.state = 'unknown' AND (v.state = 'sent' OR v.gave_back = 1)))
    RETURNING deliveries.id, deliveries.attempt
    """
)


def _json_time(value: dt.datetime | None, sqlite: bool) -> str | None:
    if value is None:
        return None
    value = value.astimezone(dt.UTC)
    # SQLite compares the stored text, so it must be written exactly as UTCDateTime stores it.
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else value.isoformat()


async def complete(
    session: AsyncSession, outcomes: Sequence[Outcome], now: dt.datetime
) -> list[Outcome]:
    """Apply outcomes whose claim still holds, in one statement; return the ones applied.

    An ``unknown`` delivery (its lease ran out first) still takes two outcomes of the same
    attempt, because they remove the doubt: proof that the provider accepted it, and a
    hand-back, which says the provider was never called. Each applied outcome gets its event,
    and a requested suppression is recorded, as is a WhatsApp window the provider said is
    closed.
    """
    if not outcomes:
        return []
    sqlite = dialect_name(session) == "sqlite"
    payload = json.dumps(
        [
            {
                "id": o.delivery_id,
                "attempt": o.attempt,
                "state": o.state.value,
                "reason": o.detail,
                "next_attempt_at": _json_time(o.next_attempt_at, sqlite),
                "provider": o.provider,
                "provider_message_id": o.provider_message_id,
                "provider_account": o.provider_account,
                "channel": o.channel,
                "gave_back": int(o.gave_back),
            }
            for o in outcomes
        ]
    )
    statement = _timed(_COMPLETE_SQLITE if sqlite else _COMPLETE_PG, "now")
    result = await session.execute(statement, {"payload": payload, "now": now})
    # By claim, not by delivery: one batch may hold a stale outcome of a delivery next to the
    # outcome of its current claim (the same worker claimed it again after its lease ran out).
    applied_claims = {(row.id, row.attempt) for row in result}
    applied = [o for o in outcomes if (o.delivery_id, o.attempt) in applied_claims]
    await add_events(
        session,
        [
            {
                "delivery_id": o.delivery_id,
                "at": now,
                "state": o.state.value,
                "attempt": o.attempt,
                "detail": o.detail,
            }
            for o in applied
        ],
    )
    for o in applied:
        if o.suppress is not None:
            s = o.suppress
            await add_suppression(session, s.org_id, s.channel, s.address, o.detail or "", now)
    closed = [o.close_window for o in applied if o.close_window is not None]
    await recipients.close_windows(session, [(w.recipient_id, w.seen_inbound_at) for w in closed])
    failed = [o.delivery_id for o in applied if o.state == DeliveryState.FAILED]
    if failed:
        await fall_back(session, failed, now)
    again = [o.delivery_id for o in applied if o.state == DeliveryState.PENDING]
    if again:
        await cancel_orphans(session, now, again)
    return applied


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


# --- Falling back to the next channel -------------------------------------------------------


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
        taken = await sibling_channels(session, message.id, delivery.recipient_id)
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
        await add_events(
            session,
            [
                {
                    "delivery_id": new_id,
                    "at": now,
                    "state": DeliveryState.PENDING.value,
                    "attempt": 0,
                    "detail": f"fallback from {delivery.channel}: {delivery.reason or 'failed'}",
                }
            ],
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
    blocked = await suppressed_addresses(session, {delivery.org_id}, addresses)
    return [
        c
        for c in channels
        if unusable(person, c, lambda ch, a: (delivery.org_id, ch, a) in blocked) is None
    ]


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
    )
    if dialect_name(session) == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list((await session.execute(query)).scalars())


async def fall_back_after_deadline(
    session: AsyncSession, overdue: Sequence[Delivery], now: dt.datetime
) -> int:
    """Move each overdue person on to their next channel; an unsent delivery is cancelled."""
    events = []
    for delivery in overdue:
        why = "no delivery report in time; moved on to the next channel"
        if delivery.state == DeliveryState.PENDING.value:
            delivery.state = DeliveryState.CANCELLED.value
            delivery.reason = why
            delivery.updated_at = now
            events.append(
                {
                    "delivery_id": delivery.id,
                    "at": now,
                    "state": DeliveryState.CANCELLED.value,
                    "attempt": delivery.attempt,
                    "detail": why,
                }
            )
        delivery.fallback_at = None
    await session.flush()
    await add_events(session, events)
    return await fall_back(session, [d.id for d in overdue], now)


async def add_suppression(
    session: AsyncSession,
    org_id: uuid.UUID,
    channel: str,
    address: str,
    reason: str,
    now: dt.datetime,
) -> None:
    statement = upsert_statement(session, Suppression).values(
        org_id=org_id, channel=channel, address=address, reason=reason, created_at=now
    )
    await session.execute(statement.on_conflict_do_nothing())


_EVENTS = cast(Table, DeliveryEvent.__table__)


async def add_events(session: AsyncSession, events: list[dict[str, Any]]) -> None:
    # Through the table, not the ORM class: the same rows without the ORM's bulk bookkeeping,
    # which cost more than the insert itself on the hot path.
    for part in chunked(events, 2000):
        await session.execute(insert(_EVENTS), part)


# --- Expired leases -------------------------------------------------------------------------


async def expired_leases(session: AsyncSession, now: dt.datetime, limit: int) -> list[ClaimedRow]:
    """Deliveries still ``sending`` after their lease ran out, locked for the caller to settle."""
    query = (
        select(
            Delivery.id,
            Delivery.attempt,
            Delivery.send_attempts,
            Delivery.org_id,
            Delivery.message_id,
            Delivery.recipient_id,
            Delivery.channel,
        )
        .where(Delivery.state == DeliveryState.SENDING.value, Delivery.lease_expires_at < now)
        .order_by(Delivery.lease_expires_at)
        .limit(limit)
    )
    if dialect_name(session) == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [ClaimedRow(*row) for row in await session.execute(query)]


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
    await add_events(
        session,
        [
            {
                "delivery_id": delivery_id,
                "at": now,
                "state": DeliveryState.PENDING.value,
                "attempt": None,
                "detail": detail,
            }
        ],
    )
    # A message already marked completed has work again.
    await session.execute(
        update(Message)
        .where(Message.id == delivery.message_id, Message.state == MessageState.COMPLETED.value)
        .values(state=MessageState.SENDING.value, completed_at=None)
        .execution_options(synchronize_session=False)
    )
    return delivery


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
    await add_events(
        session,
        [
            {
                "delivery_id": i,
                "at": now,
                "state": DeliveryState.CANCELLED.value,
                "attempt": None,
                "detail": "message cancelled",
            }
            for i in ids
        ],
    )
    return len(ids)


async def get(session: AsyncSession, org_id: uuid.UUID, delivery_id: int) -> Delivery | None:
    return (
        await session.execute(
            select(Delivery).where(Delivery.id == delivery_id, Delivery.org_id == org_id)
        )
    ).scalar_one_or_none()


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


# --- Figures for metrics --------------------------------------------------------------------

#: Longest a scrape's count may run on PostgreSQL, so a huge table skips a scrape, not hangs it.
_COUNT_TIMEOUT_MS = 5000


async def counts_by_channel_and_state(session: AsyncSession) -> dict[tuple[str, str], int]:
    """How many deliveries there are per (channel, state), over the whole table.

    One GROUP BY, which visits every row: no index holds both columns, so PostgreSQL scans
    the table (about 0.3 s per two million rows on two cores). It runs under a statement
    timeout there, and only when metrics are scraped.
    """
    if dialect_name(session) == "postgresql":
        await session.execute(text(f"SET LOCAL statement_timeout = {_COUNT_TIMEOUT_MS}"))
    rows = await session.execute(
        select(Delivery.channel, Delivery.state, func.count()).group_by(
            Delivery.channel, Delivery.state
        )
    )
    return {(channel, state): int(n) for channel, state, n in rows}


async def queue_depth(session: AsyncSession, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """Pending deliveries due at ``now``, and when the oldest of them fell due.

    Reads only the due index (``ix_deliveries_due``), so it costs what the queue holds.
    """
    count, oldest = (
        await session.execute(
            select(func.count(), func.min(Delivery.next_attempt_at)).where(
                Delivery.state == DeliveryState.PENDING.value, Delivery.next_attempt_at <= now
            )
        )
    ).one()
    return int(count), oldest
