"""WhatsApp's 24-hour window and pair spacing as the engine meets them at the Cloud API.

The engine sends through the real WhatsApp adapter to the local Cloud API stand-in, whose
ledger shows what reached "Meta": a refusal for a closed window (131047) turns into the approved
template, once, and closes the person's window for later messages; a throughput refusal
(130429) gives back the pair slot the send took, so its retry is not held for the pair interval.
Everything is asserted on the database and the ledger, never on how long anything took.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from bulletin.bootstrap import running
from bulletin.channels.configs import WhatsAppCloudConfig
from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.channels.whatsapp import WhatsAppCloudProvider
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.deliveries import repository
from bulletin.deliveries.models import Delivery, DeliveryEvent
from bulletin.deliveries.outcomes import SENDING_TEMPLATE
from bulletin.devservers.whatsapp import WhatsAppCloudServer
from bulletin.messages import schemas as message_schemas
from bulletin.messages import service as messages
from bulletin.messages.models import Message
from bulletin.recipients import repository as recipients
from bulletin.recipients.models import Recipient
from bulletin.services import Services
from bulletin.worker import repository as pacing
from bulletin.worker.models import PairSlot
from conftest import make_settings
from support.db_factories import (
    delivery_rows,
    insert_announcement,
    insert_people,
    new_org,
    person_row,
)
from support.waiting import eventually

TOKEN = "EAAG-window-test-token"
PHONE_ID = "106540352242922"
TO = "+31612345678"
TEMPLATE = {
    "name": "bulletin_notice",
    "language": "en",
    "parameters": ["{{ title }}", "{{ body }}"],
}
PAIRED = "paced: too soon after the last message to this number"


@pytest.fixture
async def stand_in() -> AsyncIterator[WhatsAppCloudServer]:
    async with WhatsAppCloudServer(
        access_token=TOKEN, phone_number_id=PHONE_ID, templates={"bulletin_notice"}
    ) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Channels:
    """What the engine sends through in these tests: WhatsApp through the real adapter to the
    stand-in, email to a recorder (the fallback)."""

    settings: Settings
    db: Database
    stand_in: WhatsAppCloudServer
    http: aiohttp.ClientSession
    email: RecordingProvider = field(default_factory=lambda: RecordingProvider(name="email"))

    def running(
        self, settings: Settings | None = None, **wa: Any
    ) -> AbstractAsyncContextManager[Services]:
        """The engine dispatching and scheduling, with ``wa`` in the WhatsApp configuration."""
        config = WhatsAppCloudConfig.model_validate(
            {
                "phone_number_id": PHONE_ID,
                "access_token": TOKEN,
                "base_url": self.stand_in.base_url,
                **wa,
            }
        )
        whatsapp = WhatsAppCloudProvider(config, self.http)
        registry = ChannelRegistry(
            self.email, {"whatsapp": whatsapp, "email": self.email}, configs={"whatsapp": config}
        )
        return running(
            settings or self.settings, dispatch=True, schedule=True, db=self.db, registry=registry
        )

    async def whatsapp_then_email(self, org: uuid.UUID, **wa: Any) -> dict[str, Delivery]:
        """Run an announcement to WhatsApp, and to email should WhatsApp fail, until both
        deliveries have settled; the two deliveries by channel."""
        message = await insert_announcement(
            self.db, org, channels=["whatsapp", "email"], routing="first"
        )
        async with self.running(**wa):
            await eventually(settled(self.db, message.id, {"failed", "sent"}, count=2))
        return {d.channel: d for d in await delivery_rows(self.db, message.id)}


@pytest.fixture
def channels(
    settings: Settings, db: Database, stand_in: WhatsAppCloudServer, http: aiohttp.ClientSession
) -> Channels:
    return Channels(settings, db, stand_in, http)


async def person_who_wrote(db: Database, org: uuid.UUID, at: dt.datetime | None) -> int:
    ids = await insert_people(db, org, [person_row(1, whatsapp=TO)])
    async with db.transaction() as session:
        await session.execute(
            update(Recipient).where(Recipient.id == ids["p1"]).values(whatsapp_inbound_at=at)
        )
    return ids["p1"]


async def inbound_at(db: Database, recipient_id: int) -> dt.datetime | None:
    async with db.read() as session:
        return await session.scalar(
            select(Recipient.whatsapp_inbound_at).where(Recipient.id == recipient_id)
        )


async def events_of(db: Database, delivery_id: int) -> list[DeliveryEvent]:
    async with db.read() as session:
        return await repository.events(session, delivery_id)


def settled(
    db: Database, message_id: uuid.UUID, states: set[str], count: int = 1
) -> Callable[[], Awaitable[bool]]:
    """Whether the message has ``count`` deliveries, each in one of ``states``."""

    async def check() -> bool:
        found = await delivery_rows(db, message_id)
        return len(found) == count and all(d.state in states for d in found)

    return check


async def notify(db: Database, org: uuid.UUID, channels: list[str]) -> Message:
    body = message_schemas.NotificationIn.model_validate(
        {"title": "Second", "body": "Again", "recipient": "p1", "channels": channels}
    )
    async with db.transaction() as session:
        return await messages.create_notification(session, org, body)


# --- 131047: the window was closed although it looked open ----------------------------------


async def test_free_text_refused_for_a_closed_window_goes_as_the_template_and_closes_it(
    db: Database, stand_in: WhatsAppCloudServer, channels: Channels
) -> None:
    org = await new_org(db)
    wrote_at = utcnow() - dt.timedelta(hours=1)  # by our records, the window is open
    rid = await person_who_wrote(db, org, wrote_at)
    stand_in.fail_next(code=131047)  # Meta says otherwise
    first = await insert_announcement(db, org, channels=["whatsapp"])
    async with channels.running(template=TEMPLATE, pair_interval_seconds=1.0):
        await eventually(settled(db, first.id, {"sent"}))
        [delivery] = await delivery_rows(db, first.id)

        # The free text was refused; what reached Meta is the template, once (G1).
        assert [(r.to, r.code) for r in stand_in.refused] == [(TO[1:], 131047)]
        [sent] = stand_in.sent_to(TO)
        assert sent.body["type"] == "template"
        assert sent.body["template"]["name"] == "bulletin_notice"
        assert sent.body["biz_opaque_callback_data"] == str(delivery.id)
        events = await events_of(db, delivery.id)
        assert [e.detail for e in events if e.state == "pending"] == [SENDING_TEMPLATE]
        # Its pair slot went back with the refusal: the template was not held for the interval.
        assert PAIRED not in {e.detail for e in events}
        assert channels.email.accepted == []
        # The window is recorded as closed.
        assert await inbound_at(db, rid) is None

        # So the next message to this person goes as the template at once.
        second = await notify(db, org, ["whatsapp"])
        await eventually(settled(db, second.id, {"sent"}))
    [again] = await delivery_rows(db, second.id)
    assert len(stand_in.refused) == 1
    assert [m.body["type"] for m in stand_in.sent_to(TO)] == ["template", "template"]
    assert stand_in.sent_to(TO)[1].body["biz_opaque_callback_data"] == str(again.id)
    assert SENDING_TEMPLATE not in {e.detail for e in await events_of(db, again.id)}


async def test_without_a_template_the_refusal_fails_with_its_reason_and_falls_back(
    db: Database, stand_in: WhatsAppCloudServer, channels: Channels
) -> None:
    org = await new_org(db)
    rid = await person_who_wrote(db, org, utcnow() - dt.timedelta(hours=1))
    stand_in.fail_next(code=131047)
    by_channel = await channels.whatsapp_then_email(org, pair_interval_seconds=0)
    assert by_channel["whatsapp"].state == "failed"
    reason = by_channel["whatsapp"].reason or ""
    assert "131047" in reason
    assert "window had closed" in reason
    assert "neither the message nor the WhatsApp configuration names an approved template" in reason
    assert by_channel["email"].state == "sent"
    assert [m.delivery_id for m in channels.email.accepted] == [by_channel["email"].id]
    assert stand_in.accepted == []
    assert await inbound_at(db, rid) is None


async def test_a_template_refused_for_a_closed_window_fails_without_a_retry(
    db: Database, stand_in: WhatsAppCloudServer, channels: Channels
) -> None:
    org = await new_org(db)
    await person_who_wrote(db, org, None)  # never wrote: the template goes first
    stand_in.fail_next(code=131047, n=2)
    by_channel = await channels.whatsapp_then_email(org, template=TEMPLATE, pair_interval_seconds=0)
    assert by_channel["whatsapp"].state == "failed"
    assert "131047" in (by_channel["whatsapp"].reason or "")
    assert [r.code for r in stand_in.refused] == [131047]  # asked once, never again
    assert by_channel["email"].state == "sent"


async def test_a_window_reopened_during_the_send_is_not_closed(db: Database) -> None:
    org = await new_org(db)
    ids = await insert_people(
        db, org, [person_row(1, whatsapp="+31600000001"), person_row(2, whatsapp="+31600000002")]
    )
    seen = utcnow() - dt.timedelta(hours=2)
    newer = utcnow() - dt.timedelta(seconds=5)
    async with db.transaction() as session:
        for external, at in (("p1", seen), ("p2", newer)):
            await session.execute(
                update(Recipient)
                .where(Recipient.id == ids[external])
                .values(whatsapp_inbound_at=at)
            )
    async with db.transaction() as session:
        await recipients.close_windows(session, [(ids["p1"], seen), (ids["p2"], seen)])
    assert await inbound_at(db, ids["p1"]) is None
    # p2 wrote again after the send was decided: their window is open, whatever Meta said.
    assert await inbound_at(db, ids["p2"]) == newer


# --- 130429: a throughput refusal does not hold the person's pair slot ----------------------


async def test_a_throughput_refusal_gives_the_pair_slot_back(
    settings: Settings, db: Database, stand_in: WhatsAppCloudServer, channels: Channels
) -> None:
    org = await new_org(db)
    await person_who_wrote(db, org, utcnow() - dt.timedelta(hours=1))
    stand_in.fail_next(code=130429)  # the Cloud API's pause for it is a second
    tuned = make_settings(settings.database_url, retry_base_seconds=0.01)
    message = await insert_announcement(db, org, channels=["whatsapp"])
    async with channels.running(tuned, template=TEMPLATE, pair_interval_seconds=6.0):
        await eventually(settled(db, message.id, {"sent"}))
    [delivery] = await delivery_rows(db, message.id)
    events = await events_of(db, delivery.id)
    # The retry was not sent back to wait for the pair slot the refused send had taken: it
    # went on its second claim.
    assert PAIRED not in {e.detail for e in events}
    [refused] = [e for e in events if e.state == "pending"]
    assert "130429" in (refused.detail or "")
    [sent] = [e for e in events if e.state == "sent"]
    assert sent.attempt == 2
    assert [r.code for r in stand_in.refused] == [130429]
    assert len(stand_in.sent_to(TO)) == 1
    # The slot now held is the one the retry took, after the refusal was recorded.
    async with db.read() as session:
        slot = await session.scalar(select(PairSlot).where(PairSlot.address == TO))
    assert slot is not None
    assert slot.free_at - dt.timedelta(seconds=6) >= refused.at


async def test_giving_back_a_pair_slot_frees_it_unless_it_was_taken_since(db: Database) -> None:
    now = utcnow()
    gap = dt.timedelta(seconds=6)
    hold = pacing.PairHold("wa", "+27820000001", now, now + gap)
    async with db.transaction() as session:
        assert await pacing.take_pair(session, "wa", "+27820000001", gap, now) is None
    async with db.transaction() as session:
        assert await pacing.give_back_pair(session, hold)
    later = now + dt.timedelta(seconds=1)
    async with db.transaction() as session:
        assert await pacing.take_pair(session, "wa", "+27820000001", gap, later) is None
    # The slot is the later send's now: giving back the first hold again changes nothing.
    async with db.transaction() as session:
        assert not await pacing.give_back_pair(session, hold)
        busy = await pacing.take_pair(session, "wa", "+27820000001", gap, later)
    assert busy == later + gap
