"""The SMTP email adapter against the local SMTP server.

No database: :class:`SmtpProvider` talks SMTP to :class:`SmtpServer` on 127.0.0.1, plain, with
STARTTLS or with implicit TLS, and what the server received is parsed and checked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from bulletin.channels.base import OutboundMessage
from bulletin.channels.configs import SmtpConfig
from bulletin.channels.smtp import SmtpProvider
from bulletin.devservers.smtp import ReceivedEmail, SmtpServer
from bulletin.errors import InDoubtSendError, PermanentSendError, TransientSendError
from support.outbound import outbound_message
from support.processes import free_port
from support.waiting import eventually

SENDER = "notices@water.example.org"
RECIPIENT = "zoe@example.net"
BODY = "Kein Wasser bis 14:00.\nBitte Vorrat anlegen.\n\nDanke & bis bald <3"
USERNAME = "bulletin"
PASSWORD = "s3cret-Pa55word"


def make_config(server: SmtpServer, **changes: Any) -> SmtpConfig:
    values: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "validate_certs": False,
        "from_address": SENDER,
        "from_name": "Städtische Wasserwerke",
        "connections": 2,
    }
    if server.username is not None:
        values |= {"username": server.username, "password": server.password}
    return SmtpConfig.model_validate(values | changes)


def make_message(
    delivery_id: int = 42, *, address: str = RECIPIENT, body: str = BODY, **changes: Any
) -> OutboundMessage:
    return outbound_message("email", delivery_id=delivery_id, address=address, body=body, **changes)


def text_of(received: ReceivedEmail, subtype: str) -> str:
    part = received.message.get_body(preferencelist=(subtype,))
    assert part is not None
    assert part.get_content_type() == f"text/{subtype}"
    assert part.get_content_charset() == "utf-8"
    content = part.get_content()
    assert isinstance(content, str)
    # Lines end in CRLF on the wire, and so after decoding.
    return content.replace("\r\n", "\n")


@pytest.fixture
async def server() -> AsyncIterator[SmtpServer]:
    async with SmtpServer() as server:
        yield server


@pytest.fixture
async def provider(server: SmtpServer) -> AsyncIterator[SmtpProvider]:
    provider = SmtpProvider(make_config(server), allow_private=True)
    try:
        yield provider
    finally:
        await provider.close()


# --- what arrives ---------------------------------------------------------------------------


async def test_the_email_arrives_with_encoded_headers_and_both_parts(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    message = make_message(42, unsubscribe_url="https://bulletin.example.org/u/abc?x=1&y=2")

    before = dt.datetime.now(dt.UTC).replace(microsecond=0)  # the Date header has seconds
    accepted = await provider.send(message)
    after = dt.datetime.now(dt.UTC)

    [received] = server.received
    assert received.envelope_from == SENDER
    assert received.recipients == (RECIPIENT,)
    # Everything on the wire is 7-bit: non-ASCII names and subject are RFC 2047 encoded.
    assert received.raw.isascii()
    assert b"=?utf-8?" in received.raw
    email = received.message
    assert email["From"].addresses[0].display_name == "Städtische Wasserwerke"
    assert email["From"].addresses[0].addr_spec == SENDER
    assert email["To"].addresses[0].display_name == "Zoë Ångström"
    assert email["To"].addresses[0].addr_spec == RECIPIENT
    assert email["Subject"] == "Wasser: Störung in Köln ☔"
    assert before <= email["Date"].datetime <= after
    assert email["Message-ID"] == f"<bulletin.{message.message_id}.42@water.example.org>"
    assert accepted.provider_message_id == email["Message-ID"]
    assert email["X-Bulletin-Delivery"] == "42"
    assert email["Auto-Submitted"] == "auto-generated"
    assert email["List-Unsubscribe"] == "<https://bulletin.example.org/u/abc?x=1&y=2>"
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in email.iter_parts()] == ["text/plain", "text/html"]
    assert text_of(received, "plain").rstrip("\n") == message.body


async def test_the_html_part_is_made_from_the_body_escaped(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    await provider.send(make_message(unsubscribe_url="https://bulletin.example.org/u/a?b=1&c=2"))

    page = text_of(server.received[0], "html")
    assert '<html lang="de">' in page
    assert "<h1>Wasser: Störung in Köln ☔</h1>" in page
    assert "<p>Kein Wasser bis 14:00.<br>\nBitte Vorrat anlegen.</p>" in page
    assert "<p>Danke &amp; bis bald &lt;3</p>" in page
    assert '<a href="https://bulletin.example.org/u/a?b=1&amp;c=2">Unsubscribe</a>' in page


async def test_without_an_unsubscribe_url_there_are_no_list_headers_and_no_link(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    await provider.send(make_message())

    email = server.received[0].message
    assert "List-Unsubscribe" not in email
    assert "List-Unsubscribe-Post" not in email
    assert "Unsubscribe" not in text_of(server.received[0], "html")


async def test_a_given_html_part_is_sent_as_it_is(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    page = "<html><body><p style='color:red'>Größer als ein Satz, länger als eine Zeile. " * 20
    await provider.send(make_message(html=page))

    assert text_of(server.received[0], "html").rstrip("\n") == page
    assert text_of(server.received[0], "plain").rstrip("\n") == make_message().body


async def test_a_resend_of_one_delivery_has_the_same_message_id(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    message = make_message(7)
    first = await provider.send(message)
    again = await provider.send(make_message(7, attempt=2, message_id=message.message_id))
    other = await provider.send(make_message(8, message_id=message.message_id))

    ids = [received.message["Message-ID"] for received in server.received]
    prefix = f"<bulletin.{message.message_id}"
    assert ids == [f"{prefix}.7@water.example.org>"] * 2 + [f"{prefix}.8@water.example.org>"]
    assert first.provider_message_id == again.provider_message_id != other.provider_message_id


async def test_international_addresses_use_idna_domains_and_smtputf8(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    await provider.send(make_message(1, address="user@bücher.example"))
    await provider.send(make_message(2, address="zoë@example.net"))

    idna, utf8 = server.received
    assert idna.recipients == ("user@xn--bcher-kva.example",)
    assert idna.message["To"].addresses[0].addr_spec == "user@xn--bcher-kva.example"
    assert utf8.recipients == ("zoë@example.net",)
    assert utf8.message["To"].addresses[0].addr_spec == "zoë@example.net"


async def test_the_provider_describes_its_account(server: SmtpServer) -> None:
    provider = SmtpProvider(
        make_config(server, username="mailer", rate_per_second=12.5), allow_private=True
    )

    assert provider.name == "smtp"
    assert provider.deduplicates is False
    assert provider.account == f"smtp:127.0.0.1:{server.port}:mailer"
    assert provider.rate_per_second == 12.5
    await provider.close()


# --- transport security and login ------------------------------------------------------------


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
async def test_each_security_mode_logs_in_and_delivers(
    security: Any,
) -> None:
    async with SmtpServer(security=security, username=USERNAME, password=PASSWORD) as server:
        provider = SmtpProvider(make_config(server), allow_private=True)
        try:
            await provider.send(make_message())
        finally:
            await provider.close()

    [received] = server.received
    assert received.login == USERNAME
    assert received.tls is (security != "none")


async def test_a_refused_login_is_transient_slows_the_account_and_hides_the_password() -> None:
    async with SmtpServer(security="starttls", username=USERNAME, password=PASSWORD) as server:
        provider = SmtpProvider(
            make_config(server, password="wrong-password-123"), allow_private=True
        )
        try:
            with capture_logs() as logs, pytest.raises(TransientSendError) as caught:
                await provider.send(make_message())
        finally:
            await provider.close()

    assert caught.value.slow_down is True
    assert caught.value.retry_after == 60
    assert "535" in caught.value.detail
    assert server.received == []
    assert [entry["event"] for entry in logs] == ["smtp.authentication_failed"]
    assert logs[0]["log_level"] == "error"
    assert "wrong-password-123" not in repr(logs) + repr(caught.value)


async def test_no_login_where_the_server_requires_one_is_transient_and_slows_down() -> None:
    async with SmtpServer(username=USERNAME, password=PASSWORD) as server:
        provider = SmtpProvider(
            make_config(server, username=None, password=None), allow_private=True
        )
        try:
            with pytest.raises(TransientSendError) as caught:
                await provider.send(make_message())
        finally:
            await provider.close()

    assert caught.value.slow_down is True
    assert "530" in caught.value.detail


async def test_a_certificate_that_does_not_verify_is_transient_and_slows_down() -> None:
    async with SmtpServer(security="tls") as server:
        provider = SmtpProvider(make_config(server, validate_certs=True), allow_private=True)
        try:
            with pytest.raises(TransientSendError) as caught:
                await provider.send(make_message())
        finally:
            await provider.close()

    assert caught.value.slow_down is True
    assert server.received == []


async def test_starttls_required_but_not_offered_is_transient() -> None:
    async with SmtpServer(security="none") as server:
        provider = SmtpProvider(make_config(server, security="starttls"), allow_private=True)
        try:
            with pytest.raises(TransientSendError) as caught:
                await provider.send(make_message())
        finally:
            await provider.close()

    assert caught.value.slow_down is True
    assert server.received == []


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply", ["450 4.2.1 Mailbox busy, try later", "451 4.7.1 Greylisted, come back soon"]
)
async def test_a_recipient_deferred_with_4xx_is_transient(
    provider: SmtpProvider, server: SmtpServer, reply: str
) -> None:
    server.rcpt_reply[RECIPIENT] = reply

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is False
    assert reply in caught.value.detail
    assert server.received == []


@pytest.mark.parametrize(
    "reply", ["550 5.1.1 No such user", "553 mailbox name not allowed", "550 5.2.1 Disabled"]
)
async def test_a_recipient_refused_with_5xx_is_permanent_and_suppresses_the_address(
    provider: SmtpProvider, server: SmtpServer, reply: str
) -> None:
    server.rcpt_reply[RECIPIENT] = reply

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(make_message())

    assert caught.value.suppress_address is True
    assert reply in caught.value.detail
    assert server.received == []


async def test_a_recipient_refused_for_policy_is_permanent_but_keeps_the_address(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.rcpt_reply[RECIPIENT] = "550 5.7.1 Relaying denied"

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(make_message())

    assert caught.value.suppress_address is False


async def test_421_is_transient_and_slows_the_account_down(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.rcpt_reply[RECIPIENT] = lambda address: "421 4.7.0 Too many messages, slow down"

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is True
    assert caught.value.retry_after is not None


async def test_a_message_deferred_with_451_is_transient(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.data_reply = "451 4.3.0 Try again later"

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert "451 4.3.0 Try again later" in caught.value.detail
    assert caught.value.slow_down is False
    assert server.received == []


async def test_a_message_refused_with_554_is_permanent_without_suppressing(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.data_reply = "554 5.6.0 Message rejected"

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(make_message())

    assert caught.value.suppress_address is False
    assert "554" in caught.value.detail
    assert server.received == []


async def test_a_connection_survives_refusals_and_carries_the_next_message(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.rcpt_reply["gone@example.net"] = "550 5.1.1 No such user"
    with pytest.raises(PermanentSendError):
        await provider.send(make_message(1, address="gone@example.net"))
    server.data_reply = "451 4.3.0 Try again later"
    with pytest.raises(TransientSendError):
        await provider.send(make_message(2))
    server.data_reply = None

    await provider.send(make_message(3))

    assert [r.message["X-Bulletin-Delivery"] for r in server.received] == ["3"]
    assert server.connections == 1


# --- in doubt and connection failures -----------------------------------------------------


async def test_a_connection_dropped_after_the_content_is_in_doubt(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.drop_after_data = True

    with pytest.raises(InDoubtSendError):
        await provider.send(make_message(5))

    # The server did take it: that is why a resend could deliver it twice.
    assert [r.message["X-Bulletin-Delivery"] for r in server.received] == ["5"]


async def test_a_reply_slower_than_the_send_timeout_escapes_as_timeout_error(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.data_delay = 30.0

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await provider.send(make_message(5))

    assert len(server.received) == 1
    # The connection that timed out is out of step: the next send takes a fresh one.
    server.data_delay = 0.0
    await provider.send(make_message(6))
    assert server.connections == 2
    assert len(server.received) == 2


async def test_a_refused_connection_is_transient() -> None:
    port = free_port()
    config = SmtpConfig(host="127.0.0.1", port=port, security="none", from_address=SENDER)
    provider = SmtpProvider(config, allow_private=True)

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is False
    await provider.close()


async def test_a_server_that_never_greets_is_transient_after_the_connect_timeout() -> None:
    hung_up = asyncio.Event()

    async def accept_and_stay_silent(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()
        writer.close()
        await writer.wait_closed()
        hung_up.set()

    silent = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config = SmtpConfig(host="127.0.0.1", port=port, security="none", from_address=SENDER)
    provider = SmtpProvider(config, connect_timeout=0.2, allow_private=True)
    try:
        with pytest.raises(TransientSendError) as caught:
            await provider.send(make_message())
    finally:
        await provider.close()
        async with asyncio.timeout(5):
            await hung_up.wait()
        silent.close()
        await silent.wait_closed()

    assert "connect" in caught.value.detail


async def test_421_on_connect_is_transient_and_slows_down(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.connect_reply = "421 4.3.2 Service not available, closing channel"

    with pytest.raises(TransientSendError) as caught:
        await provider.send(make_message())

    assert caught.value.slow_down is True
    assert "421" in caught.value.detail
    assert server.received == []


# --- the connection pool ------------------------------------------------------------------


async def test_sends_reuse_one_connection(provider: SmtpProvider, server: SmtpServer) -> None:
    for delivery_id in range(5):
        await provider.send(make_message(delivery_id))

    assert len(server.received) == 5
    assert server.connections == 1
    assert {received.connection for received in server.received} == {1}


@pytest.mark.parametrize("security", ["none", "tls"])
async def test_a_connection_the_server_closed_while_idle_is_replaced(security: Any) -> None:
    # Over plain TCP the provider has usually not read the close yet, and its MAIL FROM finds
    # the connection dead; over TLS the close is seen first. Either way the send goes through.
    async with SmtpServer(security=security) as server:
        provider = SmtpProvider(make_config(server), allow_private=True)
        try:
            for delivery_id in range(3):
                await provider.send(make_message(delivery_id))
                await server.disconnect_all()
        finally:
            await provider.close()

    assert [r.connection for r in server.received] == [1, 2, 3]


async def test_concurrent_sends_share_a_pool_of_two(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.data_delay = 0.05

    await asyncio.gather(*(provider.send(make_message(i)) for i in range(8)))

    assert sorted(int(r.message["X-Bulletin-Delivery"]) for r in server.received) == list(range(8))
    assert server.connections == 2
    assert server.peak_connections == 2
    assert {received.connection for received in server.received} == {1, 2}


async def test_close_closes_every_connection(provider: SmtpProvider, server: SmtpServer) -> None:
    await asyncio.gather(*(provider.send(make_message(i)) for i in range(2)))
    assert server.open_connections == 2

    await provider.close()

    await server.wait_disconnected()
    assert server.open_connections == 0


async def test_a_send_that_never_got_a_connection_is_transient_not_in_doubt(
    server: SmtpServer,
) -> None:
    """Waiting for a free connection is bounded by the adapter: the engine's send timeout
    would cut it off as "in doubt" although nothing was sent."""
    provider = SmtpProvider(
        make_config(server, connections=1), connect_timeout=0.3, allow_private=True
    )
    server.data_delay = 1.0
    try:
        first = asyncio.create_task(provider.send(make_message(1)))

        async def first_holds_the_connection() -> bool:
            return server.connections == 1

        await eventually(first_holds_the_connection)
        with pytest.raises(TransientSendError, match="nothing was sent"):
            await provider.send(make_message(2))
        await first
    finally:
        await provider.close()
    assert [r.message["X-Bulletin-Delivery"] for r in server.received] == ["1"]
