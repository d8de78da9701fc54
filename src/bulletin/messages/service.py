"""Message use cases: create an announcement or a notification, and show them.

Reading a message with its deliveries and cancelling it are in
:mod:`bulletin.deliveries.progress`, which sees the deliveries.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import utcnow
from bulletin.errors import FieldError, InvalidRequest, NotFound
from bulletin.ids import decode_uuid_cursor, encode_cursor, uuid7
from bulletin.messages import repository, schemas, templates
from bulletin.messages.models import Message
from bulletin.messages.states import MessageState
from bulletin.recipients import repository as recipients
from bulletin.recipients.models import Recipient

ANNOUNCEMENT = "announcement"
NOTIFICATION = "notification"
_MAX_LISTED_UNKNOWN = 100
_TEMPLATE_SAMPLE = 1000


async def _known_recipients(
    session: AsyncSession, org_id: uuid.UUID, external_ids: list[str], loc: tuple[str, ...]
) -> list[int]:
    wanted = list(dict.fromkeys(external_ids))
    found = await recipients.existing_external_ids(session, org_id, wanted)
    missing = [(i, e) for i, e in enumerate(external_ids) if e not in found]
    if missing:
        listed = [
            FieldError(
                (*loc, i) if len(external_ids) > 1 else loc, f"no recipient {e!r}", "unknown"
            )
            for i, e in missing[:_MAX_LISTED_UNKNOWN]
        ]
        raise InvalidRequest(
            f"{len(missing)} recipient(s) named in the request do not exist; add them first.",
            listed,
        )
    return list(found.values())


async def _check_templates(
    session: AsyncSession,
    body: schemas.AnnouncementIn | schemas.NotificationIn,
    named: list[int],
) -> dict[str, Any]:
    """Validate every template of the message now, so that none fails at send time (422).

    Each is rendered for a probe recipient and for the first recipients named explicitly
    (who are not looked up when the message has no template at all).
    """
    overrides = body.overrides.model_dump(exclude_none=True) if body.overrides else {}
    people = []
    if named and templates.uses_templates(body.title, body.body, overrides):
        people = await recipients.by_ids(session, named[:_TEMPLATE_SAMPLE])
    templates.check(body.title, body.body, overrides, [view_of(r) for r in people])
    return overrides


def view_of(recipient: Recipient) -> templates.RecipientView:
    return templates.RecipientView(
        external_id=recipient.external_id,
        name=recipient.name,
        email=recipient.email,
        phone=recipient.phone,
        whatsapp=recipient.whatsapp,
        locale=recipient.locale,
        timezone=recipient.timezone,
        attributes=recipient.attributes or {},
    )


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _new_message(
    org_id: uuid.UUID,
    kind: str,
    body: schemas.AnnouncementIn | schemas.NotificationIn,
    audience: dict[str, object],
    now: dt.datetime,
    overrides: dict[str, Any],
) -> Message:
    return Message(
        id=uuid7(),
        org_id=org_id,
        kind=kind,
        title=body.title,
        body=body.body,
        audience=audience,
        channels=list(body.channels),
        routing=body.routing,
        category=body.category,
        urgent=body.urgent,
        overrides=overrides,
        fallback_after_seconds=(
            schemas.duration_seconds(body.fallback_after) if body.fallback_after else None
        ),
        send_at=body.send_at.astimezone(dt.UTC) if body.send_at else now,
        state=MessageState.SCHEDULED.value,
        resolve_cursor=0,
        created_at=now,
    )


async def create_announcement(
    session: AsyncSession, org_id: uuid.UUID, body: schemas.AnnouncementIn
) -> Message:
    """Accept an announcement; its audience is resolved when it falls due."""
    named: list[int] = []
    if body.audience.recipients:
        named = await _known_recipients(
            session, org_id, body.audience.recipients, ("body", "audience", "recipients")
        )
    overrides = await _check_templates(session, body, named)
    audience = body.audience.model_dump(exclude_none=True)
    message = _new_message(org_id, ANNOUNCEMENT, body, audience, utcnow(), overrides)
    await repository.add(session, message)
    if named:
        await repository.add_recipients(session, message.id, named)
    return message


async def create_notification(
    session: AsyncSession, org_id: uuid.UUID, body: schemas.NotificationIn
) -> Message:
    named = await _known_recipients(session, org_id, [body.recipient], ("body", "recipient"))
    overrides = await _check_templates(session, body, named)
    audience: dict[str, object] = {"recipients": [body.recipient]}
    message = _new_message(org_id, NOTIFICATION, body, audience, utcnow(), overrides)
    await repository.add(session, message)
    await repository.add_recipients(session, message.id, named)
    return message


def _common(message: Message) -> dict[str, object]:
    return {
        "id": message.id,
        "kind": message.kind,
        "state": message.state,
        "title": message.title,
        "body": message.body,
        "channels": message.channels,
        "routing": message.routing,
        "category": message.category,
        "urgent": message.urgent,
        "send_at": message.send_at,
        "created_at": message.created_at,
        "resolved_at": message.resolved_at,
        "completed_at": message.completed_at,
        "cancelled_at": message.cancelled_at,
        "audience_size": message.audience_size,
        "overrides": message.overrides or {},
        "fallback_after": (
            format_duration(message.fallback_after_seconds)
            if message.fallback_after_seconds
            else None
        ),
    }


def as_announcement(message: Message, counts: dict[str, int] | None = None) -> schemas.Announcement:
    return schemas.Announcement.model_validate(
        {**_common(message), "audience": message.audience, "deliveries": counts}
    )


def as_notification(
    message: Message, briefs: list[schemas.DeliveryBrief] | None = None
) -> schemas.Notification:
    return schemas.Notification.model_validate(
        {**_common(message), "recipient": message.audience["recipients"][0], "deliveries": briefs}
    )


async def require(
    session: AsyncSession, org_id: uuid.UUID, message_id: uuid.UUID, kind: str
) -> Message:
    message = await repository.get(session, org_id, message_id, kind)
    if message is None:
        raise NotFound(f"There is no {kind} {message_id}.")
    return message


async def page_announcements(
    session: AsyncSession, org_id: uuid.UUID, cursor: str | None, limit: int
) -> schemas.AnnouncementPage:
    before = decode_uuid_cursor(cursor)
    found = await repository.page(session, org_id, ANNOUNCEMENT, before, limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return schemas.AnnouncementPage(
        items=[as_announcement(m) for m in found],
        next_cursor=encode_cursor(str(found[-1].id)) if more else None,
    )
