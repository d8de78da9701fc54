"""Event use cases: define event types, and accept events as notifications.

An event names its type, its recipients and its data; accepting it makes one notification per
recipient, with the type's texts (templates over ``recipient`` and ``data``) copied into it, so
that changing a type affects only events accepted afterwards. The producer's event id is kept
(as long as the organization): an id seen again answers the original messages and creates
nothing, whatever the rest of the event says. That is how a producer (an HTTP client retrying,
a queue delivering again after a crash) is idempotent without an ``Idempotency-Key``.

:func:`accept` is the one way in, for ``POST /v1/events``, the batch route and the queue
consumer alike. It takes many events at once and costs a fixed number of statements whatever
their number; a bad event is refused alone, with its reasons, and the others are accepted.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin import jsonvalue
from bulletin.db import utcnow
from bulletin.errors import FieldError, NotFound
from bulletin.events import checks, repository, schemas
from bulletin.events.checks import Candidate
from bulletin.events.models import EventType
from bulletin.ids import decode_cursor, encode_cursor, uuid7
from bulletin.messages import templates
from bulletin.messages.models import Message
from bulletin.messages.schemas import duration_seconds
from bulletin.messages.service import format_duration
from bulletin.recipients.service import merge_inline

#: Seconds one call spends checking templates against its events' data. The first event is
#: always checked; past this, events are accepted unchecked, and a template that fails for
#: one of them fails that delivery at send time, within the render budget (a batch of heavy
#: templates cannot hold a request, or the queue, for minutes).
CHECK_SECONDS = 1.0
#: Most bytes of data one event may copy into its messages in all (data size x recipients).
MAX_COPIED_DATA_BYTES = 8 * 1024 * 1024
#: Most recipients one call may name in all: what the batch route allows.
MAX_RECIPIENTS_PER_CALL = 10_000
STATUSES = ("accepted", "duplicate", "refused")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event of a call to :func:`accept`, by its place in the call."""

    index: int
    #: The producer's id, if it could be read.
    event_id: str | None
    status: Literal["accepted", "duplicate", "refused"]
    #: The messages it became (accepted) or had become (duplicate), one per recipient.
    messages: list[Message]
    #: Refused: one line for people.
    reason: str | None = None
    #: Refused: each reason, placed in the event (``("recipients", 2, "phone")``).
    errors: tuple[FieldError, ...] = ()
    #: Accepted or duplicate: the key of the event type it was accepted as.
    event_type: str | None = None


# Event types ---------------------------------------------------------------------------------


def _type_out(row: EventType) -> schemas.EventType:
    return schemas.EventType(
        key=row.key,
        description=row.description,
        title=row.title,
        body=row.body,
        overrides=row.overrides or {},
        channels=list(row.channels),
        routing=row.routing,
        category=row.category,
        urgent=row.urgent,
        delay=format_duration(row.delay_seconds) if row.delay_seconds else None,
        fallback_after=(
            format_duration(row.fallback_after_seconds) if row.fallback_after_seconds else None
        ),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def put_type(
    session: AsyncSession, org_id: uuid.UUID, key: str, body: schemas.EventTypeIn
) -> tuple[schemas.EventType, bool]:
    """Create or replace an event type; returns it and whether it was created.

    Its templates are checked as a message's are, with empty data (a use of ``data`` that
    only a value can satisfy waits for the events, whose own data is checked).
    """
    overrides = body.overrides.model_dump(exclude_none=True) if body.overrides else {}
    templates.check(body.title, body.body, overrides, [], data=None)
    values = {
        "description": body.description,
        "title": body.title,
        "body": body.body,
        "overrides": overrides,
        "channels": list(body.channels),
        "routing": body.routing,
        "category": body.category,
        "urgent": body.urgent,
        "delay_seconds": duration_seconds(body.delay) if body.delay else None,
        "fallback_after_seconds": (
            duration_seconds(body.fallback_after) if body.fallback_after else None
        ),
    }
    row = await repository.put_type(session, org_id, key, values, utcnow())
    return _type_out(row), row.version == 1


async def get_type(session: AsyncSession, org_id: uuid.UUID, key: str) -> schemas.EventType:
    row = await repository.get_type(session, org_id, key)
    if row is None:
        raise NotFound(f"There is no event type {key!r}.")
    return _type_out(row)


async def delete_type(session: AsyncSession, org_id: uuid.UUID, key: str) -> None:
    """Delete an event type; events accepted already keep their messages."""
    if not await repository.delete_type(session, org_id, key):
        raise NotFound(f"There is no event type {key!r}.")


async def page_types(
    session: AsyncSession, org_id: uuid.UUID, cursor: str | None, limit: int
) -> schemas.EventTypePage:
    after = str(decode_cursor(cursor, str)) if cursor else None
    found = await repository.page_types(session, org_id, after, limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return schemas.EventTypePage(
        items=[_type_out(row) for row in found],
        next_cursor=encode_cursor(found[-1].key) if more else None,
    )


# Accepting events ----------------------------------------------------------------------------


def named_recipients(raw_events: Sequence[object]) -> int:
    """How many recipients ``raw_events`` name in all, as far as can be told unvalidated."""
    total = 0
    for raw in raw_events:
        listed = raw.get("recipients") if isinstance(raw, dict) else None
        total += len(listed) if isinstance(listed, list) else 1
    return total


async def accept(
    session: AsyncSession,
    org_id: uuid.UUID,
    raw_events: Sequence[object],
    *,
    region: str | None,
    now: dt.datetime,
) -> list[Outcome]:
    """Accept events in the caller's transaction; never commits, never raises for a bad event.

    Returns one :class:`Outcome` per item of ``raw_events`` (parsed JSON), in order. An event
    whose id was accepted before, or earlier in the call, is a duplicate, whatever else it
    says. Any other event is validated, its type looked up, its recipients found (inline ones
    created or updated, ``region`` the default country of their phone numbers) and its
    templates rendered for each of them with its data; an event failing any of that is
    refused alone, and changes nothing. Each accepted event becomes one notification per
    recipient, due at its ``send_at``, else ``now`` plus its type's delay.

    The events are stored before anything else is written: an event another transaction is
    accepting at the same moment (on PostgreSQL: the same id, not yet committed) makes this
    one wait, and then turns out a duplicate that created nothing. Statements: a fixed number
    per call (per thousand rows), whatever the number of events.
    """
    outcomes: list[Outcome | None] = [None] * len(raw_events)
    ids = [checks.read_id(raw) for raw in raw_events]
    stored = await repository.stored_events(session, org_id, [i for i in ids if i is not None])
    fresh = [(n, raw) for n, raw in enumerate(raw_events) if ids[n] not in stored]
    candidates, found = await _validated(session, org_id, fresh, outcomes, region)
    # The first good event of each id wins; a later one with its id is its duplicate.
    winners: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.problems:
            outcomes[candidate.index] = _refused(candidate)
        else:
            winners.setdefault(candidate.event.id, candidate)
    chosen = {key: c.index for key, c in winners.items()}
    planned = {key: [uuid7() for _ in c.people] for key, c in winners.items()}
    new = await repository.add_events(
        session,
        [
            {
                "org_id": org_id,
                "client_id": key,
                "type": c.type.key,
                "type_version": c.type.version,
                "message_ids": [str(m) for m in planned[key]],
                "created_at": now,
            }
            for key, c in winners.items()
        ],
    )
    late = [key for key in winners if key not in new]
    if late:  # accepted by another transaction while this one was checking them
        stored.update(await repository.stored_events(session, org_id, late))
        for key in late:
            del winners[key]
    recipient_ids = {external_id: r.id for external_id, r in found.items()}
    recipient_ids.update(await _merge_people(session, org_id, winners, outcomes, region))
    messages: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for key, candidate in winners.items():
        rows, rows_links = checks.message_rows(org_id, candidate, planned[key], recipient_ids, now)
        messages += rows
        links += rows_links
        made = [Message(**row) for row in rows]
        outcomes[candidate.index] = Outcome(
            candidate.index, key, "accepted", made, event_type=candidate.type.key
        )
    await repository.add_messages(session, messages, links)
    await _duplicates(session, org_id, ids, stored, chosen, outcomes)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


async def _validated(
    session: AsyncSession,
    org_id: uuid.UUID,
    fresh: list[tuple[int, object]],
    outcomes: list[Outcome | None],
    region: str | None,
) -> tuple[list[Candidate], dict[str, Row[Any]]]:
    """The events of ``fresh`` (index, raw) that parse and name a type, each with the problems
    found in it, and the stored recipients they name; those that do not parse or name no type
    are refused in ``outcomes``."""
    parsed: list[tuple[int, schemas.EventIn]] = []
    for index, raw in fresh:
        try:
            parsed.append((index, schemas.EventIn.model_validate(raw)))
        except ValidationError as exc:
            errors = checks.validation_errors(exc)
            reason = "The event is invalid." if isinstance(raw, dict) else "An event is an object."
            outcomes[index] = Outcome(
                index, checks.read_id(raw), "refused", [], reason, tuple(errors)
            )
    types = await repository.types_by_key(session, org_id, [e.type for _, e in parsed])
    candidates: list[Candidate] = []
    for index, event in parsed:
        kind = types.get(event.type)
        if kind is None:
            problem = FieldError(("type",), f"no event type {event.type!r}", "unknown")
            reason = f"There is no event type {event.type!r}."
            outcomes[index] = Outcome(index, event.id, "refused", [], reason, (problem,))
            continue
        people, inline = checks.people_of(event)
        candidate = Candidate(index, event, kind, people, inline)
        candidate.problems = checks.phone_errors(event, region)
        if candidate.problems:
            candidate.reason = "A recipient of the event has an invalid phone number."
        copied = len(jsonvalue.compact(event.data).encode()) * len(people)
        if copied > MAX_COPIED_DATA_BYTES:
            candidate.reason = "The event's data is too large for so many recipients."
            candidate.problems.append(
                FieldError(
                    ("data",),
                    f"the data would be copied to {len(people)} messages, {copied} bytes in "
                    f"all; at most {MAX_COPIED_DATA_BYTES}",
                    "data_too_large",
                )
            )
        candidates.append(candidate)
    found = await repository.recipients_by_external_id(
        session, org_id, [p for c in candidates if not c.problems for p in c.people]
    )
    checks_end = time.monotonic() + CHECK_SECONDS
    for n, candidate in enumerate([c for c in candidates if not c.problems]):
        checks.check_people(candidate, found)
        if not candidate.problems and (n == 0 or time.monotonic() < checks_end):
            checks.check_templates(candidate, found, region)
    return candidates, found


async def _merge_people(
    session: AsyncSession,
    org_id: uuid.UUID,
    winners: dict[str, Candidate],
    outcomes: list[Outcome | None],
    region: str | None,
) -> dict[str, int]:
    """Create or update the inline recipients of ``winners``; returns the internal id of every
    person they name. An event whose person was deactivated since it was checked (by another
    transaction) is refused after all, and its event row removed."""
    ids: dict[str, int] = {}
    # In external id order, so that two calls naming the same people lock them in one order.
    inline = sorted(
        (p for c in winners.values() for p in c.inline.values()), key=lambda p: p.external_id
    )
    refused: dict[str, list[FieldError]] = {}
    if inline:
        ids, refused = await merge_inline(session, org_id, inline, region)
    lost: list[str] = []
    for key, candidate in list(winners.items()):
        bad = [p for p in candidate.inline if p in refused]
        if bad:
            candidate.reason = "A recipient of the event is deactivated."
            candidate.problems = [e for p in bad for e in refused[p]]
            outcomes[candidate.index] = _refused(candidate)
            lost.append(key)
            del winners[key]
    if lost:
        await repository.forget_events(session, org_id, lost)
    return ids


async def _duplicates(
    session: AsyncSession,
    org_id: uuid.UUID,
    ids: list[str | None],
    stored: dict[str, tuple[str, list[str]]],
    chosen: dict[str, int],
    outcomes: list[Outcome | None],
) -> None:
    """Fill in the outcomes of duplicates: events with the id of an event stored before this
    call (``stored``: type and message ids by id), or of the event chosen earlier in the call
    (``chosen``: its index by id), whatever their own content."""

    def repeats(index: int, key: str) -> bool:
        return outcomes[index] is None or index > chosen.get(key, len(ids))

    for index, key in enumerate(ids):
        if key is None or key in stored or not index > chosen.get(key, len(ids)):
            continue
        decided = outcomes[chosen[key]]
        assert decided is not None
        if decided.status == "accepted":
            outcomes[index] = Outcome(
                index, key, "duplicate", decided.messages, event_type=decided.event_type
            )
        else:  # refused after all (see _merge_people): so is its repeat
            outcomes[index] = Outcome(index, key, "refused", [], decided.reason, decided.errors)
    wanted = {key for n, key in enumerate(ids) if key in stored and repeats(n, key)}
    message_ids = [uuid.UUID(m) for key in wanted for m in stored[key][1]]
    found = await repository.messages_by_id(session, org_id, message_ids) if message_ids else {}
    for index, key in enumerate(ids):
        if key in wanted and repeats(index, key):
            kind, listed = stored[key]
            originals = [found[m] for m in map(uuid.UUID, listed) if m in found]
            outcomes[index] = Outcome(index, key, "duplicate", originals, event_type=kind)


def _refused(candidate: Candidate) -> Outcome:
    return Outcome(
        candidate.index,
        candidate.event.id,
        "refused",
        [],
        candidate.reason,
        tuple(candidate.problems),
    )
