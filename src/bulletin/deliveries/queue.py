"""The deliveries table as the work queue: claiming due deliveries, completing them, and
finding the claims whose worker went silent.

There is no broker: a committed ``pending`` row is the work item, and this module is the
whole protocol that hands it to one worker at a time (docs/architecture.md, "The claim
protocol").

**The claim protocol.**

1. :func:`claim` takes a batch of due ``pending`` rows of messages that are not cancelled, in
   one statement: each becomes ``sending``, its ``attempt`` is incremented and its lease
   (``lease_expires_at``) set. ``attempt`` is the claim's fencing token.
2. The worker sends while the lease holds: the provider call's timeout is well inside it.
3. :func:`complete` applies a batch of outcomes in one statement, each only where ``state`` is
   still ``sending`` and ``attempt`` still matches, so a worker whose lease ran out and was
   taken over changes nothing. The one exception is proof of acceptance, or a hand-back (no
   provider call was made), of the same attempt: either removes the doubt of an ``unknown``
   row, so it may settle one.
4. :func:`expired_leases` finds the ``sending`` rows whose lease ran out (the worker died or
   hung mid-send); the caller decides, per channel, whether each goes back to ``pending`` or
   becomes ``unknown``, and applies that through :func:`complete`, fenced like any outcome.

**Concurrent claims.** On PostgreSQL the claim selects the due rows ``FOR UPDATE SKIP
LOCKED`` (in a materialized CTE, so the lock is taken before the update) and updates only
those: claims running at once lock disjoint rows, and none waits for another. SQLite has no row
locks, and needs none: its writers are serialized (each write transaction begins ``IMMEDIATE``,
behind the process's writer lock, see :meth:`bulletin.db.Database.transaction`), so a claim's
select and update run alone and the next claim finds those rows ``sending``. That is the only
difference between the two claim statements, and :func:`_claim_statement` picks one. The same
holds for :func:`expired_leases` and the other locking reads of this package: SQLAlchemy leaves
``FOR UPDATE`` out when it compiles for SQLite.

Every claim and every applied outcome is recorded as a delivery event, in the same
transaction, with one insert per batch.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import UTCDateTime, dialect_name
from bulletin.deliveries import fallback, repository, suppressions
from bulletin.deliveries.models import Delivery
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.repository import Change
from bulletin.deliveries.states import DeliveryState
from bulletin.recipients import repository as recipients


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


def _timed(statement: Any, *names: str) -> Any:
    return statement.bindparams(*(bindparam(n, type_=UTCDateTime()) for n in names))


# --- Claiming -------------------------------------------------------------------------------

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


def _claim_statement(session: AsyncSession) -> Any:
    """The claim for the session's database: only PostgreSQL locks and skips rows."""
    statement = _CLAIM_PG if dialect_name(session) == "postgresql" else _CLAIM_SQLITE
    return _timed(statement, "now", "lease", "due_by").columns(
        id=Delivery.id.type,
        attempt=Delivery.attempt.type,
        send_attempts=Delivery.send_attempts.type,
        org_id=Delivery.org_id.type,
        message_id=Delivery.message_id.type,
        recipient_id=Delivery.recipient_id.type,
        channel=Delivery.channel.type,
        next_attempt_at=UTCDateTime(),
    )


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
    values = {"now": now, "lease": lease_until, "limit": limit, "due_by": due_by or now}
    result = await session.execute(_claim_statement(session), values)
    claimed = [ClaimedRow(*row) for row in result]
    await repository.record_events(
        session,
        now,
        (Change(row.id, DeliveryState.SENDING, row.attempt, claimer) for row in claimed),
    )
    return claimed


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


def _completion(session: AsyncSession, outcomes: Sequence[Outcome]) -> tuple[TextClause, str]:
    """The completion statement for the session's database, and its JSON payload.

    Both databases read the outcomes from one JSON array; they differ in how they unpack it,
    and in how an instant must be written in it: SQLite compares the stored text, so it gets
    exactly the text :class:`~bulletin.db.UTCDateTime` stores.
    """
    sqlite = dialect_name(session) == "sqlite"

    def instant(value: dt.datetime | None) -> str | None:
        if value is None:
            return None
        value = value.astimezone(dt.UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else value.isoformat()

    payload = json.dumps(
        [
            {
                "id": o.delivery_id,
                "attempt": o.attempt,
                "state": o.state.value,
                "reason": o.detail,
                "next_attempt_at": instant(o.next_attempt_at),
                "provider": o.provider,
                "provider_message_id": o.provider_message_id,
                "provider_account": o.provider_account,
                "channel": o.channel,
                "gave_back": int(o.gave_back),
            }
            for o in outcomes
        ]
    )
    return _timed(_COMPLETE_SQLITE if sqlite else _COMPLETE_PG, "now"), payload


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
    statement, payload = _completion(session, outcomes)
    result = await session.execute(statement, {"payload": payload, "now": now})
    # By claim, not by delivery: one batch may hold a stale outcome of a delivery next to the
    # outcome of its current claim (the same worker claimed it again after its lease ran out).
    applied_claims = {(row.id, row.attempt) for row in result}
    applied = [o for o in outcomes if (o.delivery_id, o.attempt) in applied_claims]
    await repository.record_events(
        session, now, (Change(o.delivery_id, o.state, o.attempt, o.detail) for o in applied)
    )
    for o in applied:
        if o.suppress is not None:
            s = o.suppress
            await suppressions.add(session, s.org_id, s.channel, s.address, o.detail or "", now)
    closed = [o.close_window for o in applied if o.close_window is not None]
    await recipients.close_windows(session, [(w.recipient_id, w.seen_inbound_at) for w in closed])
    failed = [o.delivery_id for o in applied if o.state == DeliveryState.FAILED]
    if failed:
        await fallback.fall_back(session, failed, now)
    again = [o.delivery_id for o in applied if o.state == DeliveryState.PENDING]
    if again:
        await repository.cancel_orphans(session, now, again)
    return applied


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
        .with_for_update(skip_locked=True)
    )
    return [ClaimedRow(*row) for row in await session.execute(query)]
