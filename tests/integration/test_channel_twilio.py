"""The Twilio SMS adapter against the local Twilio server, and Twilio's webhooks.

No database: the adapter talks HTTP to :class:`TwilioServer` on 127.0.0.1, and webhooks go from
the server to a small receiver standing in for Bulletin's endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
import pytest
from aiohttp import web

from bulletin.channels.base import OutboundMessage, ReportedState
from bulletin.channels.configs import TwilioConfig
from bulletin.channels.twilio import (
    TwilioProvider,
    inbound_reply,
    parse_inbound,
    parse_status,
    verify_signature,
)
from bulletin.devservers.twilio import Fault, TwilioServer
from bulletin.errors import InDoubtSendError, PermanentSendError, TransientSendError
from support.outbound import outbound_message

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "auth-token-0f1e2d3c4b5a"
SERVICE = "MG" + "ab" * 16
SENDER = "+14155552671"
RECIPIENT = "+27821234567"
CALLBACK = "https://bulletin.example.org/v1/webhooks/twilio/default"


def make_config(base_url: str, **changes: Any) -> TwilioConfig:
    values: dict[str, Any] = {
        "account_sid": SID,
        "auth_token": TOKEN,
        "from_number": SENDER,
        "base_url": base_url,
    }
    return TwilioConfig.model_validate(values | changes)


def make_message(delivery_id: int = 42, **fields: Any) -> OutboundMessage:
    return outbound_message("sms", delivery_id=delivery_id, address=RECIPIENT, **fields)


@pytest.fixture
async def server() -> AsyncIterator[TwilioServer]:
    async with TwilioServer(account_sid=SID, auth_token=TOKEN) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def provider(server: TwilioServer, session: aiohttp.ClientSession) -> TwilioProvider:
    return TwilioProvider(make_config(server.base_url), session, status_callback_url=CALLBACK)


# --- sending -------------------------------------------------------------------------------


async def test_a_send_posts_exactly_twilios_form_fields(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    accepted = await provider.send(make_message(42))

    [sms] = server.accepted
    assert sms.params == {
        "To": RECIPIENT,
        "From": SENDER,
        "Body": "Water outage\nNo water until 14:00.",
        "StatusCallback": f"{CALLBACK}?delivery=42",
    }
    assert accepted.provider_message_id == sms.sid
    assert sms.sid.startswith("SM")
    assert len(sms.sid) == 34


async def test_the_provider_describes_its_account(provider: TwilioProvider) -> None:
    assert provider.name == "twilio"
    assert provider.deduplicates is False
    assert provider.account == f"twilio:{SID}:{SENDER}"
    assert provider.rate_per_second == 10.0


async def test_a_messaging_service_is_sent_instead_of_a_from_number(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    config = make_config(
        server.base_url, from_number=None, messaging_service_sid=SERVICE, rate_per_second=3.0
    )
    provider = TwilioProvider(config, session)

    await provider.send(make_message(title=""))

    [sms] = server.accepted
    assert sms.params == {
        "To": RECIPIENT,
        "MessagingServiceSid": SERVICE,
        "Body": "No water until 14:00.",
    }
    assert provider.account == f"twilio:{SID}:{SERVICE}"
    assert provider.rate_per_second == 3.0


async def test_the_delivery_id_joins_a_callback_url_that_has_a_query(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    provider = TwilioProvider(
        make_config(server.base_url), session, status_callback_url=f"{CALLBACK}?org=7"
    )

    await provider.send(make_message(9001))

    assert server.accepted[0].status_callback == f"{CALLBACK}?org=7&delivery=9001"


async def test_sends_reuse_the_session_one_after_another(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    sids = [(await provider.send(make_message(n))).provider_message_id for n in range(5)]

    assert sids == [sms.sid for sms in server.accepted]
    assert len(set(sids)) == 5
    assert [sms.status_callback for sms in server.accepted] == [
        f"{CALLBACK}?delivery={n}" for n in range(5)
    ]


async def test_a_config_without_an_auth_token_is_refused(session: aiohttp.ClientSession) -> None:
    config = make_config("http://127.0.0.1:9", auth_token=None)

    with pytest.raises(ValueError, match="auth_token"):
        TwilioProvider(config, session)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status"),
    [(21211, 400), (21614, 400), (21612, 400), (21408, 400), (21606, 400)],
)
async def test_an_unreachable_address_is_permanent_and_not_suppressed(
    provider: TwilioProvider, server: TwilioServer, code: int, http_status: int
) -> None:
    server.fail_next(1, code, http_status)

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(make_message())

    assert caught.value.suppress_address is False
    assert str(code) in caught.value.detail
    assert server.accepted == []


async def test_a_recipient_who_replied_stop_is_permanent_and_suppressed(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.fail_next(1, 21610, 400)

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(make_message())

    assert caught.value.suppress_address is True
    assert "21610" in caught.value.detail


async def test_any_other_client_error_is_permanent_with_code_and_message(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.inject(Fault.error(21617, 400, message="The concatenated message body is too long"))

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(make_message())

    assert "21617" in caught.value.detail
    assert "too long" in caught.value.detail
    assert caught.value.suppress_address is False


@pytest.mark.parametrize(("code", "http_status"), [(20429, 429), (20429, 400), (None, 429)])
async def test_rate_limits_slow_the_whole_account_for_a_second_by_default(
    provider: TwilioProvider, server: TwilioServer, code: int | None, http_status: int
) -> None:
    server.inject(Fault.error(code or 20001, http_status))

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is True
    assert caught.value.retry_after == 1.0


async def test_retry_after_of_a_rate_limit_is_honoured(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.fail_next(1, 20429, 429, retry_after=7)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is True
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize(("code", "http_status"), [(20003, 401), (20404, 404)])
async def test_account_problems_pause_the_account_instead_of_failing_messages(
    provider: TwilioProvider, server: TwilioServer, code: int, http_status: int
) -> None:
    server.fail_next(1, code, http_status)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is True
    assert caught.value.retry_after == 60.0


async def test_a_wrong_auth_token_is_an_account_problem_and_is_not_revealed(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    provider = TwilioProvider(make_config(server.base_url, auth_token="not-the-token"), session)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.retry_after == 60.0
    assert caught.value.slow_down is True
    assert "20003" in caught.value.detail
    assert "not-the-token" not in caught.value.detail
    assert server.accepted == []


async def test_an_unknown_account_is_an_account_problem(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    other = "AC" + "f" * 32
    provider = TwilioProvider(make_config(server.base_url, account_sid=other), session)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    # The server knows no such account's credentials, which Twilio answers with 20003 too.
    assert caught.value.retry_after == 60.0
    assert caught.value.slow_down is True


@pytest.mark.parametrize(("retry_after", "expected"), [(None, None), (12, 12.0)])
async def test_a_server_error_is_transient_and_honours_retry_after(
    provider: TwilioProvider,
    server: TwilioServer,
    retry_after: float | None,
    expected: float | None,
) -> None:
    server.fail_next(1, 20500, 503, retry_after=retry_after)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.retry_after == expected
    assert caught.value.slow_down is False


async def test_after_a_failure_the_next_send_goes_through(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.fail_next(2, 20500, 500)

    for _ in range(2):
        with pytest.raises(TransientSendError):
            await provider.send(make_message())
    accepted = await provider.send(make_message())

    assert [sms.sid for sms in server.accepted] == [accepted.provider_message_id]


async def test_a_refused_connection_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    provider = TwilioProvider(make_config(f"http://127.0.0.1:{port}"), session)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is False


async def test_a_connection_not_made_in_time_is_transient_not_a_timeout(
    session: aiohttp.ClientSession,
) -> None:
    # A listener whose accept queue is full lets new connections hang in the handshake.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(address)
            provider = TwilioProvider(
                make_config(f"http://127.0.0.1:{address[1]}"), session, connect_timeout=0.2
            )

            with pytest.raises(TransientSendError) as caught:
                async with asyncio.timeout(30):
                    await provider.send(make_message())
        finally:
            for filler in fillers:
                filler.close()

    assert caught.value.slow_down is False


async def test_a_connection_dropped_after_accepting_is_in_doubt(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.inject(Fault.drop_after_accept())

    with pytest.raises(InDoubtSendError):
        await provider.send(make_message(7))

    # Twilio did take it: that is why the engine must not resend it blindly.
    assert [sms.status_callback for sms in server.accepted] == [f"{CALLBACK}?delivery=7"]


async def test_a_connection_reset_after_the_request_went_out_is_in_doubt(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.inject(Fault.reset_before_accept())

    with pytest.raises(InDoubtSendError):
        await provider.send(make_message())

    assert server.accepted == []


async def test_an_unreadable_success_is_in_doubt(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.inject(Fault.garble_after_accept())

    with pytest.raises(InDoubtSendError):
        await provider.send(make_message())

    assert len(server.accepted) == 1


async def test_a_slow_twilio_runs_into_the_engines_timeout(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.inject(Fault.latency(60))

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await provider.send(make_message())

    assert server.accepted == []


async def test_a_slow_twilio_that_answers_in_time_is_fine(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    server.inject(Fault.latency(0.05))

    async with asyncio.timeout(30):
        accepted = await provider.send(make_message())

    assert accepted.provider_message_id == server.accepted[0].sid


async def test_the_servers_rate_limit_is_seen_as_an_account_slow_down(
    session: aiohttp.ClientSession,
) -> None:
    async with TwilioServer(account_sid=SID, auth_token=TOKEN, max_per_second=1) as server:
        provider = TwilioProvider(make_config(server.base_url), session)

        outcomes = await asyncio.gather(
            *(provider.send(make_message(n)) for n in range(5)), return_exceptions=True
        )

    refused = [o for o in outcomes if isinstance(o, TransientSendError)]
    # Five sends at once cannot all fit in a limit of one per second.
    assert refused
    assert all(error.slow_down for error in refused)
    assert server.rate_limited == len(refused)
    assert len(server.accepted) + len(refused) == 5


# --- the server's own validation -----------------------------------------------------------


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


async def post_raw(
    session: aiohttp.ClientSession,
    server: TwilioServer,
    form: dict[str, str],
    *,
    auth: str | None = None,
    account: str = SID,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": auth if auth is not None else basic(SID, TOKEN)}
    url = f"{server.base_url}/2010-04-01/Accounts/{account}/Messages.json"
    async with session.post(url, data=form, headers=headers) as response:
        return response.status, await response.json()


GOOD_FORM = {"To": RECIPIENT, "From": SENDER, "Body": "hello"}


@pytest.mark.parametrize(
    "auth", [basic(SID, "wrong"), basic("AC" + "1" * 32, TOKEN), "Bearer x", "Basic !!!", ""]
)
async def test_the_server_answers_bad_credentials_with_20003(
    server: TwilioServer, session: aiohttp.ClientSession, auth: str
) -> None:
    status, payload = await post_raw(session, server, GOOD_FORM, auth=auth)

    assert status == 401
    assert payload == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert server.accepted == []


async def test_the_server_answers_another_accounts_path_with_20404(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    status, payload = await post_raw(session, server, GOOD_FORM, account="AC" + "2" * 32)

    assert (status, payload["code"], payload["status"]) == (404, 20404, 404)


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": SENDER, "Body": "hello"}, 21604),
        ({"To": "0821234567", "From": SENDER, "Body": "hello"}, 21211),
        ({"To": "+0821234567", "From": SENDER, "Body": "hello"}, 21211),
        ({"To": RECIPIENT, "Body": "hello"}, 21603),
        ({"To": RECIPIENT, "From": SENDER}, 21602),
        ({"To": RECIPIENT, "From": SENDER, "Body": ""}, 21602),
    ],
)
async def test_the_server_validates_like_twilio(
    server: TwilioServer, session: aiohttp.ClientSession, form: dict[str, str], code: int
) -> None:
    status, payload = await post_raw(session, server, form)

    assert status == 400
    assert payload["code"] == code
    assert payload["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert server.accepted == []


async def test_the_server_answers_a_message_resource(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    status, payload = await post_raw(session, server, GOOD_FORM)

    assert status == 201
    sid = server.accepted[0].sid
    assert payload["sid"] == sid
    assert payload["account_sid"] == SID
    assert (payload["to"], payload["from"], payload["body"]) == (RECIPIENT, SENDER, "hello")
    assert payload["status"] == "queued"
    assert payload["direction"] == "outbound-api"
    assert payload["api_version"] == "2010-04-01"
    assert payload["num_segments"] == "1"
    assert payload["error_code"] is None
    assert payload["uri"] == f"/2010-04-01/Accounts/{SID}/Messages/{sid}.json"
    # RFC 2822, as Twilio writes it: "Thu, 24 Aug 2023 05:01:45 +0000".
    created = dt.datetime.strptime(payload["date_created"], "%a, %d %b %Y %H:%M:%S %z")
    assert created.utcoffset() == dt.timedelta(0)


async def test_the_server_counts_segments_like_a_carrier(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    bodies = {"a" * 160: "1", "a" * 161: "2", "é" * 160: "1", "ж" * 70: "1", "ж" * 71: "2"}
    for body, segments in bodies.items():
        _, payload = await post_raw(session, server, GOOD_FORM | {"Body": body})
        assert payload["num_segments"] == segments, body[:3]


async def test_the_script_decides_per_request_from_the_form(
    provider: TwilioProvider, server: TwilioServer
) -> None:
    def script(form: dict[str, str]) -> Fault | None:
        return Fault.error(21610) if form["StatusCallback"].endswith("=2") else None

    server.script = script

    await provider.send(make_message(1))
    with pytest.raises(PermanentSendError):
        await provider.send(make_message(2))
    await provider.send(make_message(3))

    assert [sms.status_callback for sms in server.accepted] == [
        f"{CALLBACK}?delivery=1",
        f"{CALLBACK}?delivery=3",
    ]


# --- webhooks from the server to a receiver -------------------------------------------------


@dataclass
class Received:
    url: str
    params: dict[str, str]
    signature: str | None
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Bulletin's webhook endpoints, reduced to recording what arrives and answering TwiML."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.received.append(
            Received(
                url=str(request.url),
                params={name: str(value) for name, value in form.items()},
                signature=request.headers.get("X-Twilio-Signature"),
                headers=dict(request.headers),
            )
        )
        inbound = parse_inbound(self.received[-1].params)
        reply = inbound_reply(f"You said <{inbound.text}> & we heard" if inbound else None)
        return web.Response(text=reply, content_type="text/xml")

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/v1/webhooks/twilio", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as receiver:
        yield receiver


async def test_a_status_callback_is_signed_and_names_the_delivery(
    server: TwilioServer, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    provider = TwilioProvider(
        make_config(server.base_url),
        session,
        status_callback_url=f"{receiver.base_url}/v1/webhooks/twilio",
    )
    accepted = await provider.send(make_message(77))

    reply = await server.send_status(session, accepted.provider_message_id, "delivered")

    assert reply.status == 200
    [hook] = receiver.received
    assert hook.url == f"{receiver.base_url}/v1/webhooks/twilio?delivery=77"
    assert hook.params == {
        "AccountSid": SID,
        "MessageSid": accepted.provider_message_id,
        "SmsSid": accepted.provider_message_id,
        "MessageStatus": "delivered",
        "SmsStatus": "delivered",
        "To": RECIPIENT,
        "From": SENDER,
        "ApiVersion": "2010-04-01",
    }
    assert verify_signature(TOKEN, hook.url, hook.params, hook.signature)
    receipt = parse_status(hook.params, 77)
    assert receipt is not None
    assert receipt.state is ReportedState.DELIVERED
    assert receipt.provider_message_id == accepted.provider_message_id
    assert receipt.delivery_id == 77


async def test_a_failed_status_callback_carries_the_error_code(
    server: TwilioServer, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    provider = TwilioProvider(
        make_config(server.base_url),
        session,
        status_callback_url=f"{receiver.base_url}/v1/webhooks/twilio",
    )
    accepted = await provider.send(make_message(78))

    await server.send_status(session, accepted.provider_message_id, "undelivered", 21610)

    [hook] = receiver.received
    assert hook.params["ErrorCode"] == "21610"
    assert verify_signature(TOKEN, hook.url, hook.params, hook.signature)
    assert not verify_signature("other-token", hook.url, hook.params, hook.signature)
    receipt = parse_status(hook.params, 78)
    assert receipt is not None
    assert receipt.state is ReportedState.FAILED
    assert receipt.suppress_address is True


async def test_an_inbound_message_is_signed_and_answered_with_twiml(
    server: TwilioServer, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    url = f"{receiver.base_url}/v1/webhooks/twilio"

    reply = await server.send_inbound(session, url, from_=RECIPIENT, to=SENDER, body="STOP")

    [hook] = receiver.received
    assert hook.url == url
    assert verify_signature(TOKEN, url, hook.params, hook.signature)
    assert hook.params["SmsStatus"] == "received"
    assert hook.params["NumMedia"] == "0"
    assert hook.params["MessageSid"].startswith("SM")
    inbound = parse_inbound(hook.params)
    assert inbound is not None
    assert (inbound.channel, inbound.address, inbound.text) == ("sms", RECIPIENT, "STOP")
    assert reply.status == 200
    assert reply.content_type == "text/xml"
    assert reply.body == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Message>You said &lt;STOP&gt; &amp; we heard</Message></Response>"
    )


async def test_a_status_for_a_message_sent_without_callback_cannot_be_posted(
    provider: TwilioProvider, server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    plain = TwilioProvider(make_config(server.base_url), session)
    accepted = await plain.send(make_message())

    with pytest.raises(ValueError, match="StatusCallback"):
        await server.send_status(session, accepted.provider_message_id, "sent")
    with pytest.raises(KeyError):
        await server.send_status(session, "SM" + "9" * 32, "sent")
