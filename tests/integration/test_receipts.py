"""Receipts on the real database: forward only, scoped to the account's organizations."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select, update

from bulletin.channels.base import DEFAULT_ACCOUNT, Inbound, Receipt, ReportedState
from bulletin.db import Database, utcnow
from bulletin.deliveries import receipts
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery, DeliveryEvent, Suppression
from bulletin.messages.content import window_open
from bulletin.messages.models import Message
from bulletin.recipients.models import Recipient
from support.db_factories import insert_announcement, insert_people, new_org, person_row


async def _sent_delivery(db: Database, channels: list[str] | None = None) -> Delivery:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1, phone="+27821234567")])
    message = await insert_announcement(db, org, channels=channels or ["sms"])
    async with db.transaction() as session:
        loaded = await session.get(Message, message.id)
        assert loaded is not None
        await resolve_chunk(session, loaded, 100)
        await session.execute(
            update(Delivery).values(state="sent", provider="twilio", provider_message_id="SM1")
        )
    async with db.read() as session:
        return (await session.execute(select(Delivery))).scalar_one()


def twilio_account(*orgs: uuid.UUID) -> receipts.Source:
    """The environment's Twilio account, serving ``orgs``."""
    return receipts.Source("twilio", "sms", DEFAULT_ACCOUNT, orgs)


def receipt(delivery: Delivery, state: ReportedState, **kw: object) -> Receipt:
    values: dict[str, object] = {
        "provider_message_id": "SM1",
        "delivery_id": delivery.id,
        "state": state,
        "at": utcnow(),
    }
    values.update(kw)
    return Receipt(**values)  # type: ignore[arg-type]


async def _state(db: Database, delivery_id: int) -> tuple[str, int]:
    async with db.read() as session:
        found = await session.get(Delivery, delivery_id)
        assert found is not None
        events = await session.execute(
            select(DeliveryEvent).where(DeliveryEvent.delivery_id == delivery_id)
        )
        return found.state, len(events.all())


async def test_receipts_only_move_forward_and_repeats_change_nothing(db: Database) -> None:
    delivery = await _sent_delivery(db)
    orgs = [delivery.org_id]
    async with db.transaction() as session:
        first = await receipts.apply_receipts(
            session, twilio_account(*orgs), [receipt(delivery, ReportedState.DELIVERED)]
        )
    assert (first.moved, first.unchanged) == (1, 0)
    before = await _state(db, delivery.id)
    async with db.transaction() as session:
        again = await receipts.apply_receipts(
            session,
            twilio_account(*orgs),
            [
                receipt(delivery, ReportedState.DELIVERED),
                receipt(delivery, ReportedState.SENT),
                receipt(delivery, ReportedState.FAILED),
            ],
        )
    assert (again.moved, again.unchanged) == (0, 3)
    assert await _state(db, delivery.id) == before == ("delivered", 1)


async def test_a_receipt_from_another_organizations_account_matches_nothing(
    db: Database,
) -> None:
    delivery = await _sent_delivery(db)
    stranger = await new_org(db, "Stranger")
    async with db.transaction() as session:
        result = await receipts.apply_receipts(
            session, twilio_account(stranger), [receipt(delivery, ReportedState.DELIVERED)]
        )
    assert result.unmatched == 1
    assert (await _state(db, delivery.id))[0] == "sent"


async def test_a_receipt_whose_provider_id_disagrees_or_lacks_a_delivery_id_is_ignored(
    db: Database,
) -> None:
    delivery = await _sent_delivery(db)
    wrong = receipt(delivery, ReportedState.DELIVERED, provider_message_id="SM-other")
    anonymous = receipt(delivery, ReportedState.DELIVERED, delivery_id=None)
    async with db.transaction() as session:
        result = await receipts.apply_receipts(
            session, twilio_account(delivery.org_id), [wrong, anonymous]
        )
    assert result.unmatched == 2
    assert (await _state(db, delivery.id))[0] == "sent"


async def test_a_stop_failure_suppresses_the_number(db: Database) -> None:
    delivery = await _sent_delivery(db)
    failed = receipt(
        delivery, ReportedState.FAILED, detail="21610: unsubscribed", suppress_address=True
    )
    async with db.transaction() as session:
        await receipts.apply_receipts(session, twilio_account(delivery.org_id), [failed])
    async with db.read() as session:
        blocked = (await session.execute(select(Suppression))).scalars().all()
    assert [(s.channel, s.address) for s in blocked] == [("sms", "+27821234567")]
    assert (await _state(db, delivery.id))[0] == "failed"


async def test_inbound_whatsapp_opens_the_window_and_keeps_the_latest(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1, whatsapp="+27821234567")])
    later = utcnow()
    earlier = later - dt.timedelta(hours=2)
    async with db.transaction() as session:
        for at in (later, earlier):
            await receipts.apply_inbound(
                session,
                receipts.Source("whatsapp_cloud", "whatsapp", DEFAULT_ACCOUNT, [org]),
                [Inbound("whatsapp", "+27821234567", "hi", at)],
            )
    async with db.read() as session:
        found = (await session.execute(select(Recipient))).scalar_one()
    assert found.whatsapp_inbound_at == later
    assert window_open(found.whatsapp_inbound_at, later + dt.timedelta(hours=23))
    assert not window_open(found.whatsapp_inbound_at, later + dt.timedelta(hours=24))
