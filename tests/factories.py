"""Building test data through the real services, so tests exercise what users exercise."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import func, select

from bulletin.db import Database, utcnow
from bulletin.deliveries.models import Delivery
from bulletin.messages import schemas as message_schemas
from bulletin.messages import service as messages
from bulletin.messages.models import Message
from bulletin.orgs import service as orgs
from bulletin.recipients import repository as recipients


async def new_org(db: Database, name: str = "Acme") -> uuid.UUID:
    async with db.transaction() as session:
        org, _ = await orgs.create_organization(session, name)
    return org.id


def person(n: int, **fields: Any) -> dict[str, Any]:
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


async def add_people(db: Database, org_id: uuid.UUID, rows: list[dict[str, Any]]) -> dict[str, int]:
    async with db.transaction() as session:
        return await recipients.upsert(session, org_id, rows, utcnow())


async def announce(
    db: Database, org_id: uuid.UUID, audience: dict[str, Any] | None = None, **fields: Any
) -> Message:
    body = message_schemas.AnnouncementIn.model_validate(
        {"title": "Hello", "body": "Body", "audience": audience or {"all": True}, **fields}
    )
    async with db.transaction() as session:
        return await messages.create_announcement(session, org_id, body)


async def deliveries_of(db: Database, message_id: uuid.UUID) -> list[Delivery]:
    async with db.read() as session:
        rows = await session.execute(
            select(Delivery).where(Delivery.message_id == message_id).order_by(Delivery.id)
        )
        return list(rows.scalars())


async def count_states(db: Database, message_id: uuid.UUID) -> dict[str, int]:
    async with db.read() as session:
        rows = await session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.message_id == message_id)
            .group_by(Delivery.state)
        )
        return {state: n for state, n in rows}


def ago(seconds: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)
