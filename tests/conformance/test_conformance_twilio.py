"""Twilio, held against Twilio's own Python package (``twilio`` 9.13.0) as the oracle.

* Every callback Bulletin must accept is signed here by the package's ``RequestValidator``:
  status callbacks (``?delivery=``) and inbound SMS, with the auth token (HMAC-SHA1) and with a
  SharedKey (HMAC-SHA256 or HMAC-SHA1, announced in ``X-Twilio-Webhooks-Signature-Settings``),
  over the URL as Bulletin gave it, with its default port written out and without its port, and
  posted to Bulletin's real webhook endpoint. What the package refuses, Bulletin refuses (401,
  and nothing changes).
* Every create request Bulletin sends is compared, field by field, with the one the package's
  ``Client(...).messages.create(...)`` builds for the same message, caught at the package's HTTP
  client (nothing is sent anywhere).
* The Twilio stand-in refuses what Twilio refuses, with Twilio's codes and an error body the
  package reads, and signs its webhooks in each way Twilio does.

Twilio's documents: https://www.twilio.com/docs/usage/webhooks/webhooks-security,
https://www.twilio.com/docs/usage/webhooks/webhook-shared-keys,
https://www.twilio.com/docs/messaging/api/message-resource and the error pages
https://www.twilio.com/docs/api/errors/{code}.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse, urlsplit

import aiohttp
import httpx
import pytest
import structlog
from sqlalchemy import select, update
from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    add_port,
    get_signature_algorithm,
    remove_port,
)
from twilio.rest import Client

from bulletin.channels import twilio as bulletin_twilio
from bulletin.channels.accounts import webhook_path
from bulletin.channels.base import OutboundMessage
from bulletin.channels.configs import TwilioConfig
from bulletin.channels.twilio import TwilioProvider
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery
from bulletin.devservers.twilio import SharedKey, SignedUrl, TwilioServer
from bulletin.messages.models import Message
from bulletin.orgs.keys import Scope
from bulletin.providers.models import ChannelConfig
from bulletin.recipients.models import Recipient
from conftest import Api, make_settings
from e2e.stack import serve, served_settings
from integration.test_channel_twilio import Receiver
from support.http import body_of
from support.http_factories import notify, person_json, post_people
from support.outbound import outbound_message
from support.processes import free_port

SID = "AC" + "c0ffee" * 5 + "c0"
TOKEN = "conformance-auth-token"
SIGNING_KEY = "conformance-shared-key-secret"
KEY_ID = "webhooks_sharedkey_" + "0123456789abcdef" * 2
SENDER = "+14155550100"
SERVICE = "MG" + "ab" * 16
RECIPIENT = "+27821234567"
CALLBACK = "https://bulletin.example.org/v1/webhooks/twilio/default"
TWILIO_API = "https://api.twilio.com"
SMS_SID = "SM" + "5" * 32
PUBLIC_URL = "https://bulletin.example.org"
FORM = "application/x-www-form-urlencoded"


# --- signatures: Bulletin's against the package's ---------------------------------------------

URLS = [
    "https://bulletin.example.org/v1/webhooks/twilio/default?delivery=42",
    "https://bulletin.example.org:443/v1/webhooks/twilio/default?delivery=42",
    "http://bulletin.test/v1/webhooks/twilio/default",
    "http://bulletin.test:80/v1/webhooks/twilio/default?delivery=7&x=%20y",
    "https://bulletin.example.org:8443/v1/webhooks/twilio/3f1c?delivery=1",
    "http://127.0.0.1:8101/v1/webhooks/twilio/default?delivery=9",
    "https://[2001:db8::1]:443/v1/webhooks/twilio/default?delivery=3",
]
PARAMS = {
    "AccountSid": SID,
    "MessageSid": SMS_SID,
    "MessageStatus": "delivered",
    "To": RECIPIENT,
    "Body": "Ünïcode ✓ & = + % 😀\nsecond line\t",
    "ApiVersion": "2010-04-01",
}


def package_forms(url: str) -> list[str]:
    """The forms of ``url`` the package's validator checks a signature against."""
    parsed = urlparse(url)
    return [url, add_port(parsed), remove_port(parsed)]


@pytest.mark.parametrize("algorithm", [HMAC_SHA1, HMAC_SHA256])
@pytest.mark.parametrize("url", URLS)
def test_bulletins_signature_is_the_packages(url: str, algorithm: str) -> None:
    assert bulletin_twilio.signature(TOKEN, url, PARAMS, algorithm) == RequestValidator(
        TOKEN
    ).compute_signature(url, PARAMS, algorithm)


# The package's remove_port cuts an IPv6 literal at its first colon ("https://[2001/..."), a URL
# Twilio never signs, so those are left to the test above.
@pytest.mark.parametrize("algorithm", [HMAC_SHA1, HMAC_SHA256])
@pytest.mark.parametrize("url", [url for url in URLS if "[" not in url])
def test_bulletin_accepts_a_signature_over_each_form_of_the_url_the_package_accepts(
    url: str, algorithm: str
) -> None:
    """Twilio's back end signs with the default port written out, or without the port; the
    package accepts each, and so must Bulletin."""
    validator = RequestValidator(SIGNING_KEY)
    for form in package_forms(url):
        signed = validator.compute_signature(form, PARAMS, algorithm)
        assert validator.validate(url, PARAMS, signed, algorithm)
        assert bulletin_twilio.verify_signature(SIGNING_KEY, url, PARAMS, signed, algorithm), form
        assert not bulletin_twilio.verify_signature("other-key", url, PARAMS, signed, algorithm)
        other = HMAC_SHA256 if algorithm == HMAC_SHA1 else HMAC_SHA1
        assert not bulletin_twilio.verify_signature(SIGNING_KEY, url, PARAMS, signed, other)


def test_a_signature_over_another_port_or_path_verifies_with_neither() -> None:
    url = "https://bulletin.example.org/v1/webhooks/twilio/default?delivery=42"
    for signed_url in (
        "https://bulletin.example.org:8443/v1/webhooks/twilio/default?delivery=42",
        "http://bulletin.example.org:443/v1/webhooks/twilio/default?delivery=42",
        "https://bulletin.example.org/v1/webhooks/twilio/default?delivery=43",
    ):
        signed = RequestValidator(TOKEN).compute_signature(signed_url, PARAMS)
        assert not RequestValidator(TOKEN).validate(url, PARAMS, signed)
        assert not bulletin_twilio.verify_signature(TOKEN, url, PARAMS, signed), signed_url


@pytest.mark.parametrize(
    ("header", "shared_key", "algorithm"),
    [
        (None, False, HMAC_SHA1),
        ("", False, HMAC_SHA1),
        (f"key={KEY_ID},algorithm=HMAC_SHA256", True, HMAC_SHA256),
        (f" algorithm = hmac_sha256 , key = {KEY_ID} ", True, HMAC_SHA256),
        (f"key={KEY_ID},algorithm=HMAC_SHA1", True, HMAC_SHA1),
        (f"key={KEY_ID}", True, HMAC_SHA1),
        (f"key={KEY_ID},algorithm=HMAC_SHA512", True, None),
    ],
)
def test_the_settings_header_is_read_as_the_package_reads_it(
    header: str | None, shared_key: bool, algorithm: str | None
) -> None:
    scheme = bulletin_twilio.signature_scheme(header)
    assert (scheme.shared_key, scheme.algorithm) == (shared_key, algorithm)
    named = get_signature_algorithm(header).upper()
    assert named == algorithm or (algorithm is None and named == "HMAC_SHA512")


# --- create requests: Bulletin's against the package's ----------------------------------------


@dataclass(frozen=True)
class PackageRequest:
    """A request the package handed to its HTTP client."""

    method: str
    uri: str
    data: dict[str, object]
    headers: dict[str, str]
    auth: tuple[str, str] | None


class Recorder(HttpClient):  # type: ignore[misc]
    """The package's HTTP client, replaced: it keeps each request and answers it as Twilio
    answers a create, so nothing leaves the process."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("tests.conformance.twilio"), is_async=False)
        self.requests: list[PackageRequest] = []

    def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        self.requests.append(
            PackageRequest(method, uri, dict(data or {}), dict(headers or {}), auth)
        )
        resource = {"sid": "SM" + "0" * 32, "account_sid": SID, "status": "queued"}
        return TwilioResponse(201, json.dumps(resource))


def package_create(**fields: Any) -> PackageRequest:
    """The request ``Client(SID, TOKEN).messages.create(**fields)`` makes."""
    recorder = Recorder()
    Client(SID, TOKEN, http_client=recorder).messages.create(**fields)
    [request] = recorder.requests
    return request


def message(delivery_id: int, title: str, body: str) -> OutboundMessage:
    return outbound_message(
        "sms", delivery_id=delivery_id, address=RECIPIENT, title=title, body=body
    )


@dataclass(frozen=True)
class CreateCase:
    name: str
    config: dict[str, Any]
    callback: str | None
    message: OutboundMessage
    #: What the same message is, given to the package's ``messages.create``.
    package: dict[str, Any]


CREATE_CASES = [
    CreateCase(
        "from a number, with a status callback",
        {"from_number": SENDER},
        CALLBACK,
        message(42, "Water outage", "No water until 14:00."),
        {
            "to": RECIPIENT,
            "from_": SENDER,
            "body": "Water outage\nNo water until 14:00.",
            "status_callback": f"{CALLBACK}?delivery=42",
        },
    ),
    CreateCase(
        "from a messaging service, without a callback or title",
        {"messaging_service_sid": SERVICE},
        None,
        message(7, "", "Gate closed today"),
        {"to": RECIPIENT, "messaging_service_sid": SERVICE, "body": "Gate closed today"},
    ),
    CreateCase(
        "a callback URL that has a query already",
        {"from_number": SENDER},
        f"{CALLBACK}?org=7",
        message(9001, "A", "B"),
        {
            "to": RECIPIENT,
            "from_": SENDER,
            "body": "A\nB",
            "status_callback": f"{CALLBACK}?org=7&delivery=9001",
        },
    ),
    CreateCase(
        "text the form encoding must carry intact",
        {"messaging_service_sid": SERVICE},
        "https://bulletin.example.org:8443/v1/webhooks/twilio/3f1c",
        message(5, "Ünïcode & = + %", "😀 line one\n\tline two  "),
        {
            "to": RECIPIENT,
            "messaging_service_sid": SERVICE,
            "body": "Ünïcode & = + %\n😀 line one\n\tline two  ",
            "status_callback": "https://bulletin.example.org:8443/v1/webhooks/twilio/3f1c"
            "?delivery=5",
        },
    ),
]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize("case", CREATE_CASES, ids=[c.name for c in CREATE_CASES])
async def test_bulletins_create_request_is_the_packages_field_by_field(
    case: CreateCase, session: aiohttp.ClientSession
) -> None:
    expected = package_create(**case.package)
    async with TwilioServer(account_sid=SID, auth_token=TOKEN) as server:
        config = TwilioConfig.model_validate(
            {"account_sid": SID, "auth_token": TOKEN, "base_url": server.base_url} | case.config
        )
        provider = TwilioProvider(config, session, status_callback_url=case.callback)
        await provider.send(case.message)
    [sent] = server.accepted

    assert sent.method == expected.method == "POST"
    # The same resource, on Twilio's own host when the configuration names no other.
    assert sent.path == urlsplit(expected.uri).path
    default = TwilioConfig(account_sid=SID, auth_token=TOKEN, from_number=SENDER)
    assert default.base_url_str() + sent.path == expected.uri
    # The stand-in takes only the account sid and auth token as Basic credentials (20003).
    assert expected.auth == (server.account_sid, server.auth_token) == (SID, TOKEN)
    assert sent.headers["Content-Type"].split(";")[0] == expected.headers["Content-Type"] == FORM
    assert sent.headers["Accept"] == expected.headers["Accept"] == "application/json"
    assert sorted(sent.pairs) == sorted((name, str(v)) for name, v in expected.data.items())


# --- the stand-in's answers, read by the package ----------------------------------------------


class Forwarder(HttpClient):  # type: ignore[misc]
    """The package's HTTP client, pointed at the stand-in instead of Twilio."""

    def __init__(self, base_url: str) -> None:
        super().__init__(logging.getLogger("tests.conformance.twilio"), is_async=False)
        self.base_url = base_url

    def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        assert uri.startswith(TWILIO_API)
        with httpx.Client(trust_env=False, timeout=10) as client:
            answer = client.request(
                method,
                self.base_url + uri.removeprefix(TWILIO_API),
                data={k: str(v) for k, v in (data or {}).items()},
                headers=headers,
                auth=auth,
            )
        return TwilioResponse(answer.status_code, answer.text, answer.headers)


async def test_the_package_reads_the_stand_ins_answers() -> None:
    async with TwilioServer(account_sid=SID, auth_token=TOKEN) as server:
        client = Client(SID, TOKEN, http_client=Forwarder(server.base_url))
        created = await asyncio.to_thread(
            client.messages.create, to=RECIPIENT, from_=SENDER, body="Hello"
        )
        with pytest.raises(TwilioRestException) as refused:
            await asyncio.to_thread(
                client.messages.create, to=RECIPIENT, from_=SENDER, body="x" * 1601
            )
    [sms] = server.accepted
    assert (created.sid, created.status, created.to, created.body) == (
        sms.sid,
        "queued",
        RECIPIENT,
        "Hello",
    )
    assert (refused.value.status, refused.value.code) == (400, 21617)


# --- the stand-in refuses what Twilio refuses -------------------------------------------------

VALID = {"To": RECIPIENT, "From": SENDER, "Body": "Hello", "StatusCallback": CALLBACK}


@dataclass(frozen=True)
class Refusal:
    name: str
    changes: dict[str, str | None]
    code: int


REFUSALS = [
    Refusal("no To", {"To": None}, 21604),
    Refusal("To not in E.164", {"To": "0821234567"}, 21211),
    Refusal("no From nor MessagingServiceSid", {"From": None}, 21603),
    Refusal("a malformed MessagingServiceSid", {"From": None, "MessagingServiceSid": "MG1"}, 21705),
    Refusal("a From that is no sender", {"From": "+1 (415) 555-0100!"}, 21212),
    Refusal("a From that is not the account's", {"From": "+14155550199"}, 21606),
    Refusal("no Body", {"Body": None}, 21602),
    Refusal("an empty Body", {"Body": ""}, 21602),
    Refusal("a Body of 1601 characters", {"Body": "x" * 1601}, 21617),
    Refusal("a Body of 1602 UTF-16 units", {"Body": "😀" * 801}, 21617),
    Refusal("a StatusCallback that is not http", {"StatusCallback": "ftp://example.org/x"}, 21609),
    Refusal(
        "a StatusCallback host with an underscore",
        {"StatusCallback": "https://bulletin_host.example.org/x"},
        21609,
    ),
    Refusal("a StatusCallback with no host", {"StatusCallback": "https:///x"}, 21609),
    Refusal("a StatusCallback that is no URL", {"StatusCallback": "not a url"}, 21609),
    Refusal(
        "a StatusCallback over 4000 characters",
        {"StatusCallback": "https://example.org/" + "a" * 3981},
        21609,
    ),
]


@pytest.fixture
async def server() -> AsyncIterator[TwilioServer]:
    async with TwilioServer(account_sid=SID, auth_token=TOKEN, senders=[SENDER]) as server:
        yield server


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def create(
    server: TwilioServer,
    session: aiohttp.ClientSession,
    form: Mapping[str, str] | None = None,
    *,
    json_body: Any = None,
    password: str = TOKEN,
    account: str = SID,
) -> tuple[int, dict[str, Any]]:
    url = f"{server.base_url}/2010-04-01/Accounts/{account}/Messages.json"
    headers = {"Authorization": basic(SID, password), "Accept": "application/json"}
    async with session.post(url, data=form, json=json_body, headers=headers) as answer:
        return answer.status, await answer.json()


def assert_twilio_error(status: int, body: dict[str, Any], code: int, http_status: int) -> None:
    """Twilio's error body: exactly its four fields."""
    assert status == http_status, body
    assert set(body) == {"code", "message", "more_info", "status"}, body
    assert (body["code"], body["status"]) == (code, http_status), body
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert isinstance(body["message"], str)
    assert body["message"]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.name for r in REFUSALS])
async def test_the_stand_in_refuses_what_twilio_refuses(
    refusal: Refusal, server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    form = {k: v for k, v in (VALID | refusal.changes).items() if v is not None}
    status, body = await create(server, session, form)
    assert_twilio_error(status, body, refusal.code, 400)
    assert server.accepted == []


async def test_the_stand_in_reads_form_posts_only(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    status, body = await create(server, session, json_body=VALID)
    assert_twilio_error(status, body, 21604, 400)
    assert server.accepted == []


async def test_the_stand_in_refuses_other_credentials_and_other_accounts(
    server: TwilioServer, session: aiohttp.ClientSession
) -> None:
    status, body = await create(server, session, VALID, password="not-the-token")
    assert_twilio_error(status, body, 20003, 401)
    status, body = await create(server, session, VALID, account="AC" + "d" * 32)
    assert_twilio_error(status, body, 20404, 404)
    assert server.accepted == []


async def test_the_stand_in_takes_what_twilio_takes_up_to_each_limit(
    session: aiohttp.ClientSession,
) -> None:
    async with TwilioServer(account_sid=SID, auth_token=TOKEN) as server:
        for changes in (
            {"Body": "x" * 1600},
            {"Body": "😀" * 800},
            {"From": "Acme News"},
            {"From": "21212"},
            {"From": None, "MessagingServiceSid": SERVICE},
            {"StatusCallback": "http://127.0.0.1:8000/v1/webhooks/twilio/default?delivery=1"},
            {"StatusCallback": "https://[2001:db8::1]/hook"},
            {"StatusCallback": "https://example.org/" + "a" * 3980},
        ):
            form = {k: v for k, v in (VALID | changes).items() if v is not None}
            status, body = await create(server, session, form)
            assert status == 201, (changes, body)
    assert len(server.accepted) == 8


# --- the stand-in signs as Twilio does --------------------------------------------------------


SHARED_SHA256 = SharedKey(KEY_ID, SIGNING_KEY)
SHARED_SHA1 = SharedKey(KEY_ID, SIGNING_KEY, HMAC_SHA1)


@pytest.mark.parametrize("sign_url", ["as_given", "default_port", "no_port"])
@pytest.mark.parametrize(
    "shared_key", [None, SHARED_SHA256, SHARED_SHA1], ids=["token", "sha256", "sha1-key"]
)
async def test_the_stand_ins_webhooks_verify_with_the_package_and_with_bulletin(
    sign_url: SignedUrl, shared_key: SharedKey | None, session: aiohttp.ClientSession
) -> None:
    config = TwilioConfig(
        account_sid=SID, auth_token=TOKEN, webhook_signing_key=SIGNING_KEY, from_number=SENDER
    )
    async with (
        Receiver() as receiver,
        TwilioServer(
            account_sid=SID, auth_token=TOKEN, shared_key=shared_key, sign_url=sign_url
        ) as server,
    ):
        url = f"{receiver.base_url}/v1/webhooks/twilio"
        provider = TwilioProvider(
            TwilioConfig(
                account_sid=SID, auth_token=TOKEN, from_number=SENDER, base_url=server.base_url
            ),
            session,
            status_callback_url=url,
        )
        accepted = await provider.send(message(11, "T", "B"))
        await server.send_status(session, accepted.provider_message_id, "delivered")
        await server.send_inbound(session, url, RECIPIENT, SENDER, "STOP")

    called = {
        "as_given": url,
        "default_port": url,
        "no_port": "http://127.0.0.1/v1/webhooks/twilio",
    }[sign_url]
    for hook in receiver.received:
        settings = hook.headers.get(SIGNATURE_SETTINGS_HEADER)
        signature = hook.headers[SIGNATURE_HEADER]
        secret = TOKEN if shared_key is None else SIGNING_KEY
        algorithm = get_signature_algorithm(settings)
        assert algorithm == (HMAC_SHA1 if shared_key is None else shared_key.algorithm)
        assert (settings is None) == (shared_key is None)
        assert RequestValidator(secret).validate(hook.url, hook.params, signature, algorithm)
        signed_url = hook.url.replace(url, called, 1)
        assert signature == RequestValidator(secret).compute_signature(
            signed_url, hook.params, algorithm
        )
        assert bulletin_twilio.verify_webhook(config, hook.url, hook.params, signature, settings)
    assert len(receiver.received) == 2


def test_the_stand_in_writes_the_default_port_as_twilio_does() -> None:
    server = TwilioServer(account_sid=SID, auth_token=TOKEN, sign_url="default_port")
    url = "https://bulletin.example.org/v1/webhooks/twilio/default?delivery=4"
    headers = server.sign(url, PARAMS)
    with_port = add_port(urlparse(url))
    assert with_port == "https://bulletin.example.org:443/v1/webhooks/twilio/default?delivery=4"
    assert headers == {
        SIGNATURE_HEADER: RequestValidator(TOKEN).compute_signature(with_port, PARAMS)
    }


# --- Bulletin's webhook endpoint, signed by the package ----------------------------------------

ENV_SID = "AC" + "e" * 32
ENV_TOKEN = "env-auth-token"
ENV_KEY = "env-webhook-signing-key"
ENV_FROM = "+14155550109"
DEFAULT_PATH = webhook_path("sms", "default")


@pytest.fixture
def public_url() -> str:
    return PUBLIC_URL


@pytest.fixture
def settings(database_url: str, public_url: str) -> Settings:
    return make_settings(
        database_url,
        public_url=public_url,
        secret_key=generate_key(),
        twilio_account_sid=ENV_SID,
        twilio_auth_token=ENV_TOKEN,
        twilio_webhook_signing_key=ENV_KEY,
        twilio_from=ENV_FROM,
    )


async def sent_sms(api: Api, account: str = "default") -> int:
    """An SMS delivery to p1, ``sent`` through ``account`` and awaiting receipts."""
    await post_people(api, person_json(1, phone=RECIPIENT))
    message_id = await notify(api, "p1", channels=["sms"])
    db = api.services.db
    async with db.transaction() as session:
        loaded = await session.get(Message, uuid.UUID(message_id))
        assert loaded is not None
        await resolve_chunk(session, loaded, 100)
    async with db.transaction() as session:
        [delivery_id] = (
            await session.execute(
                select(Delivery.id).where(Delivery.message_id == uuid.UUID(message_id))
            )
        ).scalars()
        await session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(
                state="sent",
                provider="twilio",
                provider_message_id=SMS_SID,
                provider_account=account,
            )
        )
    return delivery_id


def status_fields(account_sid: str, status: str) -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "MessageSid": SMS_SID,
        "SmsSid": SMS_SID,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": RECIPIENT,
        "From": ENV_FROM,
        "ApiVersion": "2010-04-01",
    }


def inbound_fields(account_sid: str, text: str, sid: str) -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "MessageSid": sid,
        "SmsSid": sid,
        "From": RECIPIENT,
        "To": ENV_FROM,
        "Body": text,
        "NumMedia": "0",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }


@dataclass(frozen=True)
class Scheme:
    """How the package signs: which secret, which algorithm, and the settings header."""

    name: str
    secret: str
    algorithm: str
    settings: str | None

    def headers(self, signed_url: str, params: Mapping[str, str]) -> dict[str, str]:
        signature = RequestValidator(self.secret).compute_signature(
            signed_url, params, self.algorithm
        )
        headers = {"Content-Type": FORM, SIGNATURE_HEADER: signature}
        if self.settings is not None:
            headers[SIGNATURE_SETTINGS_HEADER] = self.settings
        return headers


TOKEN_SHA1 = Scheme("auth token, HMAC-SHA1", ENV_TOKEN, HMAC_SHA1, None)
KEY_SHA256 = Scheme(
    "shared key, HMAC-SHA256", ENV_KEY, HMAC_SHA256, f"key={KEY_ID},algorithm=HMAC_SHA256"
)
KEY_SHA1 = Scheme("shared key, HMAC-SHA1", ENV_KEY, HMAC_SHA1, f"key={KEY_ID},algorithm=HMAC_SHA1")


async def post(api: Api, target: str, params: Mapping[str, str], headers: dict[str, str]) -> int:
    response = await api.client.post(target, content=urlencode(params).encode(), headers=headers)
    assert response.status_code in (200, 401), response.text
    return response.status_code


async def delivery_state(db: Database, delivery_id: int) -> str:
    async with db.read() as session:
        found = await session.get(Delivery, delivery_id)
        assert found is not None
        return found.state


async def sms_enabled(db: Database) -> bool | None:
    async with db.read() as session:
        [found] = (await session.execute(select(Recipient))).scalars()
        return found.pref_sms


@pytest.mark.parametrize("scheme", [TOKEN_SHA1, KEY_SHA256, KEY_SHA1], ids=lambda s: s.name)
@pytest.mark.parametrize(
    "public_url",
    [
        "https://bulletin.example.org",
        "https://bulletin.example.org:443",
        "http://bulletin.test",
        "http://bulletin.test:80",
        "https://bulletin.example.org:8443",
    ],
)
async def test_callbacks_the_package_signs_are_accepted(
    api: Api, public_url: str, scheme: Scheme
) -> None:
    """Each status callback and inbound SMS, signed over each form of the URL Twilio may sign
    (as Bulletin gave it, with its default port, without its port), is applied."""
    delivery_id = await sent_sms(api)
    db = api.services.db
    status_target = f"{DEFAULT_PATH}?delivery={delivery_id}"
    for n, (target, fields) in enumerate(
        [
            (status_target, status_fields(ENV_SID, "delivered")),
            (DEFAULT_PATH, inbound_fields(ENV_SID, "STOP", "SM" + "1" * 32)),
        ]
    ):
        url = public_url + target
        for i, form in enumerate(package_forms(url)):
            params = dict(fields)
            if "Body" in params:
                params["MessageSid"] = params["SmsSid"] = f"SM{n}{i}" + "0" * 30
            headers = scheme.headers(form, params)
            algorithm = get_signature_algorithm(headers.get(SIGNATURE_SETTINGS_HEADER))
            assert RequestValidator(scheme.secret).validate(
                url, params, headers[SIGNATURE_HEADER], algorithm
            )
            assert await post(api, target, params, headers) == 200, (form, scheme.name)
    assert await delivery_state(db, delivery_id) == "delivered"
    assert await sms_enabled(db) is False


@dataclass(frozen=True)
class Forgery:
    name: str
    headers: dict[str, str]
    #: What is posted, when not what was signed.
    posted: dict[str, str] | None = None
    #: The secret and algorithm the package checks the post with.
    check: tuple[str, str] = (ENV_KEY, HMAC_SHA256)


def _raw(secret: str, url: str, params: Mapping[str, str], digest: Any) -> str:
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(secret.encode(), data.encode(), digest).digest()).decode()


def forgeries(url: str, params: dict[str, str]) -> Iterator[Forgery]:
    sha256 = {SIGNATURE_SETTINGS_HEADER: f"key={KEY_ID},algorithm=HMAC_SHA256"}
    sha512 = {SIGNATURE_SETTINGS_HEADER: f"key={KEY_ID},algorithm=HMAC_SHA512"}

    def signed(secret: str, algorithm: str, signed_url: str = url) -> dict[str, str]:
        signature = RequestValidator(secret).compute_signature(signed_url, params, algorithm)
        return {"Content-Type": FORM, SIGNATURE_HEADER: signature}

    yield Forgery("no signature", {"Content-Type": FORM} | sha256)
    yield Forgery("a wrong key", signed("not-the-key", HMAC_SHA256) | sha256)
    yield Forgery(
        "a tampered parameter",
        signed(ENV_KEY, HMAC_SHA256) | sha256,
        posted=params | {"MessageStatus": "failed"},
    )
    yield Forgery(
        "the auth token's HMAC-SHA1 under an HMAC-SHA256 header",
        signed(ENV_TOKEN, HMAC_SHA1) | sha256,
    )
    yield Forgery(
        "the key's HMAC-SHA1 under an HMAC-SHA256 header", signed(ENV_KEY, HMAC_SHA1) | sha256
    )
    yield Forgery("the auth token standing in for the key", signed(ENV_TOKEN, HMAC_SHA256) | sha256)
    yield Forgery(
        "the key's HMAC-SHA256 without the settings header",
        signed(ENV_KEY, HMAC_SHA256),
        check=(ENV_TOKEN, HMAC_SHA1),
    )
    # Were an unknown algorithm read as a known one, these would pass.
    for name, digest in (("HMAC-SHA1", hashlib.sha1), ("HMAC-SHA256", hashlib.sha256)):
        yield Forgery(
            f"the key's {name} under an unknown algorithm",
            {"Content-Type": FORM, SIGNATURE_HEADER: _raw(ENV_KEY, url, params, digest)} | sha512,
            check=(ENV_KEY, "HMAC_SHA512"),
        )
    port = url.replace("bulletin.example.org", "bulletin.example.org:8443", 1)
    yield Forgery("signed for another port", signed(ENV_KEY, HMAC_SHA256, port) | sha256)
    other = url.replace("delivery=", "delivery=9", 1)
    yield Forgery("signed for another delivery", signed(ENV_KEY, HMAC_SHA256, other) | sha256)


async def test_what_the_package_refuses_bulletin_refuses_and_nothing_changes(api: Api) -> None:
    delivery_id = await sent_sms(api)
    db = api.services.db
    target = f"{DEFAULT_PATH}?delivery={delivery_id}"
    url = PUBLIC_URL + target
    params = status_fields(ENV_SID, "delivered")
    for forgery in forgeries(url, params):
        posted = forgery.posted or params
        secret, algorithm = forgery.check
        with structlog.testing.capture_logs() as logs:
            assert (
                RequestValidator(secret).validate(
                    url, posted, forgery.headers.get(SIGNATURE_HEADER, ""), algorithm
                )
                is False
            ), forgery.name
            assert await post(api, target, posted, forgery.headers) == 401, forgery.name
        assert await delivery_state(db, delivery_id) == "sent", forgery.name
        [event] = [e for e in logs if e["event"] == "webhooks.twilio_bad_signature"]
        assert ENV_KEY not in repr(logs)
        assert ENV_TOKEN not in repr(logs)
        assert event["signing_key_set"] is True
    # The same post, signed as the package signs it, moves the delivery.
    good = KEY_SHA256.headers(url, params)
    assert await post(api, target, params, good) == 200
    assert await delivery_state(db, delivery_id) == "delivered"


async def test_a_shared_key_signature_needs_the_accounts_own_signing_key(
    api: Api, database_url: str
) -> None:
    """An organization's own account, first without a signing key, then with one set through
    the API: stored encrypted, shown only by name, kept by a later PUT that leaves it out."""
    own_sid, own_token, own_key = "AC" + "a" * 32, "own-auth-token", "own-signing-key-secret"
    config = {
        "provider": "twilio",
        "account_sid": own_sid,
        "auth_token": own_token,
        "from_number": SENDER,
    }
    assert (await api.put("/v1/channels/sms", config, Scope.ADMIN)).status_code in (200, 201)
    account = str(api.org_id)
    delivery_id = await sent_sms(api, account)
    db = api.services.db
    target = f"{webhook_path('sms', account)}?delivery={delivery_id}"
    url = PUBLIC_URL + target
    params = status_fields(own_sid, "sent")
    by_key = Scheme("own key", own_key, HMAC_SHA256, f"key={KEY_ID},algorithm=HMAC_SHA256")
    by_token = Scheme("own token", own_token, HMAC_SHA256, by_key.settings)

    with structlog.testing.capture_logs() as logs:
        for scheme in (by_key, by_token):
            assert await post(api, target, params, scheme.headers(url, params)) == 401
    assert [e["signing_key_set"] for e in logs if e.get("shared_key")] == [False, False]
    # The auth token's own signature needs no key.
    assert (
        await post(
            api,
            target,
            params,
            TOKEN_SHA1.headers(url, params)
            | {SIGNATURE_HEADER: RequestValidator(own_token).compute_signature(url, params)},
        )
        == 200
    )

    answer = await api.put(
        "/v1/channels/sms", config | {"webhook_signing_key": own_key}, Scope.ADMIN
    )
    assert answer.status_code == 200, answer.text
    assert own_key not in answer.text
    # A later PUT that leaves every secret out keeps them.
    kept = {k: v for k, v in config.items() if k != "auth_token"} | {"rate_per_second": 5.0}
    answer = await api.put("/v1/channels/sms", kept, Scope.ADMIN)
    assert answer.status_code == 200, answer.text
    shown = body_of(await api.get("/v1/channels/sms", Scope.ADMIN), 200)
    assert shown["secrets_set"] == ["auth_token", "webhook_signing_key"]
    assert own_key not in json.dumps(shown)
    async with db.read() as session:
        [row] = (await session.execute(select(ChannelConfig))).scalars()
    assert "webhook_signing_key" not in row.settings
    assert row.secrets is not None
    assert own_key not in row.secrets

    params = status_fields(own_sid, "delivered")
    assert await post(api, target, params, by_token.headers(url, params)) == 401
    assert await delivery_state(db, delivery_id) == "sent"
    assert await post(api, target, params, by_key.headers(url, params)) == 200
    assert await delivery_state(db, delivery_id) == "delivered"


# --- end to end: Bulletin served over HTTP, the stand-in signing with a SharedKey --------------


async def test_bulletin_sends_through_the_stand_in_and_takes_its_shared_key_callbacks(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    """The stand-in signs with a SharedKey (HMAC-SHA256) over the URL without its port, as
    Twilio does for some requests; Bulletin, served on that port, takes its receipts and
    replies."""
    port = free_port()
    settings = served_settings(database_url, port)
    shared = SharedKey(KEY_ID, SIGNING_KEY)
    async with TwilioServer(
        account_sid=SID, auth_token=TOKEN, shared_key=shared, sign_url="no_port", senders=[SENDER]
    ) as twilio:
        async for api, _server in serve(settings, port):
            config = {
                "provider": "twilio",
                "account_sid": SID,
                "auth_token": TOKEN,
                "webhook_signing_key": SIGNING_KEY,
                "from_number": SENDER,
                "base_url": twilio.base_url,
                "rate_per_second": None,
            }
            assert (await api.put("/v1/channels/sms", config, Scope.ADMIN)).status_code == 201
            await post_people(api, person_json(1, phone=RECIPIENT))
            message_id = await notify(api, "p1", channels=["sms"])
            for _ in range(500):
                if twilio.accepted:
                    break
                await asyncio.sleep(0.02)
            [sms] = twilio.accepted
            hook = f"http://127.0.0.1:{port}{webhook_path('sms', str(api.org_id))}"
            assert sms.status_callback is not None
            assert sms.status_callback.startswith(f"{hook}?delivery=")
            for _ in range(500):
                body = body_of(await api.get(f"/v1/notifications/{message_id}"), 200)
                if body["deliveries"] and body["deliveries"][0]["state"] == "sent":
                    break
                await asyncio.sleep(0.02)
            assert (await twilio.send_status(session, sms.sid, "delivered")).status == 200
            reply = await twilio.send_inbound(session, hook, RECIPIENT, SENDER, "STOP")
            assert reply.status == 200
            body = body_of(await api.get(f"/v1/notifications/{message_id}"), 200)
            assert [d["state"] for d in body["deliveries"]] == ["delivered"]
            prefs = body_of(await api.get("/v1/recipients/p1/preferences"), 200)
            assert prefs["channels"]["sms"] is False
