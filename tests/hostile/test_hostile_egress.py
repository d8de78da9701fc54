"""Hostile tenants aiming providers inward (issue 12, finding 5).

An organization admin sets where its providers are. Pointed at this server's own network
(the cloud metadata address, a database port, a private host), the provider would make the
service a port scanner of that network. With the default settings:

* ``PUT /v1/channels/{name}`` refuses, with a 422 naming the field, a non-https URL, a
  literal internal address or a local name, and an SMTP port that is not a usual one;
* a name that passes that check but resolves to an internal address when the worker connects
  (DNS rebinding) is refused by the connect-time check, before anything connects: the
  delivery fails with a reason that names no address, and a listener standing where the name
  leads records no connection. Nothing here connects to any address but 127.0.0.1.

And even where internal addresses are allowed, a failed connection is reported to the tenant
without the address, the port or the operating system's words.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from bulletin.bootstrap import default_registry
from bulletin.channels.base import OutboundMessage
from bulletin.channels.configs import WhatsAppCloudConfig
from bulletin.channels.egress import NOT_ALLOWED, AddrInfo
from bulletin.channels.factory import ProviderFactory
from bulletin.channels.http import ACCOUNT_RETRY_SECONDS, provider_session
from bulletin.channels.whatsapp import WhatsAppCloudProvider
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.errors import TransientSendError
from bulletin.orgs.keys import Scope
from conftest import Api, _running_api, make_settings
from support.http import body_of, problem
from support.http_factories import notify, person_json, post_people

WA_NUMBER_ID = "100000000000001"
TW_SID = "AC" + "1" * 32
PHONE = "+27821234567"


def whatsapp(base_url: str) -> dict[str, Any]:
    return {
        "provider": "whatsapp_cloud",
        "phone_number_id": WA_NUMBER_ID,
        "access_token": "EAAG-hostile-token",
        "base_url": base_url,
        "template": {"name": "bulletin_notice", "parameters": ["{{ title }}", "{{ body }}"]},
        "pair_interval_seconds": 0,
    }


def twilio(base_url: str) -> dict[str, Any]:
    return {
        "provider": "twilio",
        "account_sid": TW_SID,
        "auth_token": "twilio-hostile-token",
        "from_number": "+14155550100",
        "base_url": base_url,
    }


def smtp(host: str, port: int) -> dict[str, Any]:
    return {
        "provider": "smtp",
        "host": host,
        "port": port,
        "security": "none",
        "from_address": "news@attacker.example",
    }


def outbound() -> OutboundMessage:
    return OutboundMessage(
        delivery_id=1,
        attempt=1,
        org_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        channel="whatsapp",
        address=PHONE,
        recipient_external_id="p1",
        recipient_name=None,
        locale=None,
        title="Hi",
        body="Body",
        category=None,
    )


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def resolving_to(port: int) -> Any:
    """A resolver that sends every ``*.provider.test`` name to 127.0.0.1:``port``, as a
    name under an attacker's control can, and knows no other name."""

    async def resolve(host: str, _port: int) -> Sequence[AddrInfo]:
        if host.endswith(".provider.test"):
            return [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))
            ]
        raise OSError(f"no such name: {host}")

    return resolve


@pytest.fixture
def settings(database_url: str) -> Settings:
    # The defaults of the address policy; one attempt, so that a refusal fails the delivery.
    return make_settings(database_url, secret_key=generate_key(), max_attempts=1)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    async with Listener() as running:
        yield running


@pytest.fixture
async def live(settings: Settings, db: Database, listener: Listener) -> AsyncIterator[Api]:
    """The API and the engine, whose providers resolve names with :func:`resolving_to`."""
    factory = ProviderFactory(settings, resolver=resolving_to(listener.port))
    registry = default_registry(db, settings, factory)
    try:
        async for api in _running_api(settings, run_worker=True, registry=registry):
            yield api
    finally:
        await factory.close()


ATTACKS_AT_PUT = [
    ("whatsapp", whatsapp("http://169.254.169.254/latest/meta-data"), "base_url"),
    ("whatsapp", whatsapp("https://127.0.0.1:5432"), "base_url"),
    ("whatsapp", whatsapp("https://[::ffff:169.254.169.254]"), "base_url"),
    ("whatsapp", whatsapp("https://localhost:8000"), "base_url"),
    ("whatsapp", whatsapp("http://graph.facebook.com"), "base_url"),
    ("sms", twilio("https://10.0.0.1:22"), "base_url"),
    ("sms", twilio("https://2130706433"), "base_url"),
    ("email", smtp("127.0.0.1", 5432), "host"),
    ("email", smtp("127.0.0.1", 5432), "port"),
    ("email", smtp("localhost", 587), "host"),
    ("email", smtp("[fd00:ec2::254]", 25), "host"),
    ("email", smtp("smtp.example.org", 22), "port"),
]


@pytest.mark.parametrize(("channel", "config", "field"), ATTACKS_AT_PUT)
async def test_an_internal_provider_address_is_refused_when_saved(
    api: Api, channel: str, config: dict[str, Any], field: str
) -> None:
    victim = await api.other_org("Victim")
    before = body_of(await victim.get(f"/v1/channels/{channel}"), 200)

    body = problem(await api.put(f"/v1/channels/{channel}", config, Scope.ADMIN), 422)

    assert ["body", field] in [error["loc"] for error in body["errors"]]
    assert body_of(await api.get(f"/v1/channels/{channel}"), 200)["source"] == "sandbox"
    assert body_of(await victim.get(f"/v1/channels/{channel}"), 200) == before


SENDS_TO_A_NAME_THAT_LEADS_INWARD = [
    ("whatsapp", whatsapp("https://graph.provider.test")),
    ("sms", twilio("https://api.provider.test")),
    ("email", smtp("mail.provider.test", 587)),
]


async def send_one(api: Api, channel: str) -> dict[str, Any]:
    """Send one notification on ``channel`` and wait for its delivery to end."""
    await post_people(api, person_json(1, phone=PHONE, whatsapp=PHONE))
    message_id = await notify(api, "p1", channels=[channel])
    for _ in range(500):
        deliveries = body_of(await api.get(f"/v1/notifications/{message_id}"), 200)["deliveries"]
        if deliveries and deliveries[0]["state"] not in ("pending", "sending"):
            delivery: dict[str, Any] = deliveries[0]
            return delivery
        await asyncio.sleep(0.02)
    raise AssertionError(f"the delivery did not end: {deliveries}")


@pytest.mark.parametrize(("channel", "config"), SENDS_TO_A_NAME_THAT_LEADS_INWARD)
async def test_a_name_resolving_inward_is_refused_before_connecting(
    live: Api, listener: Listener, channel: str, config: dict[str, Any]
) -> None:
    body_of(await live.put(f"/v1/channels/{channel}", config, Scope.ADMIN), 201)

    delivery = await send_one(live, channel)

    assert listener.connections == 0
    assert delivery["state"] == "failed"
    assert NOT_ALLOWED in delivery["reason"]
    assert "127.0.0.1" not in delivery["reason"]
    assert str(listener.port) not in delivery["reason"]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("channel", ["whatsapp", "sms", "email"])
async def test_a_failed_connection_names_no_address_even_where_allowed(
    database_url: str, channel: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens here once the probe is closed
    url = f"http://127.0.0.1:{closed}"
    config = {"whatsapp": whatsapp(url), "sms": twilio(url), "email": smtp("127.0.0.1", closed)}
    settings = make_settings(
        database_url,
        secret_key=generate_key(),
        max_attempts=1,
        allow_private_provider_addresses=True,
    )
    async for api in _running_api(settings, run_worker=True):
        body_of(await api.put(f"/v1/channels/{channel}", config[channel], Scope.ADMIN), 201)

        delivery = await send_one(api, channel)

        assert delivery["state"] == "failed"
        assert "could not connect to" in delivery["reason"]
        assert "127.0.0.1" not in delivery["reason"]
        assert str(closed) not in delivery["reason"]
        assert "refused" not in delivery["reason"].lower()


async def test_the_policy_holds_for_providers_set_in_the_environment(
    database_url: str, listener: Listener
) -> None:
    """The operator's own BULLETIN_WHATSAPP_* account gets the same default: an internal
    address is refused at connect, until BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES says so."""
    settings = make_settings(
        database_url,
        max_attempts=1,
        whatsapp_phone_number_id=WA_NUMBER_ID,
        whatsapp_access_token="EAAG-env-token",
        whatsapp_base_url=f"https://127.0.0.1:{listener.port}",
        whatsapp_template="bulletin_notice",
    )
    async for api in _running_api(settings, run_worker=True):
        delivery = await send_one(api, "whatsapp")

    assert listener.connections == 0
    assert delivery["state"] == "failed"
    assert NOT_ALLOWED in delivery["reason"]


async def test_plain_http_is_refused_at_connect_without_connecting(listener: Listener) -> None:
    """A URL that never passed the check at PUT (the environment's, or one stored while the
    setting was on) is still refused when the worker connects."""
    config = WhatsAppCloudConfig.model_validate(whatsapp(f"http://127.0.0.1:{listener.port}"))
    async with provider_session(allow_private=False) as session:
        provider = WhatsAppCloudProvider(config, session)
        with pytest.raises(TransientSendError) as caught:
            await provider.send(outbound())

    assert listener.connections == 0
    assert caught.value.detail == "the URL of the Cloud API is not allowed: it must be https"
    assert caught.value.slow_down is True
    assert caught.value.retry_after == ACCOUNT_RETRY_SECONDS
