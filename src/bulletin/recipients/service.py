"""Recipient use cases: create or replace, import in bulk, deactivate, preferences."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels.addressing import normalize_phone
from bulletin.db import utcnow
from bulletin.errors import FieldError, InvalidRequest, NotFound
from bulletin.ids import decode_cursor, encode_cursor
from bulletin.recipients import merge_repository, repository, schemas
from bulletin.recipients.addresses import CHANNELS, enabled, set_choice
from bulletin.recipients.models import Recipient


def _profile(fields: schemas.RecipientFields, region: str | None) -> dict[str, Any]:
    """Database values for a validated recipient; raises ``ValueError`` naming a bad number."""
    phone = normalize_phone(fields.phone, region) if fields.phone else None
    whatsapp = normalize_phone(fields.whatsapp, region) if fields.whatsapp else phone
    return {
        "name": fields.name,
        "email": fields.email,
        "phone": phone,
        "whatsapp": whatsapp,
        "timezone": fields.timezone,
        "locale": fields.locale,
        "attributes": fields.attributes,
        "groups": fields.groups,
    }


def _phone_errors(fields: schemas.RecipientFields, region: str | None) -> list[FieldError]:
    errors = []
    for name in ("phone", "whatsapp"):
        value = getattr(fields, name)
        if value:
            try:
                normalize_phone(value, region)
            except ValueError as exc:
                errors.append(FieldError(("body", name), str(exc), "phone_invalid"))
    return errors


async def put(
    session: AsyncSession,
    org_id: uuid.UUID,
    external_id: str,
    body: schemas.RecipientPut,
    region: str | None,
) -> tuple[schemas.Recipient, bool]:
    """Create or replace one recipient. Returns it and whether it was created."""
    if body.external_id is not None and body.external_id != external_id:
        raise InvalidRequest(
            "The external_id in the body differs from the one in the path.",
            [FieldError(("body", "external_id"), "must equal the path's external_id")],
        )
    errors = _phone_errors(body, region)
    if errors:
        raise InvalidRequest("The recipient has an invalid phone number.", errors)
    existed = await repository.get(session, org_id, external_id) is not None
    row = {"external_id": external_id, **_profile(body, region)}
    await repository.upsert(session, org_id, [row], utcnow())
    return await get(session, org_id, external_id), not existed


async def import_batch(
    session: AsyncSession, org_id: uuid.UUID, raw_rows: list[dict[str, Any]], region: str | None
) -> schemas.BatchResult:
    """Create or replace many recipients at once: all of them, or, if any row is bad, none.

    Every bad row is reported with all its reasons, so a file can be fixed in one pass.
    """
    rows: list[dict[str, Any]] = []
    errors: list[FieldError] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rows):
        try:
            fields = schemas.RecipientRow.model_validate(raw)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = ("body", "recipients", index, *error["loc"])
                errors.append(FieldError(loc, error["msg"], error["type"]))
            continue
        row_errors = [
            FieldError(("body", "recipients", index, e.loc[-1]), e.message, e.type)
            for e in _phone_errors(fields, region)
        ]
        if fields.external_id in seen:
            row_errors.append(
                FieldError(
                    ("body", "recipients", index, "external_id"),
                    f"repeats row {seen[fields.external_id]}",
                    "duplicate",
                )
            )
        seen.setdefault(fields.external_id, index)
        errors.extend(row_errors)
        if not row_errors:
            rows.append({"external_id": fields.external_id, **_profile(fields, region)})
    if errors:
        bad_rows = len({e.loc[2] for e in errors})
        raise InvalidRequest(
            f"{bad_rows} of {len(raw_rows)} rows are invalid; none was saved.", errors
        )
    existing = await repository.existing_external_ids(
        session, org_id, [r["external_id"] for r in rows]
    )
    await repository.upsert(session, org_id, rows, utcnow())
    return schemas.BatchResult(created=len(rows) - len(existing), updated=len(existing))


async def merge_inline(
    session: AsyncSession,
    org_id: uuid.UUID,
    people: list[schemas.InlineRecipient],
    region: str | None,
) -> tuple[dict[str, int], dict[str, list[FieldError]]]:
    """Create or update people described inline (by an event), in a few statements.

    The fields each person gives replace the stored ones and the others are kept (see
    :class:`~bulletin.recipients.schemas.InlineRecipient`); a person named more than once gets
    every field given, the last value of each winning. Phones are normalized as in :func:`put`
    (``region`` the default country). Returns the internal ids of the people who can be sent
    to, and, by external id, why each of the others cannot: an invalid number (nothing of
    theirs is saved) or a deactivated recipient (left unchanged). Flushes, never commits.
    """
    given: dict[str, dict[str, Any]] = {}
    for person in people:
        fields = person.model_dump(include=person.model_fields_set - {"external_id"})
        given.setdefault(person.external_id, {}).update(fields)
    rows: list[dict[str, Any]] = []
    refused: dict[str, list[FieldError]] = {}
    for external_id, fields in given.items():
        errors = []
        for name in ("phone", "whatsapp"):
            if name in fields:
                try:
                    fields[name] = normalize_phone(fields[name], region) if fields[name] else None
                except ValueError as exc:
                    errors.append(FieldError((name,), str(exc), "phone_invalid"))
        if errors:
            refused[external_id] = errors
        else:
            rows.append({"external_id": external_id, **fields})
    usable: dict[str, int] = {}
    for external_id, (recipient_id, active) in (
        await merge_repository.merge(session, org_id, rows, utcnow())
    ).items():
        if active:
            usable[external_id] = recipient_id
        else:
            refused[external_id] = [
                FieldError(("external_id",), "the recipient is deactivated", "deactivated")
            ]
    return usable, refused


async def _require(session: AsyncSession, org_id: uuid.UUID, external_id: str) -> Recipient:
    recipient = await repository.get(session, org_id, external_id)
    if recipient is None:
        raise NotFound(f"There is no recipient {external_id!r}.")
    return recipient


def _out(recipient: Recipient, groups: list[str]) -> schemas.Recipient:
    return schemas.Recipient(
        external_id=recipient.external_id,
        name=recipient.name,
        email=recipient.email,
        phone=recipient.phone,
        whatsapp=recipient.whatsapp,
        timezone=recipient.timezone,
        locale=recipient.locale,
        groups=groups,
        attributes=recipient.attributes,
        active=recipient.active,
        created_at=recipient.created_at,
        updated_at=recipient.updated_at,
    )


async def get(session: AsyncSession, org_id: uuid.UUID, external_id: str) -> schemas.Recipient:
    recipient = await _require(session, org_id, external_id)
    groups = await repository.groups_of(session, [recipient.id])
    return _out(recipient, groups.get(recipient.id, []))


async def page(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    group: str | None,
    cursor: str | None,
    limit: int,
    include_inactive: bool,
) -> schemas.RecipientPage:
    after = int(decode_cursor(cursor, int)) if cursor else None
    found = await repository.page(
        session,
        org_id,
        group=group,
        after_id=after,
        limit=limit + 1,
        include_inactive=include_inactive,
    )
    more = len(found) > limit
    found = found[:limit]
    groups = await repository.groups_of(session, [r.id for r in found])
    return schemas.RecipientPage(
        items=[_out(r, groups.get(r.id, [])) for r in found],
        next_cursor=encode_cursor(found[-1].id) if more else None,
    )


async def deactivate(session: AsyncSession, org_id: uuid.UUID, external_id: str) -> None:
    if not await repository.deactivate(session, org_id, external_id, utcnow()):
        raise NotFound(f"There is no recipient {external_id!r}.")


def effective_preferences(recipient: Recipient) -> schemas.Preferences:
    quiet = (
        schemas.QuietHours(start=recipient.quiet_start, end=recipient.quiet_end)
        if recipient.quiet_start and recipient.quiet_end
        else None
    )
    return schemas.Preferences(
        channels={name: enabled(recipient, name) for name in CHANNELS},
        categories=dict(recipient.categories),
        quiet_hours=quiet,
    )


async def get_preferences(
    session: AsyncSession, org_id: uuid.UUID, external_id: str
) -> schemas.Preferences:
    return effective_preferences(await _require(session, org_id, external_id))


def _apply(recipient: Recipient, body: schemas.PreferencesIn) -> None:
    for channel in CHANNELS:
        set_choice(recipient, channel, getattr(body.channels, channel))
    recipient.categories = dict(body.categories)
    recipient.quiet_start = body.quiet_hours.start if body.quiet_hours else None
    recipient.quiet_end = body.quiet_hours.end if body.quiet_hours else None
    recipient.updated_at = utcnow()


async def put_preferences(
    session: AsyncSession, org_id: uuid.UUID, external_id: str, body: schemas.PreferencesIn
) -> schemas.Preferences:
    recipient = await _require(session, org_id, external_id)
    _apply(recipient, body)
    await session.flush()
    return effective_preferences(recipient)


async def reachable_by_id(session: AsyncSession, recipient_id: int) -> Recipient | None:
    """The active recipient with this id, whichever organization it belongs to, or ``None``.

    For links that name a person (the preference centre); the caller verifies the link.
    """
    recipient = await repository.by_id(session, recipient_id)
    return recipient if recipient is not None and recipient.active else None


async def set_own_preferences(
    session: AsyncSession, recipient: Recipient, body: schemas.OwnPreferencesIn
) -> schemas.Preferences:
    """Replace the preferences of a person who set them themselves (the preference centre)."""
    _apply(recipient, body)
    if body.timezone is not None:
        recipient.timezone = body.timezone
    await session.flush()
    return effective_preferences(recipient)


async def unsubscribe(session: AsyncSession, recipient: Recipient, category: str | None) -> None:
    """One-click unsubscribe: out of ``category`` when there is one, out of email otherwise."""
    if category:
        recipient.categories = {**(recipient.categories or {}), category: False}
    else:
        set_choice(recipient, "email", False)
    recipient.updated_at = utcnow()
    await session.flush()
