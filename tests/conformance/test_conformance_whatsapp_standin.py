"""The WhatsApp Cloud API stand-in is at least as strict as Meta, and sends what Meta sends.

Each rule is shown twice where it can be: the stand-in refusing (or producing) over real HTTP,
and a reference nobody on this project wrote agreeing with it: ``pywa`` 4.5.0 reads the error
bodies, verifies the signatures and parses the webhooks. The last tests hand what the stand-in
sends to Bulletin's own webhook endpoint, which must take it.

Meta's rules, and where they are written:

* template parameter text with a new-line, a tab or more than four consecutive spaces is refused
  with 132018, details "Param text cannot have new-line/tab characters or more than 4
  consecutive spaces" (the Cloud API's answer, quoted in netflie/whatsapp-cloud-api issue 201);
* a text parameter is at most 32768 characters (``TextParameter.maxLength`` in
  github.com/facebook/openapi, business-messaging-api_v23.0.yaml), 1024 in a body when the
  template has other components, 60 in a header (Cloud API reference, parameter object);
* free text outside the 24-hour customer service window fails with 131047 "Re-engagement
  message" (Meta's error codes page; ``pywa.errors.ReEngagementMessage``), reported by the Cloud
  API as a failed status after it took the message;
* ``biz_opaque_callback_data`` is optional in statuses; a person with a username is identified by
  a business-scoped ``user_id`` (``from_user_id`` in the message) and may have no ``from`` or
  ``wa_id`` (Meta, "Business-scoped user IDs"; ``pywa.types.User.from_contact``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pywa import utils as pywa_utils
from pywa.client import WhatsApp as PywaClient
from pywa.errors import MessageUndeliverable, ReEngagementMessage, WhatsAppError
from pywa.types.base_update import RawUpdate
from pywa.types.message import Message as PywaMessage
from pywa.types.message_status import MessageStatus as PywaStatus

from bulletin.channels.whatsapp import SIGNATURE_HEADER, parse_webhook
from bulletin.devservers.whatsapp import (
    WhatsAppCloudServer,
    batch_payload,
    business_scoped_user_id,
    inbound_payload,
    status_error,
    status_payload,
)
from e2e.stack import WA_NUMBER_ID, WA_SECRET, Stack
from e2e.test_channels_e2e import PHONE, ZANELE, delivery, hook_url, post_whatsapp
from support.http_factories import notify, post_people
from support.settling import settled_notification
from support.waiting import eventually

TOKEN = "EAAG-standin-conformance-token"
PHONE_ID = "106540352242922"
APP_SECRET = "standin-app-secret"
TO = "31612345678"
HOUR = 3600.0


@dataclass
class Receiver:
    """A webhook endpoint that keeps every post (raw body and signature) and answers 200."""

    url: str = ""
    posts: list[tuple[bytes, str | None]] = field(default_factory=list)

    def updates(self) -> list[RawUpdate]:
        """The posts as pywa reads them, each signature checked by pywa."""
        updates: list[RawUpdate] = []
        for body, signature in self.posts:
            assert signature is not None
            assert pywa_utils.webhook_updates_validator(APP_SECRET, body, signature)
            updates.append(RawUpdate(body, hmac_header=signature, update_hash=str(len(updates))))
        return updates


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()

    async def take(request: web.Request) -> web.Response:
        found.posts.append((await request.read(), request.headers.get(SIGNATURE_HEADER)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield found
    finally:
        await runner.cleanup()


@pytest.fixture
async def server(receiver: Receiver) -> AsyncIterator[WhatsAppCloudServer]:
    async with WhatsAppCloudServer(
        access_token=TOKEN,
        phone_number_id=PHONE_ID,
        enforce_window=True,
        webhook_url=receiver.url,
        app_secret=APP_SECRET,
    ) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def pywa() -> PywaClient:
    return PywaClient(phone_id=PHONE_ID, token=TOKEN, server=None)


async def send(
    http: aiohttp.ClientSession, server: WhatsAppCloudServer, message: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": TO, **message}
    url = f"{server.base_url}/{server.api_version}/{PHONE_ID}/messages"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(url, json=body, headers=headers) as response:
        answer: dict[str, Any] = await response.json()
        return response.status, answer


def template(*components: dict[str, Any]) -> dict[str, Any]:
    spec = {"name": "bulletin_notice", "language": {"code": "en"}, "components": list(components)}
    return {"type": "template", "template": spec}


def component(kind: str, *texts: str) -> dict[str, Any]:
    return {"type": kind, "parameters": [{"type": "text", "text": text} for text in texts]}


def text(body: str = "Free text", callback: str | None = "77") -> dict[str, Any]:
    message: dict[str, Any] = {"type": "text", "text": {"preview_url": False, "body": body}}
    if callback is not None:
        message["biz_opaque_callback_data"] = callback
    return message


def graph_error(answer: dict[str, Any]) -> WhatsAppError:
    """The Graph error of an answer, read by pywa (which raises the same on a real refusal)."""
    assert set(answer) == {"error"}
    assert answer["error"]["type"] == "OAuthException"
    assert answer["error"]["fbtrace_id"]
    return WhatsAppError.from_dict(answer["error"])


# --- template parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "parameter",
    ["Line one\nline two", "Para one\r\n\r\nPara two", "Name:\tAda", "Wide     gap"],
    ids=["newline", "crlf", "tab", "five-spaces"],
)
async def test_a_template_parameter_with_a_newline_tab_or_five_spaces_is_refused_with_132018(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession, parameter: str
) -> None:
    status, answer = await send(http, server, template(component("body", "Ada", parameter)))

    assert status == 400
    error = graph_error(answer)
    assert error.code == 132018
    assert error.message == "(#132018) There was an issue with the parameters in your template."
    assert error.details == (
        "Param text cannot have new-line/tab characters or more than 4 consecutive spaces"
    )
    assert server.accepted == []


@pytest.mark.parametrize("parameter", ["Four    spaces", "Plain, with punctuation: ok."])
async def test_a_template_parameter_without_them_is_accepted(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession, parameter: str
) -> None:
    status, answer = await send(http, server, template(component("body", parameter)))

    assert status == 200, answer
    assert answer["messages"][0]["message_status"] == "accepted"


@pytest.mark.parametrize(
    ("components", "code"),
    [
        ([component("body", "x" * 32768)], None),
        ([component("body", "x" * 32769)], 100),
        ([component("header", "Notice"), component("body", "x" * 1024)], None),
        ([component("header", "Notice"), component("body", "x" * 1025)], 132005),
        ([component("header", "x" * 60), component("body", "Body")], None),
        ([component("header", "x" * 61), component("body", "Body")], 132005),
    ],
    ids=["body-32768", "body-32769", "body+header-1024", "body+header-1025", "h-60", "h-61"],
)
async def test_template_parameters_are_held_to_metas_length_limits(
    server: WhatsAppCloudServer,
    http: aiohttp.ClientSession,
    components: list[dict[str, Any]],
    code: int | None,
) -> None:
    status, answer = await send(http, server, template(*components))

    if code is None:
        assert status == 200, answer
        assert len(server.accepted) == 1
    else:
        assert status == 400
        assert graph_error(answer).code == code
        assert server.accepted == []


# --- the customer service window ------------------------------------------------------------


async def test_free_text_to_a_person_who_never_wrote_is_refused_with_131047(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession
) -> None:
    server.window_refusal = "error"

    status, answer = await send(http, server, text())

    assert status == 400
    error = graph_error(answer)
    assert isinstance(error, ReEngagementMessage)
    assert error.code == 131047
    assert error.message == "(#131047) Re-engagement message"
    assert server.accepted == []
    assert [(r.to, r.code) for r in server.refused] == [(TO, 131047)]


async def test_a_template_goes_out_whatever_the_window(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession
) -> None:
    server.window_refusal = "error"

    status, _ = await send(http, server, template(component("body", "Ada")))

    assert status == 200
    assert server.refused == []


async def test_the_window_opens_when_the_person_writes_and_closes_after_24_hours(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession
) -> None:
    server.window_refusal = "error"

    await server.person_writes(TO, "Hi", at=time.time() - 25 * HOUR)
    assert (await send(http, server, text()))[0] == 400
    await server.person_writes(TO, "Hi again", at=time.time() - 23 * HOUR)
    assert (await send(http, server, text()))[0] == 200
    assert (await send(http, server, text(body="And another")))[0] == 200

    assert [m.body["text"]["body"] for m in server.accepted] == ["Free text", "And another"]
    assert [r.code for r in server.refused] == [131047]


async def test_by_default_a_closed_window_is_reported_as_a_failed_status_after_a_200(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    assert server.window_refusal == "status"

    status, answer = await send(http, server, text(callback="88"))
    await server.settle()

    assert status == 200
    [message] = server.accepted
    assert answer["messages"] == [{"id": message.wamid}]
    assert [r.code for r in server.refused] == [131047]
    [update] = receiver.updates()
    [failed] = update["entry"][0]["changes"][0]["value"]["statuses"]
    assert (failed["id"], failed["status"], failed["recipient_id"]) == (message.wamid, "failed", TO)
    assert failed["biz_opaque_callback_data"] == "88"
    [error] = failed["errors"]
    assert set(error) == {"code", "title", "message", "error_data", "href"}
    assert (error["code"], error["title"]) == (131047, "Re-engagement message")
    read = WhatsAppError.from_dict(error)
    assert isinstance(read, ReEngagementMessage)
    assert read.details == (
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number."
    )


async def test_window_enforcement_is_off_unless_asked_for(http: aiohttp.ClientSession) -> None:
    async with WhatsAppCloudServer(access_token=TOKEN, phone_number_id=PHONE_ID) as server:
        status, _ = await send(http, server, text())

    assert status == 200
    assert server.refused == []


# --- what the stand-in sends ----------------------------------------------------------------


async def test_a_person_writing_posts_the_inbound_message_signed_as_meta_does(
    server: WhatsAppCloudServer, receiver: Receiver, pywa: PywaClient
) -> None:
    await server.person_writes("+" + TO, "hello there", profile_name="Ada")

    [update] = receiver.updates()
    message = PywaMessage.from_update(pywa, update)
    assert message.text == "hello there"
    assert message.from_user.wa_id == TO
    assert message.from_user.bsuid == business_scoped_user_id(TO)
    assert message.from_user.name == "Ada"
    assert [w.status for w in server.webhooks] == [200]
    assert server.window_open(TO)


async def test_a_person_with_a_username_and_no_phone_number_writes(
    server: WhatsAppCloudServer, receiver: Receiver, pywa: PywaClient
) -> None:
    await server.person_writes(None, "hi", username="ada.lovelace", user_id="GB.1815121018521127")

    [update] = receiver.updates()
    [raw] = update["entry"][0]["changes"][0]["value"]["messages"]
    assert "from" not in raw
    assert raw["from_user_id"] == "GB.1815121018521127"
    message = PywaMessage.from_update(pywa, update)
    assert message.from_user.wa_id is None
    assert message.from_user.bsuid == "GB.1815121018521127"
    assert message.from_user.username == "ada.lovelace"


async def test_statuses_carry_biz_opaque_callback_data_only_when_there_is_some(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession, receiver: Receiver, pywa: PywaClient
) -> None:
    await server.person_writes(TO)
    await send(http, server, text(callback="4242"))
    await send(http, server, text(body="No callback", callback=None))
    with_data, without_data = server.accepted

    await server.send_status(with_data.wamid, "delivered")
    await server.send_status(with_data.wamid, "read", with_callback_data=False)
    await server.send_status(without_data.wamid, "delivered")

    statuses = [PywaStatus.from_update(pywa, update) for update in receiver.updates()[1:]]
    assert [(s.id, s.status.value, s.tracker) for s in statuses] == [
        (with_data.wamid, "delivered", "4242"),
        (with_data.wamid, "read", None),
        (without_data.wamid, "delivered", None),
    ]


async def test_a_failed_status_carries_errors_in_metas_shape(
    server: WhatsAppCloudServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await send(http, server, template(component("body", "Ada")))
    [message] = server.accepted

    payload = await server.send_status(message.wamid, "failed", errors=[status_error(131026)])

    [failed] = payload["entry"][0]["changes"][0]["value"]["statuses"]
    [error] = failed["errors"]
    assert set(error) == {"code", "title", "message", "error_data", "href"}
    assert isinstance(WhatsAppError.from_dict(error), MessageUndeliverable)
    assert error["error_data"]["details"]
    assert [w.status for w in server.webhooks] == [200]


def test_one_post_can_carry_statuses_and_messages_together() -> None:
    status = status_payload(PHONE_ID, "wamid.A", "delivered", TO, "1")
    inbound = inbound_payload(PHONE_ID, None, "hi", user_id="US.77")

    side_by_side = batch_payload(status, inbound)
    merged = batch_payload(status, inbound, one_value=True)

    changes = side_by_side["entry"][0]["changes"]
    assert [sorted(k for k in c["value"] if k in ("statuses", "messages")) for c in changes] == [
        ["statuses"],
        ["messages"],
    ]
    [change] = merged["entry"][0]["changes"]
    assert [s["id"] for s in change["value"]["statuses"]] == ["wamid.A"]
    assert [m["from_user_id"] for m in change["value"]["messages"]] == ["US.77"]


# --- Bulletin takes what the stand-in sends -------------------------------------------------


def test_parse_webhook_reads_a_status_without_biz_opaque_callback_data() -> None:
    payload = status_payload(PHONE_ID, "wamid.B", "delivered", TO, None)

    [receipt] = parse_webhook(payload, PHONE_ID).receipts

    assert (receipt.provider_message_id, receipt.delivery_id) == ("wamid.B", None)


def test_parse_webhook_reads_a_message_from_a_username_and_the_statuses_beside_it() -> None:
    # Needs the adapter's tolerant inbound parsing (issue 13, item 3).
    status = status_payload(PHONE_ID, "wamid.C", "read", TO, "5")
    inbound = inbound_payload(PHONE_ID, None, "hi", user_id="US.99", username="ada")

    for payload in (batch_payload(status, inbound), batch_payload(status, inbound, one_value=True)):
        found = parse_webhook(payload, PHONE_ID)
        assert [r.provider_message_id for r in found.receipts] == ["wamid.C"]


async def connect(stack: Stack) -> WhatsAppCloudServer:
    """Point the stand-in's webhooks at the organization's WhatsApp address and turn on
    Meta's window."""
    await stack.configure()
    await post_people(stack.api, ZANELE)
    stack.whatsapp.webhook_url = hook_url(stack, "whatsapp")
    stack.whatsapp.app_secret = WA_SECRET
    stack.whatsapp.enforce_window = True
    return stack.whatsapp


async def test_bulletin_takes_a_status_without_biz_opaque_callback_data(stack: Stack) -> None:
    # Needs the receipt handling to find the delivery by its wamid (issue 13, item 2).
    whatsapp = await connect(stack)
    [sent] = await settled_notification(
        stack.api, await notify(stack.api, "zanele", channels=["whatsapp"])
    )
    [message] = whatsapp.accepted

    await whatsapp.send_status(message.wamid, "delivered", with_callback_data=False)

    assert [w.status for w in whatsapp.webhooks] == [200]
    assert (await delivery(stack, sent["id"]))["state"] == "delivered"


async def test_bulletin_takes_a_username_message_and_the_status_in_the_same_post(
    stack: Stack,
) -> None:
    # Needs the adapter's tolerant inbound parsing (issue 13, item 3).
    whatsapp = await connect(stack)
    [sent] = await settled_notification(
        stack.api, await notify(stack.api, "zanele", channels=["whatsapp"])
    )
    [message] = whatsapp.accepted
    status = await whatsapp.send_status(message.wamid, "read", post=False)
    inbound = inbound_payload(WA_NUMBER_ID, None, "hello", user_id="US.31", username="zanele")

    assert await whatsapp.post(batch_payload(status, inbound, one_value=True)) == 200
    assert (await delivery(stack, sent["id"]))["state"] == "read"


async def test_bulletin_sends_free_text_after_the_person_wrote_and_a_template_otherwise(
    stack: Stack,
) -> None:
    whatsapp = await connect(stack)

    await settled_notification(stack.api, await notify(stack.api, "zanele", channels=["whatsapp"]))
    await whatsapp.person_writes(PHONE, "hello")
    await settled_notification(stack.api, await notify(stack.api, "zanele", channels=["whatsapp"]))

    assert [m.body["type"] for m in whatsapp.accepted] == ["template", "text"]
    assert whatsapp.refused == []


async def test_bulletin_hears_of_a_closed_window_from_the_failed_status(stack: Stack) -> None:
    whatsapp = await connect(stack)
    # Bulletin hears of a message the stand-in never saw, so it thinks the window is open.
    assert await post_whatsapp(stack, inbound_payload(WA_NUMBER_ID, PHONE, "hello")) == 200

    [sent] = await settled_notification(
        stack.api, await notify(stack.api, "zanele", channels=["whatsapp"])
    )
    await whatsapp.settle()

    assert whatsapp.accepted[0].body["type"] == "text"
    assert [r.code for r in whatsapp.refused] == [131047]
    assert [w.status for w in whatsapp.webhooks] == [200]

    async def recorded() -> bool:
        events = (await delivery(stack, sent["id"]))["events"]
        return any("131047" in str(event) for event in events)

    await eventually(recorded)


async def test_a_webhook_nobody_answers_counts_as_failed_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bulletin.devservers.whatsapp._WEBHOOK_TIMEOUT_SECONDS", 0.2)
    stuck = asyncio.Event()

    async def never_answers(request: web.Request) -> web.Response:
        await stuck.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", never_answers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with WhatsAppCloudServer(
            access_token=TOKEN,
            phone_number_id=PHONE_ID,
            webhook_url=f"http://127.0.0.1:{port}/hook",
            app_secret="secret",
        ) as server:
            answer = await asyncio.wait_for(server.post(inbound_payload(PHONE_ID, TO, "hi")), 30)
        assert answer is None
        assert [sent.status for sent in server.webhooks] == [None]
    finally:
        stuck.set()
        await runner.cleanup()
