"""The outbox of status events: writing it in the transaction of each change, and the sender's
queries (claiming due rows, recording what each request got).

**Writing.** :func:`record_delivery_events` and :func:`record_message_events` each add one
``webhook_messages`` row per subscribed endpoint, with one ``INSERT .. SELECT`` per call, in
the caller's transaction: the event row is committed with the change it reports, or neither
is. The statement joins ``webhook_subscriptions``, which holds rows only for active
endpoints, and starts with a one-time test that any endpoint wants these kinds at all, so an
installation without endpoints pays one short statement per batch of changes. The payload's
facts (the recipient's external id, the message's kind) are copied into the row, so the sender
never reads the other tables. The tables of deliveries, messages and recipients are named in
the SQL text: this package does not import theirs.

**Sending.** :func:`claim` takes due rows the way the deliveries queue does (one statement,
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, serialized writers on SQLite), per active endpoint
(at most ``per_endpoint`` rows of each, over ``ix_webhook_messages_due``), so that rows of a
failing or disabled endpoint are never read and one busy endpoint cannot take every slot.
A claim increments ``attempts``, which is its fencing token, and moves ``next_attempt_at`` to
the end of the lease: if the worker dies, the row simply falls due again then and is sent again
with the same ``webhook-id``. :func:`record_results` writes the outcomes of many requests in one
statement, each only where the claim still holds.

A little over 400 lines, because it is one protocol on one table, like the deliveries queue:
the writes that fill the outbox and the claim and fence that empty it must agree on the
row's states and its fencing token, and each statement is written out for both databases.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Table,
    Uuid,
    bindparam,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import Json, UTCDateTime, chunked, dialect_name, utcnow
from bulletin.subscriptions.kinds import DELIVERY_KINDS
from bulletin.subscriptions.models import (
    WebhookAttempt,
    WebhookEndpoint,
    WebhookSubscription,
)

# --- Writing the outbox -------------------------------------------------------------------

#: Message ids per statement: one statement for every batch the scheduler completes.
_IDS_PER_STATEMENT = 2000


def _delivery_events(ids: str, states: str, kinds: str) -> Any:
    return text(
        f"""
        INSERT INTO webhook_messages (
            endpoint_id, org_id, kind, occurred_at, delivery_event_id, delivery_id, message_id,
            message_kind, recipient, channel, detail, attempt, state, attempts,
            next_attempt_at, created_at)
        SELECT s.endpoint_id, d.org_id, s.kind, ev.at, ev.id, d.id, d.message_id,
            m.kind, r.external_id, d.channel, ev.detail, ev.attempt, 'pending', 0, :now, :now
        FROM delivery_events ev
        JOIN deliveries d ON d.id = ev.delivery_id
        JOIN webhook_subscriptions s ON s.org_id = d.org_id AND s.kind = 'delivery.' || ev.state
        JOIN messages m ON m.id = d.message_id
        JOIN recipients r ON r.id = d.recipient_id
        WHERE ev.delivery_id {ids} AND ev.at = :at AND ev.state {states}
          AND EXISTS (SELECT 1 FROM webhook_subscriptions w WHERE w.kind {kinds})
        ON CONFLICT DO NOTHING
        """  # noqa: S608 (the interpolations are fixed choices)
    ).bindparams(bindparam("at", type_=UTCDateTime()), bindparam("now", type_=UTCDateTime()))


# The lists travel as one parameter each (an array, a JSON text), so that the statement's text,
# and so its prepared plan, is the same whatever the batch's size.
_DELIVERY_EVENTS_PG = _delivery_events(
    "= ANY(CAST(:ids AS bigint[]))",
    "= ANY(CAST(:states AS text[]))",
    "= ANY(CAST(:kinds AS text[]))",
)
_DELIVERY_EVENTS_SQLITE = _delivery_events(
    "IN (SELECT value FROM json_each(:ids))",
    "IN (SELECT value FROM json_each(:states))",
    "IN (SELECT value FROM json_each(:kinds))",
)


async def record_delivery_events(
    session: AsyncSession, delivery_ids: Sequence[int], at: dt.datetime, states: Collection[str]
) -> None:
    """Add to the outbox, for each endpoint subscribed to it, every event recorded at ``at``
    for these deliveries whose state is one of ``states`` (those not told are ignored).

    Called by the deliveries package right after it records the events, in its transaction:
    one statement, whatever the number of deliveries. An event selected twice is written once
    (unique per endpoint and event).
    """
    told = sorted(s for s in set(states) if s in DELIVERY_KINDS)
    if not told or not delivery_ids:
        return
    ids = sorted(set(delivery_ids))
    kinds = [DELIVERY_KINDS[s] for s in told]
    values: dict[str, Any] = {"at": at, "now": utcnow()}
    if dialect_name(session) == "postgresql":
        await session.execute(
            _DELIVERY_EVENTS_PG, {**values, "ids": ids, "states": told, "kinds": kinds}
        )
    else:
        lists = {"ids": json.dumps(ids), "states": json.dumps(told), "kinds": json.dumps(kinds)}
        await session.execute(_DELIVERY_EVENTS_SQLITE, {**values, **lists})


def _message_events(with_data: bool) -> Any:
    data = ":data" if with_data else "NULL"
    statement = text(
        f"""
        INSERT INTO webhook_messages (
            endpoint_id, org_id, kind, occurred_at, message_id, message_kind, data, state,
            attempts, next_attempt_at, created_at)
        SELECT s.endpoint_id, m.org_id, s.kind, :at, m.id, m.kind, {data}, 'pending', 0,
            :now, :now
        FROM messages m
        JOIN webhook_subscriptions s ON s.org_id = m.org_id AND s.kind = :kind
        WHERE m.id IN :ids
        """  # noqa: S608 (the one interpolation is a fixed choice)
    ).bindparams(
        bindparam("ids", expanding=True, type_=Uuid()),
        bindparam("at", type_=UTCDateTime()),
        bindparam("now", type_=UTCDateTime()),
    )
    if with_data:
        statement = statement.bindparams(bindparam("data", type_=Json))
    return statement


_MESSAGE_EVENTS = _message_events(with_data=False)
_MESSAGE_EVENTS_WITH_DATA = _message_events(with_data=True)


async def record_message_events(
    session: AsyncSession,
    message_ids: Sequence[uuid.UUID],
    kind: str,
    at: dt.datetime,
    data: dict[str, Any] | None = None,
) -> None:
    """Add a ``kind`` event (``message.completed``, ``message.cancelled``) of each message to
    the outbox of every endpoint of its organization subscribed to it; ``data`` is added to
    each payload's ``data``. One statement per call, in the caller's transaction."""
    if not message_ids:
        return
    statement = _MESSAGE_EVENTS if data is None else _MESSAGE_EVENTS_WITH_DATA
    now = utcnow()
    for part in chunked(sorted(set(message_ids)), _IDS_PER_STATEMENT):
        values: dict[str, Any] = {"ids": part, "kind": kind, "at": at, "now": now}
        if data is not None:
            values["data"] = data
        await session.execute(statement, values)


# --- Claiming -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox row this process now holds: everything its request needs but the endpoint."""

    id: int
    endpoint_id: uuid.UUID
    org_id: uuid.UUID
    kind: str
    occurred_at: dt.datetime
    delivery_id: int | None
    message_id: uuid.UUID | None
    message_kind: str | None
    recipient: str | None
    channel: str | None
    detail: str | None
    attempt: int | None
    data: dict[str, Any] | None
    #: Tries so far, this one included: the claim's fencing token.
    attempts: int


#: The columns a claim returns, in :class:`Claimed`'s order.
_RETURNED = (
    "id, endpoint_id, org_id, kind, occurred_at, delivery_id, message_id, message_kind, "
    "recipient, channel, detail, attempt, data, attempts"
)

# Each active endpoint's due rows, at most :per of each (LATERAL over the due index), locked
# and skipped; the earliest due first.
_CLAIM_PG = text(
    f"""
    WITH due AS MATERIALIZED (
        SELECT m.id FROM webhook_endpoints e
        CROSS JOIN LATERAL (
            SELECT w.id, w.next_attempt_at FROM webhook_messages w
            WHERE w.endpoint_id = e.id AND w.state = 'pending' AND w.next_attempt_at <= :now
            ORDER BY w.next_attempt_at
            LIMIT :per
            FOR UPDATE SKIP LOCKED
        ) m
        WHERE e.state = 'active' AND e.id NOT IN :busy
        ORDER BY m.next_attempt_at
        LIMIT :limit
    )
    UPDATE webhook_messages AS w
    SET attempts = w.attempts + 1, lease_expires_at = :lease, next_attempt_at = :lease
    FROM due WHERE w.id = due.id
    RETURNING {", ".join("w." + name for name in _RETURNED.split(", "))}
    """  # noqa: S608 (the interpolation is a fixed column list)
)
# SQLite: the same choice with a window function (its writers are serialized, no row locks).
_CLAIM_SQLITE = text(
    f"""
    UPDATE webhook_messages
    SET attempts = attempts + 1, lease_expires_at = :lease, next_attempt_at = :lease
    WHERE id IN (
        SELECT id FROM (
            SELECT w.id, w.next_attempt_at, row_number() OVER (
                PARTITION BY w.endpoint_id ORDER BY w.next_attempt_at, w.id) AS rank
            FROM webhook_messages w JOIN webhook_endpoints e ON e.id = w.endpoint_id
            WHERE e.state = 'active' AND e.id NOT IN :busy
              AND w.state = 'pending' AND w.next_attempt_at <= :now
        )
        WHERE rank <= :per
        ORDER BY next_attempt_at
        LIMIT :limit
    )
    RETURNING {_RETURNED}
    """  # noqa: S608 (the interpolation is a fixed column list)
)


def _claim_statement(session: AsyncSession) -> Any:
    statement = _CLAIM_PG if dialect_name(session) == "postgresql" else _CLAIM_SQLITE
    return statement.bindparams(
        bindparam("busy", expanding=True, type_=Uuid()),
        bindparam("now", type_=UTCDateTime()),
        bindparam("lease", type_=UTCDateTime()),
    ).columns(
        id=BigInteger(),
        endpoint_id=Uuid(),
        org_id=Uuid(),
        kind=String(),
        occurred_at=UTCDateTime(),
        delivery_id=BigInteger(),
        message_id=Uuid(),
        message_kind=String(),
        recipient=String(),
        channel=String(),
        detail=String(),
        attempt=Integer(),
        data=Json,
        attempts=Integer(),
    )


async def claim(
    session: AsyncSession,
    now: dt.datetime,
    lease_until: dt.datetime,
    *,
    limit: int,
    per_endpoint: int,
    busy: Collection[uuid.UUID] = (),
) -> list[Claimed]:
    """Take up to ``limit`` due rows of active endpoints, at most ``per_endpoint`` of each and
    none of ``busy`` ones, earliest due first: one more try each, held until ``lease_until``."""
    values = {
        "now": now,
        "lease": lease_until,
        "limit": limit,
        "per": per_endpoint,
        "busy": sorted(busy),
    }
    result = await session.execute(_claim_statement(session), values)
    return [Claimed(*row) for row in result]


async def endpoints(
    session: AsyncSession, ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, WebhookEndpoint]:
    """The endpoints with these ids (their URL and secrets), by id."""
    if not ids:
        return {}
    rows = await session.execute(select(WebhookEndpoint).where(WebhookEndpoint.id.in_(list(ids))))
    return {e.id: e for e in rows.scalars()}


_NEXT_DUE = text(
    """
    SELECT min((
        SELECT w.next_attempt_at FROM webhook_messages w
        WHERE w.endpoint_id = e.id AND w.state = 'pending'
        ORDER BY w.next_attempt_at LIMIT 1)) AS due
    FROM webhook_endpoints e WHERE e.state = 'active'
    """
).columns(due=UTCDateTime())


async def next_due(session: AsyncSession) -> dt.datetime | None:
    """When the earliest pending row of an active endpoint falls due (``None``: there is
    none). One probe of the due index per active endpoint."""
    value = (await session.execute(_NEXT_DUE)).scalar_one_or_none()
    return cast(dt.datetime | None, value)


# --- Recording results --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one claimed row: a request's answer, or a hand-back (never tried)."""

    id: int
    endpoint_id: uuid.UUID
    #: The claim's ``attempts``: the fence.
    attempts: int
    state: Literal["pending", "delivered", "failed"]
    #: When to try again (``pending`` only).
    next_attempt_at: dt.datetime | None
    #: ``False``: handed back without a request, which does not count as a try.
    tried: bool
    at: dt.datetime
    status: int | None = None
    error: str | None = None
    duration_ms: int = 0


_RESULTS_PG = text(
    """
    UPDATE webhook_messages AS w
    SET state = v.state,
        next_attempt_at = COALESCE(v.next_attempt_at, w.next_attempt_at),
        lease_expires_at = NULL,
        attempts = w.attempts - 1 + v.tried,
        last_status = CASE WHEN v.tried = 1 THEN v.status ELSE w.last_status END,
        last_error = CASE WHEN v.tried = 1 THEN v.error ELSE w.last_error END,
        finished_at = CASE WHEN v.state = 'pending' THEN NULL ELSE :now END
    FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS v(
        id bigint, attempts int, state text, next_attempt_at timestamptz, tried int,
        status int, error text)
    WHERE w.id = v.id AND w.attempts = v.attempts AND w.state = 'pending'
    RETURNING w.id
    """
)
_RESULTS_SQLITE = text(
    """
    UPDATE webhook_messages
    SET state = v.state,
        next_attempt_at = COALESCE(v.next_attempt_at, webhook_messages.next_attempt_at),
        lease_expires_at = NULL,
        attempts = webhook_messages.attempts - 1 + v.tried,
        last_status = CASE WHEN v.tried = 1 THEN v.status ELSE webhook_messages.last_status END,
        last_error = CASE WHEN v.tried = 1 THEN v.error ELSE webhook_messages.last_error END,
        finished_at = CASE WHEN v.state = 'pending' THEN NULL ELSE :now END
    FROM (
        SELECT json_extract(value, '$.id') AS id,
               json_extract(value, '$.attempts') AS attempts,
               json_extract(value, '$.state') AS state,
               json_extract(value, '$.next_attempt_at') AS next_attempt_at,
               json_extract(value, '$.tried') AS tried,
               json_extract(value, '$.status') AS status,
               json_extract(value, '$.error') AS error
        FROM json_each(:payload)
    ) AS v
    WHERE webhook_messages.id = v.id AND webhook_messages.attempts = v.attempts
      AND webhook_messages.state = 'pending'
    RETURNING webhook_messages.id
    """
)

_ATTEMPTS = cast(Table, WebhookAttempt.__table__)


async def record_results(
    session: AsyncSession, results: Sequence[Result], now: dt.datetime
) -> list[Result]:
    """Write results whose claim still holds, in one statement, and an attempt row for each
    request among them (one more); returns the results applied.

    A result whose row was claimed again meanwhile (its lease ran out) or deleted with its
    endpoint changes nothing.
    """
    if not results:
        return []
    sqlite = dialect_name(session) == "sqlite"

    def instant(value: dt.datetime | None) -> str | None:
        # SQLite compares the stored text: the exact text UTCDateTime stores.
        if value is None:
            return None
        value = value.astimezone(dt.UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else value.isoformat()

    payload = json.dumps(
        [
            {
                "id": r.id,
                "attempts": r.attempts,
                "state": r.state,
                "next_attempt_at": instant(r.next_attempt_at),
                "tried": int(r.tried),
                "status": r.status,
                "error": r.error,
            }
            for r in results
        ]
    )
    statement = (_RESULTS_SQLITE if sqlite else _RESULTS_PG).bindparams(
        bindparam("now", type_=UTCDateTime())
    )
    applied_ids = set(
        (await session.execute(statement, {"payload": payload, "now": now})).scalars()
    )
    applied = [r for r in results if r.id in applied_ids]
    attempts = [
        {
            "webhook_message_id": r.id,
            "endpoint_id": r.endpoint_id,
            "at": r.at,
            "status_code": r.status,
            "error": r.error,
            "duration_ms": r.duration_ms,
        }
        for r in applied
        if r.tried
    ]
    for part in chunked(attempts, 2000):
        await session.execute(insert(_ATTEMPTS), part)
    return applied


async def mark_failing(
    session: AsyncSession, endpoint_ids: Collection[uuid.UUID], now: dt.datetime
) -> list[WebhookEndpoint]:
    """Mark these endpoints ``failing`` (those still active) and drop their subscriptions, so
    that nothing more is written for them nor sent to them; returns the ones it changed."""
    if not endpoint_ids:
        return []
    changed = list(
        (
            await session.execute(
                update(WebhookEndpoint)
                .where(
                    WebhookEndpoint.id.in_(list(endpoint_ids)), WebhookEndpoint.state == "active"
                )
                .values(state="failing", failing_since=now, updated_at=now)
                .returning(WebhookEndpoint)
                .execution_options(synchronize_session=False)
            )
        ).scalars()
    )
    if changed:
        await session.execute(
            delete(WebhookSubscription).where(
                WebhookSubscription.endpoint_id.in_([e.id for e in changed])
            )
        )
    return changed
