"""Every query about recipients and their groups."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    Uuid,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import UTCDateTime, chunked, dialect_name
from bulletin.recipients.addresses import address_column
from bulletin.recipients.models import Recipient, RecipientGroup

# Columns a PUT or an import replaces; preferences and history are the person's, and stay.
PROFILE_COLUMNS = (
    "name",
    "email",
    "phone",
    "whatsapp",
    "timezone",
    "locale",
    "attributes",
)
_ROWS_PER_STATEMENT = 1000
GROUPS: Table = RecipientGroup.__table__  # type: ignore[assignment]
_RECIPIENTS: Table = Recipient.__table__  # type: ignore[assignment]
# Every notification looks its recipient up: a plain statement, built once.
_IDS_BY_EXTERNAL_ID = select(_RECIPIENTS.c.external_id, _RECIPIENTS.c.id).where(
    _RECIPIENTS.c.org_id == bindparam("org_id"),
    _RECIPIENTS.c.external_id.in_(bindparam("external_ids", expanding=True)),
)

# Create or replace a chunk of recipients in one statement, rows read from a JSON parameter.
# The SET lists are PROFILE_COLUMNS.
_UPSERT_PG = text(
    """
    INSERT INTO recipients (org_id, external_id, name, email, phone, whatsapp, timezone, locale,
                            attributes, categories, active, created_at, updated_at)
    SELECT :org, v.external_id, v.name, v.email, v.phone, v.whatsapp, v.timezone, v.locale,
           COALESCE(v.attributes, '{}'::jsonb), '{}'::jsonb, true, :now, :now
    FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS v(
        external_id text, name text, email text, phone text, whatsapp text, timezone text,
        locale text, attributes jsonb)
    ON CONFLICT (org_id, external_id) DO UPDATE
    SET name = excluded.name, email = excluded.email, phone = excluded.phone,
        whatsapp = excluded.whatsapp, timezone = excluded.timezone, locale = excluded.locale,
        attributes = excluded.attributes,
        active = true, deactivated_at = NULL, updated_at = excluded.updated_at
    RETURNING id, external_id
    """
)
_UPSERT_SQLITE = text(
    """
    INSERT INTO recipients (org_id, external_id, name, email, phone, whatsapp, timezone, locale,
                            attributes, categories, active, created_at, updated_at)
    SELECT :org, json_extract(value, '$.external_id'), json_extract(value, '$.name'),
           json_extract(value, '$.email'), json_extract(value, '$.phone'),
           json_extract(value, '$.whatsapp'), json_extract(value, '$.timezone'),
           json_extract(value, '$.locale'), COALESCE(json_extract(value, '$.attributes'), '{}'),
           '{}', 1, :now, :now
    FROM json_each(:payload) WHERE true
    ON CONFLICT (org_id, external_id) DO UPDATE
    SET name = excluded.name, email = excluded.email, phone = excluded.phone,
        whatsapp = excluded.whatsapp, timezone = excluded.timezone, locale = excluded.locale,
        attributes = excluded.attributes,
        active = 1, deactivated_at = NULL, updated_at = excluded.updated_at
    RETURNING id, external_id
    """
)


async def get(session: AsyncSession, org_id: uuid.UUID, external_id: str) -> Recipient | None:
    return (
        await session.execute(
            select(Recipient)
            .where(Recipient.org_id == org_id, Recipient.external_id == external_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def existing_external_ids(
    session: AsyncSession, org_id: uuid.UUID, external_ids: list[str]
) -> dict[str, int]:
    """Which of ``external_ids`` exist in the organization, with their internal ids."""
    found: dict[str, int] = {}
    for part in chunked(external_ids, _ROWS_PER_STATEMENT):
        rows = await session.execute(_IDS_BY_EXTERNAL_ID, {"org_id": org_id, "external_ids": part})
        found.update({row.external_id: row.id for row in rows})
    return found


async def upsert(
    session: AsyncSession, org_id: uuid.UUID, rows: list[dict[str, Any]], now: dt.datetime
) -> dict[str, int]:
    """Create or replace recipients (profile fields and groups); reactivates deactivated ones.

    ``rows`` hold ``external_id``, the profile columns and ``groups``. Returns the internal id
    of every row by external id.
    """
    sqlite = dialect_name(session) == "sqlite"
    statement = _UPSERT_SQLITE if sqlite else _UPSERT_PG
    statement = statement.bindparams(
        bindparam("org", type_=Uuid()), bindparam("now", type_=UTCDateTime())
    )
    ids: dict[str, int] = {}
    for part in chunked(rows, _ROWS_PER_STATEMENT):
        fields = ("external_id", *PROFILE_COLUMNS)
        payload = json.dumps([{k: row[k] for k in fields} for row in part])
        result = await session.execute(statement, {"org": org_id, "now": now, "payload": payload})
        for row_id, external_id in result:
            ids[external_id] = row_id
    await replace_groups(session, org_id, {ids[r["external_id"]]: r["groups"] for r in rows})
    return ids


async def replace_groups(
    session: AsyncSession, org_id: uuid.UUID, groups_by_recipient: dict[int, list[str]]
) -> None:
    recipient_ids = list(groups_by_recipient)
    for part in chunked(recipient_ids, _ROWS_PER_STATEMENT):
        await session.execute(delete(RecipientGroup).where(RecipientGroup.recipient_id.in_(part)))
    memberships = [
        {"recipient_id": rid, "name": name, "org_id": org_id}
        for rid, names in groups_by_recipient.items()
        for name in dict.fromkeys(names)
    ]
    for part in chunked(memberships, _ROWS_PER_STATEMENT):
        # Core insert: many parameter sets become multi-row INSERTs, without ORM bookkeeping.
        await session.execute(insert(GROUPS), part)


async def groups_of(session: AsyncSession, recipient_ids: list[int]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = defaultdict(list)
    for part in chunked(recipient_ids, _ROWS_PER_STATEMENT):
        rows = await session.execute(
            select(RecipientGroup.recipient_id, RecipientGroup.name)
            .where(RecipientGroup.recipient_id.in_(part))
            .order_by(RecipientGroup.recipient_id, RecipientGroup.name)
        )
        for row in rows:
            groups[row.recipient_id].append(row.name)
    return groups


async def page(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    group: str | None,
    after_id: int | None,
    limit: int,
    include_inactive: bool,
) -> list[Recipient]:
    query = select(Recipient).where(Recipient.org_id == org_id)
    if not include_inactive:
        query = query.where(Recipient.active.is_(True))
    if group is not None:
        query = query.where(
            exists().where(
                RecipientGroup.recipient_id == Recipient.id,
                RecipientGroup.org_id == org_id,
                RecipientGroup.name == group,
            )
        )
    if after_id is not None:
        query = query.where(Recipient.id > after_id)
    return list((await session.execute(query.order_by(Recipient.id).limit(limit))).scalars())


def _like(term: str) -> str:
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    term: str | None,
    group: str | None,
    offset: int,
    limit: int,
) -> list[Recipient]:
    """Active recipients whose name, external id, email or phone contains ``term`` (any
    case), in ``group`` when given, by id."""
    query = select(Recipient).where(Recipient.org_id == org_id, Recipient.active.is_(True))
    if term:
        pattern = _like(term)
        query = query.where(
            func.lower(Recipient.name).like(pattern, escape="\\")
            | func.lower(Recipient.external_id).like(pattern, escape="\\")
            | func.lower(Recipient.email).like(pattern, escape="\\")
            | func.lower(Recipient.phone).like(pattern, escape="\\")
        )
    if group:
        query = query.where(
            exists().where(
                RecipientGroup.recipient_id == Recipient.id,
                RecipientGroup.org_id == org_id,
                RecipientGroup.name == group,
            )
        )
    query = query.order_by(Recipient.id).offset(offset).limit(limit)
    return list((await session.execute(query)).scalars())


async def group_names(session: AsyncSession, org_id: uuid.UUID) -> list[str]:
    rows = await session.execute(
        select(RecipientGroup.name)
        .where(RecipientGroup.org_id == org_id)
        .distinct()
        .order_by(RecipientGroup.name)
    )
    return list(rows.scalars())


async def deactivate(
    session: AsyncSession, org_id: uuid.UUID, external_id: str, now: dt.datetime
) -> bool:
    result = await session.execute(
        update(Recipient)
        .where(Recipient.org_id == org_id, Recipient.external_id == external_id)
        .values(
            active=False,
            deactivated_at=func.coalesce(Recipient.deactivated_at, now),
            updated_at=now,
        )
        .returning(Recipient.id)
    )
    return result.first() is not None


async def by_id(session: AsyncSession, recipient_id: int) -> Recipient | None:
    """The recipient with this internal id, whichever organization it belongs to."""
    return await session.get(Recipient, recipient_id)


async def by_ids(session: AsyncSession, ids: list[int]) -> list[Recipient]:
    if not ids:
        return []
    rows = await session.execute(select(Recipient).where(Recipient.id.in_(ids)))
    return list(rows.scalars())


async def with_number(
    session: AsyncSession, org_ids: list[uuid.UUID] | None, channel: str, address: str
) -> list[Recipient]:
    """Recipients reached at ``address`` on ``channel`` (whatsapp or sms), in these
    organizations (``None``: any). Replies are matched to people this way."""
    query = select(Recipient).where(address_column(channel) == address)
    if org_ids is not None:
        query = query.where(Recipient.org_id.in_(org_ids))
    return list((await session.execute(query)).scalars())


#: The time of each (recipient id, time) pair given to :func:`_forget_inbound`.
_AT = bindparam("b_at", type_=UTCDateTime())


async def close_windows(session: AsyncSession, seen: Sequence[tuple[int, dt.datetime]]) -> None:
    """Record these people's WhatsApp windows as closed, in one statement.

    ``seen`` are (recipient id, their last inbound message as the dispatcher read it before the
    send) pairs. Only where that message is still their last: one that came in while the send
    was under way opened the window again. Forgetting the time (rather than moving it back)
    leaves any later inbound message free to open the window.
    """
    await _forget_inbound(session, _RECIPIENTS.c.whatsapp_inbound_at == _AT, seen)


async def close_windows_sent_before(
    session: AsyncSession, sends: Sequence[tuple[int, dt.datetime]]
) -> None:
    """Record WhatsApp windows as closed after failed receipts saying so, in one statement.

    ``sends`` are (recipient id, time of the failed send) pairs. A person's window is forgotten
    only if their last message is not newer than the send: one they wrote after it opened the
    window again, whatever the receipt says about the send.
    """
    await _forget_inbound(session, _RECIPIENTS.c.whatsapp_inbound_at <= _AT, sends)


async def _forget_inbound(
    session: AsyncSession, condition: ColumnElement[bool], pairs: Sequence[tuple[int, dt.datetime]]
) -> None:
    """Forget the last inbound WhatsApp message of each pair's recipient where ``condition``
    holds of the pair's time, in one statement."""
    if not pairs:
        return
    statement = (
        update(_RECIPIENTS)
        .where(_RECIPIENTS.c.id == bindparam("b_id"), condition)
        .values(whatsapp_inbound_at=None)
    )
    await session.execute(statement, [{"b_id": rid, "b_at": at} for rid, at in pairs])
