"""Data at the database level: rows made through the real services and repositories, without
HTTP, so tests exercise what users exercise; and the delivery rows read back.

The HTTP-level counterparts, which go through the API, are in :mod:`support.http_factories`;
their names say which level they work at (``insert_...`` and ``person_row`` here,
``post_...`` and ``person_json`` there).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import func, select, update

from bulletin.channels.base import DEFAULT_ACCOUNT
from bulletin.db import Database, utcnow
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery
from bulletin.messages import schemas as message_schemas
from bulletin.messages import service as messages
from bulletin.messages.models import Message
from bulletin.orgs import service as orgs
from bulletin.recipients import repository as recipients


async def new_org(db: Database, name: str = "Acme") -> uuid.UUID:
    """A new organization; its id."""
    async with db.transaction() as session:
        org, _ = await orgs.create_organization(session, name)
    return org.id


def person_row(n: int, **fields: Any) -> dict[str, Any]:
    """A recipient row as the repository takes it; the email is unique per ``n``."""
    row: dict[str, Any] = {
        "external_id": f"p{n}",
        "name": f"Person {n}",
        "email": f"p{n}@example.com",
        "phone": None,
        "whatsapp": None,
        "timezone": None,
        "locale": None,
        "attributes": {},
        "groups": [],
    }
    row.update(fields)
    return row


async def insert_people(
    db: Database, org_id: uuid.UUID, rows: list[dict[str, Any]]
) -> dict[str, int]:
    """Upsert ``rows`` (see :func:`person_row`) as the recipients of ``org_id``."""
    async with db.transaction() as session:
        return await recipients.upsert(session, org_id, rows, utcnow())


async def insert_announcement(
    db: Database, org_id: uuid.UUID, audience: dict[str, Any] | None = None, **fields: Any
) -> Message:
    """An announcement (to everyone unless told) created by the messages service."""
    body = message_schemas.AnnouncementIn.model_validate(
        {"title": "Hello", "body": "Body", "audience": audience or {"all": True}, **fields}
    )
    async with db.transaction() as session:
        return await messages.create_announcement(session, org_id, body)


async def delivery_rows(db: Database, message_id: uuid.UUID) -> list[Delivery]:
    """The delivery rows of a message, in id order."""
    async with db.read() as session:
        rows = await session.execute(
            select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id)
        )
        return list(rows.scalars())


async def count_states(db: Database, message_id: uuid.UUID) -> dict[str, int]:
    """How many deliveries of a message are in each state."""
    async with db.read() as session:
        rows = await session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.message_id == message_id)
            .group_by(Delivery.state)
        )
        return {state: n for state, n in rows}


def ago(seconds: float) -> dt.datetime:
    """The time ``seconds`` ago, as the database stores times."""
    return utcnow() - dt.timedelta(seconds=seconds)


async def sent_on_whatsapp(
    db: Database, phone: str, wamid: str, *, message_state: str | None = None
) -> Delivery:
    """The one WhatsApp delivery of a new announcement to a person at ``phone``, as the worker
    leaves it once the Cloud API took it as ``wamid``: sent by the environment's account,
    awaiting its statuses.

    The delivery comes from the real resolution of the audience; only the send is skipped, so
    a test can post receipts for it without running the engine. ``message_state`` puts the
    announcement itself in that state (a completed or cancelled message).
    """
    org = await new_org(db)
    await insert_people(db, org, [person_row(1, whatsapp=phone)])
    message = await insert_announcement(db, org, channels=["whatsapp"])
    async with db.transaction() as session:
        loaded = await session.get(Message, message.id)
        assert loaded is not None
        await resolve_chunk(session, loaded, 100)
        await session.execute(
            update(Delivery)
            .where(Delivery.message_id == message.id)
            .values(
                state="sent",
                provider="whatsapp_cloud",
                provider_account=DEFAULT_ACCOUNT,
                provider_message_id=wamid,
                sent_at=utcnow(),
            )
        )
        if message_state is not None:
            await session.execute(
                update(Message).where(Message.id == message.id).values(state=message_state)
            )
    [delivery] = await delivery_rows(db, message.id)
    return delivery
