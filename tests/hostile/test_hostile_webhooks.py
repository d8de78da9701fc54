"""Hostile tenants against the provider webhooks (issue 12, finding 1 and the replays of 8).

Two organizations, A (the victim) and B (the attacker), each with its own WhatsApp and Twilio
account; the installation has an environment (``default``) account as well, which serves
neither of them. A person is known to both. A has a WhatsApp, an SMS and an email delivery
``sent`` through its own accounts and awaiting receipts.

B, holding only its own secrets, signs payloads that name A's phone number id or AccountSid
and A's delivery ids, and posts them to B's URL, to A's URL and to the URL without an account.
Whatever it tries, A's deliveries, their events, A's suppressions and A's people stay exactly
as they were, and no fallback is started. A's own account cannot move a delivery of another
channel or of another account either, and a validly signed message replayed later changes
nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select, update

from bulletin.channels import twilio
from bulletin.channels.accounts import webhook_path
from bulletin.channels.whatsapp import SIGNATURE_HEADER, sign
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery, DeliveryEvent, Suppression
from bulletin.devservers.whatsapp import inbound_payload, status_payload, webhook_body
from bulletin.messages.models import Message
from bulletin.orgs.keys import Scope
from bulletin.recipients.models import Recipient
from conftest import Api, make_settings
from support.http_factories import notify, person_json, post_people

PUBLIC_URL = "http://bulletin.test"
PHONE = "+27821234567"
OLD_WHATSAPP = "/v1/webhooks/whatsapp"
OLD_TWILIO = "/v1/webhooks/twilio"
FORM = "application/x-www-form-urlencoded"

ENV_WA_NUMBER = "100000000000009"
ENV_WA_SECRET = "env-app-secret"
ENV_TW_SID = "AC" + "e" * 32
ENV_TW_TOKEN = "env-auth-token"
ENV_TW_FROM = "+14155550109"

WAMID_A = "wamid.HBgLMjc4MjEyMzQ1NjcVAgARGBJB"
SMS_SID_A = "SM" + "a" * 32
EMAIL_ID_A = "<delivery-of-a@bulletin.test>"


@dataclass(frozen=True)
class Tenant:
    """An organization and the secrets of its own WhatsApp and Twilio accounts."""

    api: Api
    wa_number: str
    wa_secret: str
    tw_sid: str
    tw_token: str
    tw_from: str

    @property
    def key(self) -> str:
        return str(self.api.org_id)

    @property
    def whatsapp_url(self) -> str:
        return webhook_path("whatsapp", self.key)

    @property
    def twilio_url(self) -> str:
        return webhook_path("sms", self.key)


@dataclass(frozen=True)
class World:
    a: Tenant
    b: Tenant
    #: A's deliveries, ``sent`` through A's own accounts (email through its SMTP server).
    whatsapp: int
    sms: int
    email: int


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(
        database_url,
        public_url=PUBLIC_URL,
        secret_key=generate_key(),
        whatsapp_phone_number_id=ENV_WA_NUMBER,
        whatsapp_access_token="EAAG-env-token",
        whatsapp_app_secret=ENV_WA_SECRET,
        twilio_account_sid=ENV_TW_SID,
        twilio_auth_token=ENV_TW_TOKEN,
        twilio_from=ENV_TW_FROM,
    )


async def configure(tenant: Tenant, *, wa_number: str | None = None) -> None:
    """The tenant's own accounts, as its admin sets them through the API."""
    whatsapp = {
        "provider": "whatsapp_cloud",
        "phone_number_id": wa_number or tenant.wa_number,
        "access_token": f"EAAG-{tenant.wa_secret}",
        "app_secret": tenant.wa_secret,
        "verify_token": f"verify-{tenant.wa_secret}",
    }
    sms = {
        "provider": "twilio",
        "account_sid": tenant.tw_sid,
        "auth_token": tenant.tw_token,
        "from_number": tenant.tw_from,
    }
    for channel, config in (("whatsapp", whatsapp), ("sms", sms)):
        response = await tenant.api.put(f"/v1/channels/{channel}", config, Scope.ADMIN)
        assert response.status_code in (200, 201), response.text


async def _resolve(db: Database, message_id: str) -> None:
    async with db.transaction() as session:
        message = await session.get(Message, uuid.UUID(message_id))
        assert message is not None
        await resolve_chunk(session, message, 100)


async def _mark_sent(
    db: Database, delivery_id: int, provider: str, reference: str, account: str | None
) -> None:
    async with db.transaction() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(
                state="sent",
                provider=provider,
                provider_message_id=reference,
                provider_account=account,
            )
        )


async def _delivery_ids(db: Database, message_id: str) -> dict[str, int]:
    async with db.read() as session:
        rows = await session.execute(
            select(Delivery.channel, Delivery.id).where(
                Delivery.message_id == uuid.UUID(message_id)
            )
        )
        return {channel: delivery_id for channel, delivery_id in rows}


@pytest.fixture
async def world(api: Api) -> World:
    a = Tenant(api, "100000000000001", "a-app-secret", "AC" + "a" * 32, "a-token", "+14155550101")
    other = await api.other_org("B")
    b = Tenant(other, "100000000000002", "b-app-secret", "AC" + "b" * 32, "b-token", "+14155550102")
    for tenant in (a, b):
        await configure(tenant)
        await post_people(tenant.api, person_json(1, phone=PHONE))
    db = api.services.db
    texts = await notify(a.api, "p1", channels=["whatsapp", "sms"], routing="all")
    # Email first, SMS only if the email fails: what a forged failure would set off.
    mail = await notify(a.api, "p1", channels=["email", "sms"], routing="first")
    for message_id in (texts, mail):
        await _resolve(db, message_id)
    ids = await _delivery_ids(db, texts)
    [email] = (await _delivery_ids(db, mail)).values()
    await _mark_sent(db, ids["whatsapp"], "whatsapp_cloud", WAMID_A, a.key)
    await _mark_sent(db, ids["sms"], "twilio", SMS_SID_A, a.key)
    await _mark_sent(db, email, "smtp", EMAIL_ID_A, None)
    return World(a, b, whatsapp=ids["whatsapp"], sms=ids["sms"], email=email)


async def snapshot(db: Database, org_id: uuid.UUID) -> dict[str, Any]:
    """Everything of one organization a webhook could change."""
    async with db.read() as session:
        deliveries = (
            await session.execute(
                select(Delivery).where(Delivery.org_id == org_id).order_by(Delivery.id)
            )
        ).scalars()
        rows = [
            (d.id, d.channel, d.state, d.reason, d.provider_message_id, d.sent_at, d.fallback_at)
            for d in deliveries
        ]
        events = await session.execute(
            select(DeliveryEvent.delivery_id, DeliveryEvent.state)
            .join(Delivery, Delivery.id == DeliveryEvent.delivery_id)
            .where(Delivery.org_id == org_id)
        )
        suppressions = await session.execute(
            select(Suppression.channel, Suppression.address).where(Suppression.org_id == org_id)
        )
        people = (
            await session.execute(select(Recipient).where(Recipient.org_id == org_id))
        ).scalars()
        return {
            "deliveries": rows,
            "events": sorted((d, state) for d, state in events),
            "suppressions": sorted((channel, address) for channel, address in suppressions),
            "people": [
                (p.pref_whatsapp, p.pref_sms, p.whatsapp_inbound_at, p.updated_at) for p in people
            ],
        }


async def post_whatsapp(api: Api, path: str, body: bytes, secret: str) -> httpx.Response:
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    response = await api.client.post(path, content=body, headers=headers)
    assert response.status_code < 500, response.text
    return response


async def post_twilio(
    api: Api, path: str, fields: dict[str, str], token: str, query: str = ""
) -> httpx.Response:
    target = path + (f"?{query}" if query else "")
    signature = twilio.signature(token, PUBLIC_URL + target, fields)
    headers = {"Content-Type": FORM, "X-Twilio-Signature": signature}
    response = await api.client.post(target, content=urlencode(fields).encode(), headers=headers)
    assert response.status_code < 500, response.text
    return response


def sms_inbound(account_sid: str, to: str, text: str, sid: str) -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "MessageSid": sid,
        "SmsSid": sid,
        "From": PHONE,
        "To": to,
        "Body": text,
        "NumMedia": "0",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }


def sms_status(account_sid: str, sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": PHONE,
        "ApiVersion": "2010-04-01",
        **extra,
    }


# --- forged by another organization ----------------------------------------------------------


async def test_b_cannot_stop_whatsapp_for_a_by_naming_its_number(world: World) -> None:
    a, b = world.a, world.b
    db = a.api.services.db
    before = await snapshot(db, a.api.org_id)
    b_before = await snapshot(db, b.api.org_id)
    stop = webhook_body(inbound_payload(a.wa_number, PHONE, "STOP"))

    # At B's URL the signature is B's, so the change about A's number is skipped.
    assert (await post_whatsapp(b.api, b.whatsapp_url, stop, b.wa_secret)).status_code == 200
    # At A's URL and at the URL without an account, B's secret verifies nothing.
    assert (await post_whatsapp(b.api, a.whatsapp_url, stop, b.wa_secret)).status_code == 401
    assert (await post_whatsapp(b.api, OLD_WHATSAPP, stop, b.wa_secret)).status_code == 401
    assert await snapshot(db, a.api.org_id) == before
    assert await snapshot(db, b.api.org_id) == b_before

    # B claims A's number as its own: its posts then speak for B's people only.
    await configure(b, wa_number=a.wa_number)
    claimed = webhook_body(inbound_payload(a.wa_number, PHONE, "STOP"))
    for path in (b.whatsapp_url, a.whatsapp_url, OLD_WHATSAPP):
        await post_whatsapp(b.api, path, claimed, b.wa_secret)
    assert await snapshot(db, a.api.org_id) == before
    [(b_whatsapp, _, _, _)] = (await snapshot(db, b.api.org_id))["people"]
    assert b_whatsapp is False


async def test_b_cannot_stop_sms_for_a_by_naming_its_account_sid(world: World) -> None:
    a, b = world.a, world.b
    db = a.api.services.db
    before = await snapshot(db, a.api.org_id)
    stop = sms_inbound(a.tw_sid, a.tw_from, "STOP", "SM" + "1" * 32)
    for path in (b.twilio_url, a.twilio_url, OLD_TWILIO):
        assert (await post_twilio(b.api, path, stop, b.tw_token)).status_code == 401
    assert await snapshot(db, a.api.org_id) == before


async def test_b_cannot_fail_a_whatsapp_delivery_of_a_or_start_a_fallback(world: World) -> None:
    a, b = world.a, world.b
    db = a.api.services.db
    before = await snapshot(db, a.api.org_id)
    failed = webhook_body(
        status_payload(a.wa_number, WAMID_A, "failed", PHONE, str(world.whatsapp))
    )
    for path in (b.whatsapp_url, a.whatsapp_url, OLD_WHATSAPP):
        await post_whatsapp(b.api, path, failed, b.wa_secret)
    # B's own number, A's delivery id: B's account does not serve A.
    own = webhook_body(status_payload(b.wa_number, WAMID_A, "failed", PHONE, str(world.whatsapp)))
    assert (await post_whatsapp(b.api, b.whatsapp_url, own, b.wa_secret)).status_code == 200
    assert await snapshot(db, a.api.org_id) == before


async def test_a_whatsapp_failure_aimed_at_an_email_delivery_changes_nothing(world: World) -> None:
    """Even signed with A's own app secret and naming A's number: a WhatsApp receipt cannot
    fail an email delivery, so no SMS fallback is created."""
    a, b = world.a, world.b
    db = a.api.services.db
    before = await snapshot(db, a.api.org_id)
    failed = webhook_body(
        status_payload(a.wa_number, EMAIL_ID_A, "failed", PHONE, str(world.email))
    )
    for path, secret in (
        (a.whatsapp_url, a.wa_secret),
        (OLD_WHATSAPP, a.wa_secret),
        (b.whatsapp_url, b.wa_secret),
        (OLD_WHATSAPP, b.wa_secret),
    ):
        await post_whatsapp(a.api, path, failed, secret)
    assert await snapshot(db, a.api.org_id) == before
    # The same receipt for A's WhatsApp delivery is A's to send, and it does move that one.
    genuine = webhook_body(
        status_payload(a.wa_number, WAMID_A, "delivered", PHONE, str(world.whatsapp))
    )
    assert (await post_whatsapp(a.api, a.whatsapp_url, genuine, a.wa_secret)).status_code == 200
    async with db.read() as session:
        moved = await session.get(Delivery, world.whatsapp)
        assert moved is not None
        assert moved.state == "delivered"


# --- the right account, another account's delivery ---------------------------------------------


async def test_a_twilio_status_of_the_right_account_for_another_accounts_delivery_is_unmatched(
    world: World,
) -> None:
    """A's SMS went out through the environment's account, before A had one of its own. A's
    account now serves A, but it did not send that SMS: its receipts cannot move it."""
    a = world.a
    db = a.api.services.db
    await _mark_sent(db, world.sms, "twilio", SMS_SID_A, "default")
    before = await snapshot(db, a.api.org_id)
    undelivered = sms_status(a.tw_sid, SMS_SID_A, "undelivered", ErrorCode="30003")
    query = f"delivery={world.sms}"
    for path in (a.twilio_url, OLD_TWILIO):
        await post_twilio(a.api, path, undelivered, a.tw_token, query)
    assert await snapshot(db, a.api.org_id) == before
    # The environment's account sent it, yet no longer serves A: unmatched as well.
    env = sms_status(ENV_TW_SID, SMS_SID_A, "undelivered", ErrorCode="30003")
    assert (await post_twilio(a.api, OLD_TWILIO, env, ENV_TW_TOKEN, query)).status_code == 200
    assert await snapshot(db, a.api.org_id) == before


async def test_a_default_account_receipt_for_a_delivery_of_an_organizations_own_account(
    api: Api, world: World
) -> None:
    """C once had its own WhatsApp account, sent through it, then removed it: the environment's
    account serves C now, but not the delivery C's own account sent."""
    c = await api.other_org("C")
    db = api.services.db
    await post_people(c, person_json(1, phone=PHONE))
    message_id = await notify(c, "p1", channels=["whatsapp"])
    await _resolve(db, message_id)
    [delivery_id] = (await _delivery_ids(db, message_id)).values()
    await _mark_sent(db, delivery_id, "whatsapp_cloud", "wamid.C", str(c.org_id))
    before = await snapshot(db, c.org_id)
    failed = webhook_body(
        status_payload(ENV_WA_NUMBER, "wamid.C", "failed", PHONE, str(delivery_id))
    )
    for path in (OLD_WHATSAPP, webhook_path("whatsapp", "default")):
        assert (await post_whatsapp(api, path, failed, ENV_WA_SECRET)).status_code == 200
    assert await snapshot(db, c.org_id) == before


# --- unknown accounts look like wrong signatures -----------------------------------------------


async def test_an_unknown_account_answers_as_a_known_one_with_a_wrong_signature(
    world: World,
) -> None:
    a = world.a
    body = webhook_body(inbound_payload(a.wa_number, PHONE, "STOP"))
    stranger = str(uuid.uuid4())
    answers = []
    for path in (
        a.whatsapp_url,
        webhook_path("whatsapp", stranger),
        webhook_path("whatsapp", "not-an-account"),
        OLD_WHATSAPP,
    ):
        response = await post_whatsapp(a.api, path, body, "a-guess")
        answers.append((response.status_code, response.json()["detail"]))
    assert len(set(answers)) == 1, answers
    assert answers[0][0] == 401
    fields = sms_status(a.tw_sid, SMS_SID_A, "delivered")
    twilio_answers = set()
    for path in (a.twilio_url, webhook_path("sms", stranger), OLD_TWILIO):
        response = await post_twilio(a.api, path, fields, "a-guess")
        twilio_answers.add((response.status_code, response.json()["detail"]))
    assert len(twilio_answers) == 1, twilio_answers


# --- replays -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["whatsapp", "sms"])
@pytest.mark.parametrize("account", ["own", "default"])
async def test_a_replayed_stop_after_a_start_leaves_the_channel_on(
    api: Api, world: World, channel: str, account: str
) -> None:
    """A STOP, then a START, then the STOP's very post again (validly signed, as captured)."""
    if account == "own":
        tenant = world.a
        whatsapp_path, twilio_path = tenant.whatsapp_url, tenant.twilio_url
        number, secret = tenant.wa_number, tenant.wa_secret
        sid, token, to = tenant.tw_sid, tenant.tw_token, tenant.tw_from
        org = tenant.api
    else:
        # An organization without accounts of its own, served by the environment's.
        org = await api.other_org("C")
        await post_people(org, person_json(1, phone=PHONE))
        whatsapp_path, twilio_path = OLD_WHATSAPP, OLD_TWILIO
        number, secret = ENV_WA_NUMBER, ENV_WA_SECRET
        sid, token, to = ENV_TW_SID, ENV_TW_TOKEN, ENV_TW_FROM
    db = api.services.db

    async def reply(text: str, n: int) -> httpx.Response:
        if channel == "whatsapp":
            payload = inbound_payload(number, PHONE, text, 1_700_000_000 + n)
            message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
            message["id"] = f"wamid.reply-{n}"
            return await post_whatsapp(org, whatsapp_path, webhook_body(payload), secret)
        fields = sms_inbound(sid, to, text, "SM" + str(n) * 32)
        return await post_twilio(org, twilio_path, fields, token)

    async def enabled() -> bool:
        async with db.read() as session:
            [found] = (
                await session.execute(select(Recipient).where(Recipient.org_id == org.org_id))
            ).scalars()
            value = found.pref_whatsapp if channel == "whatsapp" else found.pref_sms
            return value is not False

    assert (await reply("STOP", 1)).status_code == 200
    assert not await enabled()
    assert (await reply("START", 2)).status_code == 200
    assert await enabled()
    after_start = await snapshot(db, org.org_id)
    assert (await reply("STOP", 1)).status_code == 200
    assert await enabled()
    assert await snapshot(db, org.org_id) == after_start
