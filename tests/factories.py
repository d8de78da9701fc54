"""Building test data through the real services, so tests exercise what users exercise."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import func, select, update

from bulletin.channels.base import DEFAULT_ACCOUNT, OutboundMessage
from bulletin.db import Database, utcnow
from bulletin.deliveries.audience import resolve_chunk
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
    await add_people(db, org, [person(1, whatsapp=phone)])
    message = await announce(db, org, channels=["whatsapp"])
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
    [delivery] = await deliveries_of(db, message.id)
    return delivery


#: Whom each channel's test message is for and what it says, unless a test says otherwise.
USUAL_MESSAGE: dict[str, dict[str, Any]] = {
    "email": {
        "address": "zoe@example.net",
        "recipient_name": "Zoë Ångström",
        "locale": "de",
        "title": "Wasser: Störung in Köln ☔",
        "body": "Kein Wasser bis 14:00.\nBitte Vorrat anlegen.",
        "category": "outage",
    },
    "sms": {
        "address": "+27821234567",
        "recipient_name": "Thandi",
        "locale": "en",
        "title": "Water outage",
        "body": "No water until 14:00.",
        "category": None,
    },
    "whatsapp": {
        "address": "+31612345678",
        "recipient_name": "Ada",
        "locale": "en",
        "title": "Water outage",
        "body": "No water on Elm Street until 15:00.",
        "category": None,
    },
}


def outbound_message(channel: str, *, delivery_id: int = 42, **fields: Any) -> OutboundMessage:
    """What the worker hands a provider to send one delivery on ``channel`` (``email``,
    ``sms`` or ``whatsapp``), for tests of the adapters that need no database.

    It is the channel's usual message (:data:`USUAL_MESSAGE`), on its first attempt, with
    ``fields`` (any of :class:`OutboundMessage`'s: ``address``, ``title``, ``body``,
    ``whatsapp_template``, ``attempt`` ...) in place of what they name. Each call is another
    message of another organization, unless ``message_id`` or ``org_id`` is given.
    """
    usual: dict[str, Any] = {
        "delivery_id": delivery_id,
        "attempt": 1,
        "org_id": uuid.uuid4(),
        "message_id": uuid.uuid4(),
        "channel": channel,
        "recipient_external_id": "p-1",
        **USUAL_MESSAGE[channel],
    }
    return OutboundMessage(**(usual | fields))
