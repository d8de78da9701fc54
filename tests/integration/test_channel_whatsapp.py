"""The WhatsApp Cloud API adapter against the local Cloud API server, and its webhook posts.

Parsing and signature checks, which need no server, are in ``unit/test_unit_whatsapp_webhooks.py``.

Every test talks HTTP to a real server on 127.0.0.1: what the adapter sends is read back from
the server's ledger, and each failure is produced the way the Cloud API produces it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from bulletin.channels.base import (
    Inbound,
    OutboundMessage,
    Receipt,
    ReportedState,
    WhatsAppTemplate,
)
from bulletin.channels.configs import WhatsAppCloudConfig
from bulletin.channels.whatsapp import (
    SIGNATURE_HEADER,
    WhatsAppCloudProvider,
    parse_webhook,
    verify_signature,
)
from bulletin.devservers.whatsapp import (
    DropAfterAccept,
    GraphError,
    Latency,
    RawAnswer,
    ResetBeforeAccept,
    WhatsAppCloudServer,
    inbound_payload,
    post_webhook,
    status_payload,
)
from bulletin.errors import InDoubtSendError, PermanentSendError, TransientSendError
from support.outbound import outbound_message

TOKEN = "EAAG-test-token-do-not-log"
PHONE_ID = "106540352242922"
APP_SECRET = "app-secret-for-tests"
TO = "+31612345678"


def config(base_url: str, **fields: Any) -> WhatsAppCloudConfig:
    return WhatsAppCloudConfig.model_validate(
        {"phone_number_id": PHONE_ID, "access_token": TOKEN, "base_url": base_url, **fields}
    )


def outbound(
    *,
    delivery_id: int = 4242,
    address: str = TO,
    template: WhatsAppTemplate | None = None,
    **fields: Any,
) -> OutboundMessage:
    return outbound_message(
        "whatsapp", delivery_id=delivery_id, address=address, whatsapp_template=template, **fields
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[WhatsAppCloudServer]:
    async with WhatsAppCloudServer(
        access_token=TOKEN, phone_number_id=PHONE_ID, api_version="v21.0"
    ) as server:
        yield server


@pytest.fixture
def provider(server: WhatsAppCloudServer, session: aiohttp.ClientSession) -> WhatsAppCloudProvider:
    return WhatsAppCloudProvider(config(server.base_url), session)


# --- sending --------------------------------------------------------------------------------


def test_provider_identity_comes_from_its_configuration(
    provider: WhatsAppCloudProvider,
) -> None:
    assert provider.name == "whatsapp_cloud"
    assert provider.deduplicates is False
    assert provider.account == f"whatsapp:{PHONE_ID}"
    assert provider.rate_per_second == 80.0
    assert provider.pair_interval_seconds == 6.0


async def test_text_message_arrives_as_cloud_api_json(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    accepted = await provider.send(outbound())

    [message] = server.accepted
    assert accepted.provider_message_id == message.wamid
    assert message.wamid.startswith("wamid.")
    assert message.to == "31612345678"
    assert message.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "31612345678",
        "biz_opaque_callback_data": "4242",
        "type": "text",
        "text": {
            "preview_url": False,
            "body": "*Water outage*\n\nNo water on Elm Street until 15:00.",
        },
    }


async def test_text_without_title_is_just_the_body(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    await provider.send(outbound(title="", body="Reply STOP to stop."))

    assert server.accepted[0].body["text"] == {"preview_url": False, "body": "Reply STOP to stop."}


async def test_each_send_gets_its_own_wamid(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    first = await provider.send(outbound(delivery_id=1))
    second = await provider.send(outbound(delivery_id=2))

    assert first.provider_message_id != second.provider_message_id
    assert [m.body["biz_opaque_callback_data"] for m in server.accepted] == ["1", "2"]


async def test_template_message_with_parameters(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    template = WhatsAppTemplate("outage_notice", "en_US", ("Ada", "Elm Street"))

    accepted = await provider.send(outbound(template=template))

    [message] = server.accepted
    assert accepted.provider_message_id == message.wamid
    assert message.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "31612345678",
        "biz_opaque_callback_data": "4242",
        "type": "template",
        "template": {
            "name": "outage_notice",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Ada"},
                        {"type": "text", "text": "Elm Street"},
                    ],
                }
            ],
        },
    }


async def test_template_without_parameters_has_no_components(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    await provider.send(outbound(template=WhatsAppTemplate("hello_world", "en")))

    assert server.accepted[0].body["template"] == {
        "name": "hello_world",
        "language": {"code": "en"},
    }


async def test_status_webhook_names_the_delivery_that_was_sent(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    accepted = await provider.send(outbound(delivery_id=987654321))
    [message] = server.accepted

    payload = status_payload(
        PHONE_ID,
        message.wamid,
        "delivered",
        message.to,
        callback_data=message.body["biz_opaque_callback_data"],
        timestamp=1_700_000_000,
    )
    [receipt] = parse_webhook(payload).receipts

    assert receipt == Receipt(
        provider_message_id=accepted.provider_message_id,
        delivery_id=987654321,
        state=ReportedState.DELIVERED,
        at=dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC),
    )


# --- errors ---------------------------------------------------------------------------------


# Throughput is counted per second: a longer pause would cost the account seconds of its
# whole rate for one send that reached Meta a little late.
@pytest.mark.parametrize(("code", "pause"), [(130429, 1.0), (4, 5.0), (80007, 5.0), (131048, 60.0)])
async def test_rate_limits_slow_the_whole_account(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider, code: int, pause: float
) -> None:
    server.fail_next(code=code)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.slow_down is True
    assert caught.value.retry_after == pause
    assert str(code) in caught.value.detail
    assert server.accepted == []


async def test_rate_limit_honours_retry_after(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    server.fail_next(code=130429, retry_after=12)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.slow_down is True
    assert caught.value.retry_after == 12.0


@pytest.mark.parametrize(("pair_interval", "expected"), [(6.0, 6.0), (10.0, 10.0), (0.0, 6.0)])
async def test_pair_rate_limit_delays_only_this_message(
    server: WhatsAppCloudServer,
    session: aiohttp.ClientSession,
    pair_interval: float,
    expected: float,
) -> None:
    provider = WhatsAppCloudProvider(
        config(server.base_url, pair_interval_seconds=pair_interval), session
    )
    server.fail_next(code=131056)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.slow_down is False
    assert caught.value.retry_after == expected


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (131026, "Message undeliverable."),
        (131030, "Recipient phone number not in allowed list"),
        (131047, "More than 24 hours have passed since the recipient last replied."),
        (131051, "Message type is not currently supported."),
        (132000, "Number of parameters does not match."),
        (132001, "template name (outage_notice) does not exist in en_US"),
        (132005, "Translated text too long"),
        (132007, "Template format character policy violated"),
        (132012, "Parameter format does not match"),
        (100, "Invalid 'to' parameter."),
        (131999, "A code this adapter does not know, answered with 400"),
    ],
)
async def test_refusals_are_permanent_without_suppressing_the_address(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider, code: int, details: str
) -> None:
    server.fail_next(code=code, details=details)

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(outbound())

    assert caught.value.suppress_address is False
    assert f"code {code}" in caught.value.detail
    assert details in caught.value.detail


@pytest.mark.parametrize("code", [190, 10, 200])
async def test_account_problems_pause_the_account_and_are_logged_loudly(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider, code: int
) -> None:
    server.fail_next(code=code)

    with capture_logs() as logs, pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.retry_after == 60.0
    assert caught.value.slow_down is True
    [event] = [e for e in logs if e["event"] == "whatsapp.account_problem"]
    assert event["log_level"] == "error"
    assert event["code"] == code
    assert TOKEN not in repr(logs)


async def test_a_wrong_token_is_an_account_problem_not_a_refusal(
    server: WhatsAppCloudServer, session: aiohttp.ClientSession
) -> None:
    provider = WhatsAppCloudProvider(
        config(server.base_url, access_token="EAAG-expired-token"), session
    )

    with capture_logs() as logs, pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.retry_after == 60.0
    assert caught.value.slow_down is True
    assert "190" in caught.value.detail
    assert any(e["event"] == "whatsapp.account_problem" for e in logs)
    assert "EAAG-expired-token" not in repr(logs)


async def test_a_wrong_phone_number_id_is_an_account_problem(
    server: WhatsAppCloudServer, session: aiohttp.ClientSession
) -> None:
    provider = WhatsAppCloudProvider(
        config(server.base_url, phone_number_id="999999999999999"), session
    )

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.retry_after == 60.0
    assert caught.value.slow_down is True


@pytest.mark.parametrize(("code", "status"), [(131000, 500), (2, 503), (131016, 503)])
async def test_server_errors_are_transient(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider, code: int, status: int
) -> None:
    server.fail_next(code=code, http_status=status)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.slow_down is False
    assert caught.value.retry_after is None
    assert f"answered {status}" in caught.value.detail


async def test_server_error_honours_retry_after(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    server.fail_next(code=131000, http_status=503, retry_after=7)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.retry_after == 7.0
    assert caught.value.slow_down is False


async def test_a_proxy_error_page_is_transient(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    server.inject(RawAnswer(status=502, accept=False))

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert "502" in caught.value.detail


async def test_a_retry_after_the_fault_succeeds(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    server.fail_next(2, code=131000, http_status=500)

    for _ in range(2):
        with pytest.raises(TransientSendError):
            await provider.send(outbound())
    accepted = await provider.send(outbound())

    assert [m.wamid for m in server.accepted] == [accepted.provider_message_id]


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe is closed.
    provider = WhatsAppCloudProvider(config(f"http://127.0.0.1:{port}"), session)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(outbound())

    assert caught.value.slow_down is False


async def test_drop_after_accept_is_in_doubt(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    server.inject(DropAfterAccept())

    with pytest.raises(InDoubtSendError):
        await provider.send(outbound())

    assert len(server.accepted) == 1


async def test_reset_before_accept_is_in_doubt_too(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    # The client cannot tell the two apart: the request went out and no answer came.
    server.inject(ResetBeforeAccept())

    with pytest.raises(InDoubtSendError):
        await provider.send(outbound())

    assert server.accepted == []


async def test_a_slow_answer_hits_the_engines_timeout(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    server.inject(Latency(30.0))

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await provider.send(outbound())

    # The Cloud API had taken it: this is why a timeout after sending is "in doubt".
    assert len(server.accepted) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"messaging_product": "whatsapp", "messages": []}',
        b'{"messaging_product": "whatsapp", "messages": [{"id": 42}]}',
        b"[]",
    ],
)
async def test_an_unreadable_success_is_in_doubt(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider, body: bytes
) -> None:
    server.inject(RawAnswer(status=200, body=body, content_type="application/json"))

    with pytest.raises(InDoubtSendError):
        await provider.send(outbound())

    assert len(server.accepted) == 1


async def test_a_script_decides_per_request(
    server: WhatsAppCloudServer, provider: WhatsAppCloudProvider
) -> None:
    def refuse_one_number(body: dict[str, Any]) -> GraphError | None:
        return GraphError(131026) if body["to"] == "31600000000" else None

    server.script = refuse_one_number

    await provider.send(outbound(address="+31611111111"))
    with pytest.raises(PermanentSendError):
        await provider.send(outbound(address="+31600000000"))

    assert [m.to for m in server.accepted] == ["31611111111"]
    assert [(r.to, r.code) for r in server.refused] == [("31600000000", 131026)]


async def test_pair_interval_enforcement_reports_a_second_message_to_one_person(
    session: aiohttp.ClientSession,
) -> None:
    async with WhatsAppCloudServer(
        access_token=TOKEN, phone_number_id=PHONE_ID, pair_interval=3600
    ) as server:
        provider = WhatsAppCloudProvider(config(server.base_url), session)
        await provider.send(outbound(address="+31611111111"))
        await provider.send(outbound(address="+31622222222"))
        with pytest.raises(TransientSendError) as caught:
            await provider.send(outbound(address="+31611111111"))

    assert caught.value.slow_down is False
    assert "131056" in caught.value.detail
    assert len(server.sent_to("+31611111111")) == 1
    assert [r.code for r in server.refused] == [131056]


async def test_throughput_enforcement_refuses_a_burst(session: aiohttp.ClientSession) -> None:
    async with WhatsAppCloudServer(
        access_token=TOKEN, phone_number_id=PHONE_ID, max_per_second=2
    ) as server:
        provider = WhatsAppCloudProvider(config(server.base_url), session)
        results = await asyncio.gather(
            *(provider.send(outbound(address=f"+3161111{n:04d}")) for n in range(10)),
            return_exceptions=True,
        )

    refused = [r for r in results if isinstance(r, TransientSendError)]
    assert refused
    assert all(r.slow_down for r in refused)
    assert len(server.accepted) + len(refused) == 10


# --- the server's own validation ------------------------------------------------------------


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: object,
    token: str | None = TOKEN,
) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


def _messages_url(server: WhatsAppCloudServer, phone_id: str = PHONE_ID) -> str:
    return f"{server.base_url}/v21.0/{phone_id}/messages"


async def test_server_answers_success_like_the_cloud_api(
    server: WhatsAppCloudServer, session: aiohttp.ClientSession
) -> None:
    text = {"preview_url": False, "body": "hi"}
    body = {"messaging_product": "whatsapp", "to": "+31612345678", "type": "text", "text": text}

    status, answer = await _post(session, _messages_url(server), body)

    assert status == 200
    assert answer == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "+31612345678", "wa_id": "31612345678"}],
        "messages": [{"id": server.accepted[0].wamid}],
    }


async def test_server_marks_template_sends_accepted(
    server: WhatsAppCloudServer, session: aiohttp.ClientSession
) -> None:
    template = {"name": "hello_world", "language": {"code": "en_US"}}
    body = {"messaging_product": "whatsapp", "to": "31612345678", "type": "template"}

    status, answer = await _post(session, _messages_url(server), {**body, "template": template})

    assert status == 200
    assert answer["messages"] == [{"id": server.accepted[0].wamid, "message_status": "accepted"}]


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_server_refuses_a_bad_token_with_190(
    server: WhatsAppCloudServer, session: aiohttp.ClientSession, token: str | None
) -> None:
    body = {"messaging_product": "whatsapp", "to": "31612345678", "text": {"body": "hi"}}

    status, answer = await _post(session, _messages_url(server), body, token=token)

    assert status == 401
    assert answer["error"]["code"] == 190
    assert answer["error"]["type"] == "OAuthException"
    assert "fbtrace_id" in answer["error"]
    assert server.accepted == []


@pytest.mark.parametrize(
    "body",
    [
        {"to": "31612345678", "type": "text", "text": {"body": "hi"}},
        {"messaging_product": "whatsapp", "type": "text", "text": {"body": "hi"}},
        {"messaging_product": "whatsapp", "to": "not-a-number", "text": {"body": "hi"}},
        {"messaging_product": "whatsapp", "to": "31612345678", "type": "text"},
        {"messaging_product": "whatsapp", "to": "31612345678", "text": {"body": ""}},
        {"messaging_product": "whatsapp", "to": "31612345678", "type": "sticker"},
        {"messaging_product": "whatsapp", "to": "31612345678", "type": "template"},
        {
            "messaging_product": "whatsapp",
            "to": "31612345678",
            "type": "template",
            "template": {"name": "hello_world"},
        },
        ["not", "an", "object"],
    ],
)
async def test_server_refuses_a_malformed_message_with_100(
    server: WhatsAppCloudServer, session: aiohttp.ClientSession, body: object
) -> None:
    status, answer = await _post(session, _messages_url(server), body)

    assert status == 400
    assert answer["error"]["code"] == 100
    assert server.accepted == []


async def test_server_refuses_an_unknown_phone_number_id(
    server: WhatsAppCloudServer, session: aiohttp.ClientSession
) -> None:
    body = {"messaging_product": "whatsapp", "to": "31612345678", "text": {"body": "hi"}}

    status, answer = await _post(session, _messages_url(server, "123"), body)

    assert status == 400
    assert answer["error"]["code"] == 100
    assert answer["error"]["error_subcode"] == 33


async def test_server_refuses_templates_it_does_not_know(session: aiohttp.ClientSession) -> None:
    async with WhatsAppCloudServer(
        access_token=TOKEN, phone_number_id=PHONE_ID, templates={"hello_world"}
    ) as server:
        provider = WhatsAppCloudProvider(config(server.base_url), session)
        await provider.send(outbound(template=WhatsAppTemplate("hello_world", "en")))
        with pytest.raises(PermanentSendError) as caught:
            await provider.send(outbound(template=WhatsAppTemplate("no_such_template", "en")))

    assert "132001" in caught.value.detail
    assert len(server.accepted) == 1


# --- webhook signatures ---------------------------------------------------------------------


async def test_post_webhook_signs_what_it_sends(session: aiohttp.ClientSession) -> None:
    received: list[tuple[bool, Any]] = []

    async def endpoint(request: web.Request) -> web.Response:
        raw = await request.read()
        valid = verify_signature(APP_SECRET, raw, request.headers.get(SIGNATURE_HEADER))
        received.append((valid, parse_webhook(await request.json())))
        return web.Response(status=200 if valid else 401)

    app = web.Application()
    app.router.add_post("/webhooks/whatsapp", endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/whatsapp"
        payload = inbound_payload(PHONE_ID, TO, "Grüße, STOP", timestamp=1_700_000_000)

        good = await post_webhook(session, url, payload, APP_SECRET)
        bad = await post_webhook(session, url, payload, "not-the-app-secret")
    finally:
        await runner.cleanup()

    assert (good, bad) == (200, 401)
    assert received[0][1].inbound == [
        Inbound(
            channel="whatsapp",
            address=TO,
            text="Grüße, STOP",
            at=dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC),
            provider_id=payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"],
        )
    ]
