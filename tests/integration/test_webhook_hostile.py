"""Provider webhooks under hostile input: forged, malformed, oversized and replayed posts.

Every post here goes through the real app (ASGI) to the real database. A post that is not
signed with a configured account's secret is a 401; a signed post that is malformed is a 4xx
problem, never a 5xx; neither changes anything. A signed post replayed, one after another or
all at once, changes nothing the second time and records no second delivery event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select, update
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from bulletin.channels import twilio
from bulletin.channels.whatsapp import SIGNATURE_HEADER, sign
from bulletin.config import Settings
from bulletin.db import Database
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery, DeliveryEvent, Suppression
from bulletin.devservers.whatsapp import inbound_payload, status_payload, webhook_body
from bulletin.messages.models import Message
from bulletin.recipients.models import Recipient
from conftest import Api, make_settings
from support.http import PROBLEM_TYPE, problem
from support.http_factories import notify, person_json, post_people

WA_NUMBER_ID = "100000000000001"
WA_SECRET = "wa-app-secret"
TW_SID = "AC" + "1" * 32
TW_TOKEN = "twilio-auth-token"
TW_FROM = "+14155550100"
PUBLIC_URL = "http://bulletin.test"
PHONE = "+27821234567"
WAMID = "wamid.HBgLMjc4MjEyMzQ1NjcVAgARGBI"
SMS_SID = "SM" + "5" * 32
WHATSAPP = "/v1/webhooks/whatsapp"
TWILIO = "/v1/webhooks/twilio"
FORM = "application/x-www-form-urlencoded"
LIMIT = 64 * 1024


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Both providers configured for every organization, as a single-organization install."""
    return make_settings(
        database_url,
        public_url=PUBLIC_URL,
        whatsapp_phone_number_id=WA_NUMBER_ID,
        whatsapp_access_token="EAAG-token",
        whatsapp_app_secret=WA_SECRET,
        twilio_account_sid=TW_SID,
        twilio_auth_token=TW_TOKEN,
        twilio_from=TW_FROM,
        max_body_bytes=LIMIT,
    )


@dataclass
class Sent:
    """A WhatsApp and an SMS delivery to one person, both ``sent`` and awaiting receipts."""

    whatsapp: int
    sms: int


@pytest.fixture
async def sent(api: Api) -> Sent:
    await post_people(api, person_json(1, phone=PHONE))
    message_id = await notify(api, "p1", channels=["whatsapp", "sms"], routing="all")
    db = api.services.db
    async with db.transaction() as session:
        message = await session.get(Message, uuid.UUID(message_id))
        assert message is not None
        await resolve_chunk(session, message, 100)
        for channel, provider, reference in (
            ("whatsapp", "whatsapp_cloud", WAMID),
            ("sms", "twilio", SMS_SID),
        ):
            await session.execute(
                update(Delivery)
                .where(Delivery.channel == channel)
                .values(state="sent", provider=provider, provider_message_id=reference)
            )
    rows = await _deliveries(db)
    return Sent(whatsapp=rows["whatsapp"].id, sms=rows["sms"].id)


async def _deliveries(db: Database) -> dict[str, Delivery]:
    async with db.read() as session:
        found = (await session.execute(select(Delivery))).scalars()
        return {d.channel: d for d in found}


async def snapshot(db: Database) -> dict[str, Any]:
    """Everything a webhook could change: deliveries, their events, suppressions, people."""
    async with db.read() as session:
        deliveries = (await session.execute(select(Delivery).order_by(Delivery.id))).scalars()
        events = (
            await session.execute(select(DeliveryEvent.delivery_id, DeliveryEvent.state))
        ).all()
        suppressions = (
            await session.execute(select(Suppression.channel, Suppression.address))
        ).all()
        people = (await session.execute(select(Recipient).order_by(Recipient.id))).scalars()
        return {
            "deliveries": [
                (d.id, d.state, d.provider_message_id, d.reason, d.sent_at) for d in deliveries
            ],
            "events": sorted(events),
            "suppressions": sorted(suppressions),
            "people": [
                (p.pref_whatsapp, p.pref_sms, p.whatsapp_inbound_at, p.updated_at) for p in people
            ],
        }


async def post_whatsapp(
    api: Api, body: bytes, *, secret: str | None = WA_SECRET, **headers: str
) -> httpx.Response:
    sent_headers = {"Content-Type": "application/json", **headers}
    if secret is not None:
        sent_headers[SIGNATURE_HEADER] = sign(secret, body)
    return await api.client.post(WHATSAPP, content=body, headers=sent_headers)


def twilio_url(query: str = "") -> str:
    return f"{PUBLIC_URL}{TWILIO}" + (f"?{query}" if query else "")


async def form_as_read(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """The text fields Starlette reads from ``body``: what Twilio would have signed."""
    chunks = [body]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop() if chunks else b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": TWILIO,
        "headers": [(b"content-type", content_type.encode("latin-1"))],
    }
    try:
        form = await Request(scope, receive).form()
    except MultiPartException:
        return []  # Nothing Twilio could have signed; Bulletin cannot read it either.
    return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]


async def post_twilio(
    api: Api,
    body: bytes,
    *,
    query: str = "",
    content_type: str = FORM,
    token: str | None = TW_TOKEN,
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if token is not None:
        params = await form_as_read(body, content_type)
        headers["X-Twilio-Signature"] = twilio.signature(token, twilio_url(query), params)
    path = TWILIO + (f"?{query}" if query else "")
    return await api.client.post(path, content=body, headers=headers)


def status_form(status: str, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": TW_SID,
        "MessageSid": SMS_SID,
        "SmsSid": SMS_SID,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": PHONE,
        "From": TW_FROM,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def inbound_form(text: str) -> dict[str, str]:
    return {
        "AccountSid": TW_SID,
        "MessageSid": "SM" + "7" * 32,
        "From": PHONE,
        "To": TW_FROM,
        "Body": text,
        "NumMedia": "0",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }


def never_a_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith(PROBLEM_TYPE), response.headers


# --- signatures ----------------------------------------------------------------------------


async def test_a_whatsapp_post_not_signed_with_the_app_secret_is_401(api: Api, sent: Sent) -> None:
    body = webhook_body(status_payload(WA_NUMBER_ID, WAMID, "delivered", PHONE, str(sent.whatsapp)))
    before = await snapshot(api.services.db)
    for headers in [
        {SIGNATURE_HEADER: sign("not-the-secret", body)},
        {SIGNATURE_HEADER: sign(WA_SECRET, body + b" ")},
        {SIGNATURE_HEADER: sign(WA_SECRET, body).removeprefix("sha256=")},
        {SIGNATURE_HEADER: "sha256=" + "0" * 64},
        {SIGNATURE_HEADER: "sha1=" + sign(WA_SECRET, body).removeprefix("sha256=")},
        {SIGNATURE_HEADER: ""},
        {},
    ]:
        response = await post_whatsapp(api, body, secret=None, **headers)
        problem(response, 401)
    assert await snapshot(api.services.db) == before


async def test_a_twilio_post_not_signed_with_the_auth_token_is_401(api: Api, sent: Sent) -> None:
    query = f"delivery={sent.sms}"
    body = urlencode(status_form("delivered")).encode()
    before = await snapshot(api.services.db)
    params = await form_as_read(body, FORM)
    for signature in [
        twilio.signature("not-the-token", twilio_url(query), params),
        # Signed for another delivery: the query string is part of what Twilio signs.
        twilio.signature(TW_TOKEN, twilio_url(f"delivery={sent.whatsapp}"), params),
        twilio.signature(TW_TOKEN, twilio_url(query), [*params, ("Extra", "1")]),
        "",
        None,
    ]:
        headers = {"Content-Type": FORM}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        response = await api.client.post(f"{TWILIO}?{query}", content=body, headers=headers)
        problem(response, 401)
    # Signed correctly, but by an account that is not configured here.
    other = urlencode(status_form("delivered", AccountSid="AC" + "2" * 32)).encode()
    problem(await post_twilio(api, other, query=query), 401)
    assert await snapshot(api.services.db) == before


# --- malformed bodies with a valid signature -------------------------------------------------


def _status(**fields: Any) -> bytes:
    entry = {"id": WAMID, "status": "delivered", "timestamp": "1700000000", **fields}
    entry = {k: v for k, v in entry.items() if v is not None}
    return json.dumps(_envelope({"statuses": [entry]})).encode()


def _envelope(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": WA_NUMBER_ID},
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def _inbound(**fields: Any) -> bytes:
    message = {"from": PHONE[1:], "id": "wamid.in", "timestamp": "1700000000", "type": "text"}
    message.update(fields)
    return json.dumps(_envelope({"messages": [message]})).encode()


#: Deeper than Python's JSON parser recurses, and well inside the body limit.
DEEP = 20_000

MALFORMED_WHATSAPP: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"{not json"),
    ("json null", b"null"),
    ("json array", b"[]"),
    ("json string", b'"whatsapp_business_account"'),
    ("truncated", _status()[:-3]),
    ("invalid utf-8", b'{"object": "whatsapp_business_account\xff\xfe", "entry": []}'),
    ("utf-8 bom and garbage", b"\xef\xbb\xbf\x00\x00{}"),
    ("lone surrogate escape", b'{"object": "\\ud800", "entry": []}'),
    ("huge integer", b'{"object": ' + b"9" * 5000 + b"}"),
    ("huge exponent", b'{"object": 1e999999, "entry": []}'),
    ("nan", b'{"object": NaN, "entry": [NaN]}'),
    ("deep nesting", b"[" * DEEP + b"]" * DEEP),
    (
        "deep nesting in an entry",
        b'{"object": "whatsapp_business_account", "entry": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    ),
    (
        "entry is an object",
        json.dumps({"object": "whatsapp_business_account", "entry": {}}).encode(),
    ),
    (
        "changes is a string",
        json.dumps(
            {"object": "whatsapp_business_account", "entry": [{"changes": "messages"}]}
        ).encode(),
    ),
    (
        "value is null",
        json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [{"changes": [{"field": "messages", "value": None}]}],
            }
        ).encode(),
    ),
    (
        "no metadata",
        json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [{"changes": [{"field": "messages", "value": {"statuses": []}}]}],
            }
        ).encode(),
    ),
    (
        "phone number id is a number",
        json.dumps(_envelope({"statuses": []})).replace(f'"{WA_NUMBER_ID}"', WA_NUMBER_ID).encode(),
    ),
    ("statuses is an object", json.dumps(_envelope({"statuses": {"id": WAMID}})).encode()),
    ("status is a number", _status(status=3)),
    ("status is missing", _status(status=None)),
    ("id is missing", _status(id=None)),
    ("id is a list", _status(id=[WAMID])),
    ("timestamp is missing", _status(timestamp=None)),
    ("timestamp is a float", _status(timestamp=1.5e9)),
    ("timestamp is huge", _status(timestamp="9" * 19)),
    ("timestamp is beyond any calendar", _status(timestamp=10**18)),
    ("timestamp is negative", _status(timestamp=-(10**15))),
    ("timestamp is a bool", _status(timestamp=True)),
    ("errors is a string", _status(status="failed", errors="boom")),
    ("from is not a number", _inbound(**{"from": "zanele"})),
    ("from is far too long", _inbound(**{"from": "1" * 5000})),
]

#: Well-formed, correctly signed, and about nothing of ours: answered 200, applied to nothing.
#: A status whose callback data cannot be read is matched by its wamid (Meta does not require
#: the callback data), so those cases carry a wamid that is not ours.
HARMLESS_WHATSAPP: list[tuple[str, bytes]] = [
    ("callback data beyond 64 bits", _status(biz_opaque_callback_data="9" * 19)),
    ("callback data of the largest id", _status(biz_opaque_callback_data=str(2**63 - 1))),
    ("callback data of zero", _status(biz_opaque_callback_data="0")),
    (
        "callback data of unicode digits",
        _status(id="wamid.not-ours", biz_opaque_callback_data="١٢"),
    ),
    ("callback data that is a number", _status(id="wamid.not-ours", biz_opaque_callback_data=12)),
    ("a status we do not track", _status(status="deleted")),
    (
        "another account's number",
        json.dumps(_envelope({"statuses": []})).replace(WA_NUMBER_ID, "999").encode(),
    ),
    (
        "an unknown change field",
        json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [{"changes": [{"field": "account_update", "value": 5}]}],
            }
        ).encode(),
    ),
    ("no entries", json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()),
    ("an image from a stranger", _inbound(**{"from": "19995550100", "type": "image"})),
    (
        "errors of odd types",
        _status(id="wamid.not-ours", status="failed", errors=[1, None, {"code": "x" * 50}]),
    ),
    ("a text that is an object", _inbound(**{"from": "19995550100"}, text={"body": {"a": 1}})),
    (
        "a text of control characters",
        _inbound(**{"from": "19995550100"}, text={"body": "\x00STOP\x7f"}),
    ),
]


async def test_a_signed_malformed_whatsapp_post_is_a_400_and_changes_nothing(
    api: Api, sent: Sent
) -> None:
    before = await snapshot(api.services.db)
    for name, body in MALFORMED_WHATSAPP:
        response = await post_whatsapp(api, body)
        # Nesting beyond the JSON depth limit is refused (422) before the route reads it.
        expected = 422 if name.startswith("deep nesting") else 400
        assert response.status_code == expected, (name, response.text)
        problem(response, expected)
        assert await snapshot(api.services.db) == before, name


async def test_a_signed_whatsapp_post_about_nothing_of_ours_changes_nothing(
    api: Api, sent: Sent
) -> None:
    before = await snapshot(api.services.db)
    for name, body in HARMLESS_WHATSAPP:
        response = await post_whatsapp(api, body)
        assert response.status_code == 200, (name, response.text)
        assert await snapshot(api.services.db) == before, name


MALFORMED_TWILIO: list[tuple[str, str, bytes, str]] = [
    # (name, query, body, content type)
    ("empty", "", b"", FORM),
    ("invalid percent escapes", "", b"AccountSid=" + TW_SID.encode() + b"&Body=%ZZ%F&%", FORM),
    ("invalid utf-8", "", b"AccountSid=" + TW_SID.encode() + b"&Body=%FF%FE%80&From=\xff", FORM),
    ("latin-1 bytes", "", urlencode(inbound_form("caf\xe9")).encode("latin-1"), FORM),
    (
        "a charset nobody uses",
        "",
        urlencode(inbound_form("hi")).encode(),
        f"{FORM}; charset=ebcdic",
    ),
    (
        "json instead of a form",
        "",
        json.dumps(status_form("delivered")).encode(),
        "application/json",
    ),
    ("no content type", "", urlencode(status_form("delivered")).encode(), ""),
    ("multipart without a boundary", "", b"--x\r\n\r\n", "multipart/form-data"),
    (
        "multipart cut short",
        "",
        b'--xyz\r\nContent-Disposition: form-data; name="A"\r\n\r\n1',
        "multipart/form-data; boundary=xyz",
    ),
    ("an unknown status", "", urlencode(status_form("teleported")).encode(), FORM),
    (
        "a status without any id",
        "",
        urlencode(
            {
                k: v
                for k, v in status_form("delivered").items()
                if "Sid" not in k or k == "AccountSid"
            }
        ).encode(),
        FORM,
    ),
    (
        "delivery is not a number",
        "delivery=abc",
        urlencode(status_form("delivered")).encode(),
        FORM,
    ),
    ("delivery is negative", "delivery=-1", urlencode(status_form("delivered")).encode(), FORM),
    ("delivery is empty", "delivery=", urlencode(status_form("delivered")).encode(), FORM),
    (
        "delivery beyond 64 bits",
        "delivery=" + "9" * 19,
        urlencode(status_form("delivered")).encode(),
        FORM,
    ),
    (
        "delivery in superscript digits",
        "delivery=%C2%B2",
        urlencode(status_form("delivered")).encode(),
        FORM,
    ),
    (
        "delivery in arabic-indic digits",
        "delivery=%D9%A1",
        urlencode(status_form("delivered")).encode(),
        FORM,
    ),
    (
        "delivery in fullwidth digits",
        "delivery=%EF%BC%91",
        urlencode(status_form("delivered")).encode(),
        FORM,
    ),
    (
        "delivery given twice",
        "delivery=1&delivery=2",
        urlencode(status_form("delivered", MessageSid="SM0", SmsSid="SM0")).encode(),
        FORM,
    ),
    (
        "a sender that is not a number",
        "",
        urlencode({**inbound_form("STOP"), "From": "whatsapp:+27821234567"}).encode(),
        FORM,
    ),
    (
        "an inbound without a body",
        "",
        urlencode({k: v for k, v in inbound_form("STOP").items() if k != "Body"}).encode(),
        FORM,
    ),
    (
        "fields given twice",
        "",
        urlencode(
            [*status_form("delivered").items(), ("MessageStatus", "failed"), ("AccountSid", "AC0")]
        ).encode(),
        FORM,
    ),
    (
        "a thousand fields",
        "",
        urlencode(
            [*status_form("queued").items(), *((f"F{i}", "x") for i in range(1000))]
        ).encode(),
        FORM,
    ),
]


async def test_a_signed_odd_twilio_post_is_never_a_server_error_and_changes_nothing(
    api: Api, sent: Sent
) -> None:
    before = await snapshot(api.services.db)
    for name, query, body, content_type in MALFORMED_TWILIO:
        response = await post_twilio(api, body, query=query, content_type=content_type)
        assert response.status_code < 500, (name, response.text)
        never_a_server_error(response)
        assert await snapshot(api.services.db) == before, name


# --- oversized bodies ------------------------------------------------------------------------


async def _chunks(total: int, size: int = 8192) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = min(size, total - sent)
        sent += chunk
        yield b" " * chunk


@pytest.mark.parametrize("path", [WHATSAPP, TWILIO])
async def test_an_oversized_webhook_post_is_413_signed_or_not(
    api: Api, sent: Sent, path: str
) -> None:
    before = await snapshot(api.services.db)
    # Whitespace around a real notification: the signature is valid, the size is not.
    payload = status_payload(WA_NUMBER_ID, WAMID, "delivered", PHONE, str(sent.whatsapp))
    body = webhook_body(payload) + b" " * LIMIT
    headers = {
        SIGNATURE_HEADER: sign(WA_SECRET, body),
        "Content-Type": "application/json" if path == WHATSAPP else FORM,
    }
    problem(await api.client.post(path, content=body, headers=headers), 413)
    # Without a Content-Length the body is counted while it streams in.
    streamed = await api.client.post(path, content=_chunks(LIMIT + 1), headers=headers)
    assert "content-length" not in streamed.request.headers
    problem(streamed, 413)
    assert await snapshot(api.services.db) == before


# --- replays ----------------------------------------------------------------------------------


async def _events(db: Database, delivery_id: int) -> list[str]:
    async with db.read() as session:
        rows = await session.execute(
            select(DeliveryEvent.state).where(DeliveryEvent.delivery_id == delivery_id)
        )
        return list(rows.scalars())


async def _replayed(
    post: Callable[[], Awaitable[httpx.Response]], times: int, *, concurrently: bool
) -> list[httpx.Response]:
    if concurrently:
        return list(await asyncio.gather(*(post() for _ in range(times))))
    return [await post() for _ in range(times)]


@pytest.mark.parametrize("concurrently", [True, False], ids=["at-once", "one-by-one"])
async def test_a_replayed_whatsapp_receipt_is_applied_once(
    api: Api, sent: Sent, concurrently: bool
) -> None:
    body = webhook_body(status_payload(WA_NUMBER_ID, WAMID, "delivered", PHONE, str(sent.whatsapp)))

    async def post() -> httpx.Response:
        return await post_whatsapp(api, body)

    first = await _replayed(post, 5, concurrently=concurrently)
    assert [r.status_code for r in first] == [200] * 5
    after_first = await snapshot(api.services.db)
    assert (await _deliveries(api.services.db))["whatsapp"].state == "delivered"
    assert await _events(api.services.db, sent.whatsapp) == ["delivered"]

    again = await _replayed(post, 3, concurrently=concurrently)
    assert [r.status_code for r in again] == [200] * 3
    assert await snapshot(api.services.db) == after_first


@pytest.mark.parametrize("concurrently", [True, False], ids=["at-once", "one-by-one"])
async def test_a_replayed_twilio_receipt_is_applied_once(
    api: Api, sent: Sent, concurrently: bool
) -> None:
    body = urlencode(status_form("undelivered", ErrorCode="30003")).encode()
    query = f"delivery={sent.sms}"

    async def post() -> httpx.Response:
        return await post_twilio(api, body, query=query)

    first = await _replayed(post, 5, concurrently=concurrently)
    assert [r.status_code for r in first] == [200] * 5
    after_first = await snapshot(api.services.db)
    sms = (await _deliveries(api.services.db))["sms"]
    assert sms.state == "failed"
    assert "30003" in (sms.reason or "")
    assert await _events(api.services.db, sent.sms) == ["failed"]

    again = await _replayed(post, 3, concurrently=concurrently)
    assert [r.status_code for r in again] == [200] * 3
    assert await snapshot(api.services.db) == after_first


async def test_a_replayed_stop_reply_suppresses_once(api: Api, sent: Sent) -> None:
    whatsapp_stop = webhook_body(inbound_payload(WA_NUMBER_ID, PHONE, "STOP", 1700000000))
    sms_stop = urlencode(inbound_form("stop")).encode()

    async def post(n: int) -> httpx.Response:
        if n % 2:
            return await post_whatsapp(api, whatsapp_stop)
        return await post_twilio(api, sms_stop)

    responses = await asyncio.gather(*(post(n) for n in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    after = await snapshot(api.services.db)
    assert after["suppressions"] == [("sms", PHONE), ("whatsapp", PHONE)]
    [(pref_whatsapp, pref_sms, inbound_at, _)] = after["people"]
    assert (pref_whatsapp, pref_sms) == (False, False)
    # The WhatsApp window opens at the reply's own time, not at the time it was heard.
    assert inbound_at == dt.datetime.fromtimestamp(1700000000, dt.UTC)

    # Posted again, one by one this time, they change nothing at all.
    for n in range(4):
        assert (await post(n)).status_code == 200
    assert await snapshot(api.services.db) == after
    assert after["events"] == []
