"""What makes one event acceptable, and the rows it becomes.

Pure checks, given what :func:`bulletin.events.service.accept` has looked up for a whole call:
each records its problems on the event's :class:`Candidate`, placed in the event
(``("recipients", 2, "phone")``), so that a bad event is refused alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Row

from bulletin.channels.addressing import normalize_phone
from bulletin.errors import FieldError, InvalidRequest
from bulletin.events import schemas
from bulletin.events.models import EventType
from bulletin.messages import templates
from bulletin.messages.service import NOTIFICATION
from bulletin.messages.states import MessageState
from bulletin.recipients.schemas import InlineRecipient

#: Most field errors listed for one invalid event.
MAX_LISTED = 20


@dataclass(slots=True)
class Candidate:
    """An event that passed validation, on its way to being accepted."""

    index: int
    event: schemas.EventIn
    type: EventType
    #: External ids in order, each once; and the inline descriptions given for them.
    people: list[str]
    inline: dict[str, InlineRecipient] = field(default_factory=dict)
    problems: list[FieldError] = field(default_factory=list)
    reason: str = ""


def read_id(raw: object) -> str | None:
    """The event's id, if ``raw`` carries a valid one."""
    if not isinstance(raw, dict):
        return None
    value = raw.get("id")
    if (
        isinstance(value, str)
        and 0 < len(value) <= 255
        and not any(c < "\x20" or "\ud800" <= c <= "\udfff" for c in value)
    ):
        return value
    return None


def validation_errors(exc: ValidationError) -> list[FieldError]:
    listed = []
    for error in exc.errors(include_url=False)[:MAX_LISTED]:
        loc = tuple(p for p in error["loc"] if p not in (schemas.BY_ID, schemas.INLINE))
        listed.append(FieldError(loc, error["msg"], error["type"]))
    return listed


def _place(event: schemas.EventIn, position: int) -> tuple[str | int, ...]:
    return ("recipient",) if event.recipient is not None else ("recipients", position)


def people_of(event: schemas.EventIn) -> tuple[list[str], dict[str, InlineRecipient]]:
    order: dict[str, None] = {}
    inline: dict[str, InlineRecipient] = {}
    for person in event.people():
        if isinstance(person, str):
            order.setdefault(person)
        else:
            order.setdefault(person.external_id)
            inline[person.external_id] = person
    return list(order), inline


def phone_errors(event: schemas.EventIn, region: str | None) -> list[FieldError]:
    errors = []
    for position, person in enumerate(event.people()):
        if isinstance(person, str):
            continue
        for name in ("phone", "whatsapp"):
            value = getattr(person, name)
            if name in person.model_fields_set and value:
                try:
                    normalize_phone(value, region)
                except ValueError as exc:
                    errors.append(
                        FieldError((*_place(event, position), name), str(exc), "phone_invalid")
                    )
    return errors


def _view(
    person: str, stored: Row[Any] | None, given: InlineRecipient | None, region: str | None
) -> templates.RecipientView:
    """What templates will see of a person once their inline description is merged: the
    fields given replace the stored ones (see :func:`bulletin.recipients.service.merge_inline`)."""
    if stored is None:
        view = templates.RecipientView(external_id=person)
    else:
        view = templates.RecipientView(
            external_id=person,
            name=stored.name,
            email=stored.email,
            phone=stored.phone,
            whatsapp=stored.whatsapp,
            locale=stored.locale,
            timezone=stored.timezone,
            attributes=stored.attributes or {},
        )
    if given is None:
        return view
    changes: dict[str, Any] = {}
    for name in given.model_fields_set - {"external_id"}:
        value = getattr(given, name)
        if name in ("phone", "whatsapp") and value:
            value = normalize_phone(value, region)
        changes[name] = value
    if stored is None and "whatsapp" not in changes:
        changes["whatsapp"] = changes.get("phone")
    return dataclasses.replace(view, **changes)


def check_templates(candidate: Candidate, stored: dict[str, Row[Any]], region: str | None) -> None:
    kind = candidate.type
    views = [_view(p, stored.get(p), candidate.inline.get(p), region) for p in candidate.people]
    try:
        templates.check(
            kind.title,
            kind.body,
            kind.overrides or {},
            views,
            (),
            candidate.event.data,
            probe=False,
        )
    except InvalidRequest as exc:
        candidate.reason = f"The event type {kind.key!r} cannot be rendered with this event."
        candidate.problems.extend(
            FieldError(
                ("data",),
                f"{'.'.join(str(p) for p in e.loc) or 'data'} of the event type: {e.message}",
                e.type,
            )
            for e in exc.errors
        )


def check_people(candidate: Candidate, stored: dict[str, Row[Any]]) -> None:
    event = candidate.event
    for position, person in enumerate(event.people()):
        if isinstance(person, str):
            if person not in stored:
                candidate.problems.append(
                    FieldError(_place(event, position), f"no recipient {person!r}", "unknown")
                )
        elif person.external_id in stored and not stored[person.external_id].active:
            candidate.problems.append(
                FieldError(
                    (*_place(event, position), "external_id"),
                    "the recipient is deactivated",
                    "deactivated",
                )
            )
    if candidate.problems:
        candidate.reason = (
            "A recipient the event names does not exist (add them first, or describe them "
            "inline) or is deactivated."
        )


def message_rows(
    org_id: uuid.UUID,
    candidate: Candidate,
    message_ids: list[uuid.UUID],
    recipient_ids: dict[str, int],
    now: dt.datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every column of the event's messages, one per recipient, and their recipient rows."""
    kind, event = candidate.type, candidate.event
    if event.send_at is not None:
        send_at = event.send_at.astimezone(dt.UTC)
    else:
        send_at = now + dt.timedelta(seconds=kind.delay_seconds or 0)
    messages, links = [], []
    for message_id, person in zip(message_ids, candidate.people, strict=True):
        messages.append(
            {
                "id": message_id,
                "org_id": org_id,
                "kind": NOTIFICATION,
                "title": kind.title,
                "body": kind.body,
                "audience": {"recipients": [person]},
                "channels": list(kind.channels),
                "routing": kind.routing,
                "category": kind.category,
                "urgent": kind.urgent,
                "overrides": kind.overrides or {},
                "fallback_after_seconds": kind.fallback_after_seconds,
                "data": event.data,
                "send_at": send_at,
                "state": MessageState.SCHEDULED.value,
                "resolve_cursor": 0,
                "audience_size": None,
                "created_at": now,
                "resolved_at": None,
                "completed_at": None,
                "cancelled_at": None,
            }
        )
        links.append({"message_id": message_id, "recipient_id": recipient_ids[person]})
    return messages, links
