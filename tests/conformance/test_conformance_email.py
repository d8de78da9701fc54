"""Email conformance: what Bulletin's SMTP adapter puts on the wire, read by references nobody
on this project wrote.

Messages go through :class:`SmtpProvider` over real SMTP to the local server, and the raw
``DATA`` it received is read twice: by Python's ``email`` parser (``policy.default``) and by
``mail-parser`` (4.x) as an independent oracle. Where the exact form matters (list headers,
``Message-ID``, ``Subject``) the bytes on the wire are asserted as well: a parser decodes an
RFC 2047 encoded ``List-Unsubscribe`` back into a link, but a mail client offering one-click
unsubscribe does not. The rules: RFC 5322 (lines, msg-id, folding), RFC 2047 (encoded words),
RFC 2369 and RFC 8058 (list headers, one-click), RFC 5321 (line length in ``DATA``).

The last part holds the SMTP stand-in to those rules: a test per rule shows it refusing what a
strict receiving server refuses, with a 5xx reply.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import aiosmtplib
import mailparser
import pytest

from bulletin.channels.base import OutboundMessage
from bulletin.channels.configs import SmtpConfig
from bulletin.channels.smtp import SmtpProvider, build_email, wire_bytes
from bulletin.devservers.smtp import ReceivedEmail, SmtpServer, content_refusal
from bulletin.errors import PermanentSendError
from e2e.stack import Stack
from e2e.test_channels_e2e import ZANELE
from support.http import body_of
from support.http_factories import notify, post_people
from support.outbound import outbound_message
from support.settling import settled_notification

SENDER = "notices@water.example.org"
RECIPIENT = "zoe@example.net"
ONE_CLICK = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
# RFC 5322 3.6.4 msg-id: "<" dot-atom-text "@" dot-atom-text ">".
ATOMS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
MSG_ID = re.compile(rf"<{ATOMS}@{ATOMS}>")
# RFC 2047 2: "=?" charset "?" encoding "?" encoded-text "?=".
ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
LONG_LINK = "https://bulletin.example.org/p/" + "k" * 136 + "/unsubscribe?category=payroll&s=1"


def make_config(server: SmtpServer, **changes: Any) -> SmtpConfig:
    values: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "security": "none",
        "from_address": SENDER,
        "from_name": "Städtische Wasserwerke",
    }
    return SmtpConfig.model_validate(values | changes)


def make_message(
    delivery_id: int = 42, *, address: str = RECIPIENT, **changes: Any
) -> OutboundMessage:
    return outbound_message("email", delivery_id=delivery_id, address=address, **changes)


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


async def sent(provider: SmtpProvider, server: SmtpServer, message: OutboundMessage) -> bytes:
    """The raw ``DATA`` the server received for ``message``."""
    await provider.send(message)
    received: ReceivedEmail = server.received[-1]
    return received.raw


def header_lines(raw: bytes, name: str) -> list[list[bytes]]:
    """Each ``name`` field of ``raw`` as its lines on the wire (the first, then continuations)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    fields: list[list[bytes]] = []
    inside = False
    for line in head:
        if line[:1] in (b" ", b"\t"):
            if inside:
                fields[-1].append(line)
            continue
        inside = line.split(b":", 1)[0].lower() == name.lower().encode()
        if inside:
            fields.append([line])
    return fields


def stdlib(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def unfolded(value: str) -> str:
    """RFC 5322 2.2.3 unfolding: mail-parser hands back an unencoded header as it was folded."""
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def oracle(raw: bytes, name: str) -> str:
    """The value of header ``name`` as mail-parser reads it."""
    parsed = mailparser.parse_from_bytes(raw)
    value = parsed.headers.get(name)
    assert isinstance(value, str), f"mail-parser finds no single {name}: {value!r}"
    return unfolded(value)


def assert_well_formed_lines(raw: bytes) -> None:
    """CRLF line ends only; no line over 998 octets (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6)."""
    assert raw.endswith(b"\r\n")
    lines = raw.split(b"\r\n")
    assert all(b"\n" not in line and b"\r" not in line for line in lines), "a bare CR or LF"
    assert max(len(line) for line in lines) <= 998


# --- List-Unsubscribe and List-Unsubscribe-Post ----------------------------------------------


@pytest.mark.parametrize(
    "link",
    [
        "https://b.example/p/1.abc/unsubscribe",
        "https://bulletin.example.org/p/3f.Qx9_-aZ0bC1dE2fG/unsubscribe?category=payroll",
        LONG_LINK,
    ],
    ids=["short", "with-query", "200-characters"],
)
async def test_list_unsubscribe_is_the_link_in_angle_brackets_on_one_line_with_one_click(
    provider: SmtpProvider, server: SmtpServer, link: str
) -> None:
    assert len(LONG_LINK) == 200
    raw = await sent(provider, server, make_message(unsubscribe_url=link))

    assert header_lines(raw, "List-Unsubscribe") == [[f"List-Unsubscribe: <{link}>".encode()]]
    assert header_lines(raw, "List-Unsubscribe-Post") == [[ONE_CLICK]]
    assert stdlib(raw)["List-Unsubscribe"] == f"<{link}>"
    assert oracle(raw, "List-Unsubscribe") == f"<{link}>"
    assert oracle(raw, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert_well_formed_lines(raw)


async def test_an_http_link_is_listed_but_not_offered_as_one_click(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    """RFC 8058 3.1: one-click needs an https URI; a receiver ignores the claim with another."""
    link = "http://127.0.0.1:8000/p/1.abcdefghijklmnop/unsubscribe?category=payroll"
    raw = await sent(provider, server, make_message(unsubscribe_url=link))

    assert header_lines(raw, "List-Unsubscribe") == [[f"List-Unsubscribe: <{link}>".encode()]]
    assert header_lines(raw, "List-Unsubscribe-Post") == []


def test_several_list_uris_fold_only_at_whitespace_and_never_as_encoded_words() -> None:
    """Bulletin sends one link; a header with a mailto and a long https link (RFC 2369 allows
    a list) shows the folding rule: at the space after a comma, each URI whole."""
    email_message = build_email(make_message(), SmtpConfig(host="h.example", from_address=SENDER))
    value = f"<mailto:unsubscribe@water.example.org?subject=unsubscribe>, <{LONG_LINK}>"
    email_message["List-Unsubscribe"] = value

    raw = wire_bytes(email_message)

    assert header_lines(raw, "List-Unsubscribe") == [
        [
            b"List-Unsubscribe: <mailto:unsubscribe@water.example.org?subject=unsubscribe>,",
            f" <{LONG_LINK}>".encode(),
        ]
    ]
    assert not ENCODED_WORD.search(b"".join(header_lines(raw, "List-Unsubscribe")[0]))
    assert stdlib(raw)["List-Unsubscribe"] == value
    assert oracle(raw, "List-Unsubscribe") == value


async def test_a_link_too_long_for_a_line_is_refused_not_encoded(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    link = "https://bulletin.example.org/p/" + "k" * 1000

    with pytest.raises(PermanentSendError, match="too long for a line"):
        await provider.send(make_message(unsubscribe_url=link))

    assert server.received == []


# --- Message-ID --------------------------------------------------------------------------------


async def test_the_same_delivery_id_in_two_installations_gives_two_message_ids(
    server: SmtpServer,
) -> None:
    """Delivery ids start at 1 in every database, and two installations may send from one
    domain: the Message-ID must still be unique in the world (RFC 5322 3.6.4)."""
    ids: list[str] = []
    for _installation in range(2):
        provider = SmtpProvider(make_config(server), allow_private=True)
        try:
            accepted = await provider.send(make_message(1))
        finally:
            await provider.close()
        ids.append(accepted.provider_message_id)

    first, second = server.received
    assert ids[0] != ids[1]
    assert [str(first.message["Message-ID"]), str(second.message["Message-ID"])] == ids
    assert header_lines(first.raw, "Message-ID") != header_lines(second.raw, "Message-ID")


async def test_every_attempt_of_one_delivery_has_the_same_well_formed_message_id(
    server: SmtpServer,
) -> None:
    domain = "notices.a-rather-long-subdomain-name.water-works-of-the-city.example.org"
    provider = SmtpProvider(make_config(server, from_address=f"news@{domain}"), allow_private=True)
    message = make_message(7)
    try:
        first = await provider.send(message)
        again = await provider.send(make_message(7, attempt=2, message_id=message.message_id))
    finally:
        await provider.close()

    expected = f"<bulletin.{message.message_id}.7@{domain}>"
    assert first.provider_message_id == again.provider_message_id == expected
    assert MSG_ID.fullmatch(expected)
    for received in server.received:
        # Longer than 78 characters, and still one line, with no encoded word.
        assert header_lines(received.raw, "Message-ID") == [[f"Message-ID: {expected}".encode()]]
        assert stdlib(received.raw)["Message-ID"] == expected
        assert oracle(received.raw, "Message-ID") == expected


# --- Subject -----------------------------------------------------------------------------------


async def test_an_ascii_subject_is_plain(provider: SmtpProvider, server: SmtpServer) -> None:
    raw = await sent(provider, server, make_message(title="Payslips for March"))

    assert header_lines(raw, "Subject") == [[b"Subject: Payslips for March"]]
    assert oracle(raw, "Subject") == "Payslips for March"


async def test_a_long_ascii_subject_is_folded_at_spaces_and_stays_plain(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    title = " ".join(["Reminder: the canteen on the third floor closes early"] * 4)
    url_title = "Read https://intranet.example.org/" + "x" * 120 + " today"
    raw = await sent(provider, server, make_message(title=title))
    url_raw = await sent(provider, server, make_message(title=url_title))

    [lines] = header_lines(raw, "Subject")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert not ENCODED_WORD.search(b"".join(lines))
    assert b"".join(lines) == f"Subject: {title}".encode()
    # A word longer than a folded line stays whole on a line of its own (RFC 5322 2.1.1).
    [url_lines] = header_lines(url_raw, "Subject")
    assert url_lines == [
        b"Subject: Read",
        b" https://intranet.example.org/" + b"x" * 120,
        b" today",
    ]
    for wire, text in ((raw, title), (url_raw, url_title)):
        assert stdlib(wire)["Subject"] == text
        assert oracle(wire, "Subject") == text


@pytest.mark.parametrize(
    "title",
    [
        "Wasser: Störung in Köln ☔",
        "Long subject that names the Störung in the header near the end of the first line",
        " ".join(["Wasser: Störung in Köln ☔"] * 6) + " end",
        "日本語のお知らせ: 明日の会議は午後三時からです。よろしくお願いします。" * 2,
    ],
    ids=["short", "fold-before-encoded", "long-mixed", "cjk"],
)
async def test_a_non_ascii_subject_is_encoded_and_decodes_to_the_title(
    provider: SmtpProvider, server: SmtpServer, title: str
) -> None:
    raw = await sent(provider, server, make_message(title=title))

    [lines] = header_lines(raw, "Subject")
    assert all(line.isascii() for line in lines)
    # RFC 2047 2: an encoded word is at most 75 characters, a line holding one at most 76.
    assert all(len(line) <= 76 for line in lines)
    words = ENCODED_WORD.findall(b"".join(lines))
    assert words
    assert all(len(word) <= 75 for word in words)
    assert stdlib(raw)["Subject"] == title
    assert oracle(raw, "Subject") == title


async def test_text_that_looks_like_an_encoded_word_reaches_the_reader_as_written(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    title = "Why =?utf-8?q?this?= shows as written"
    raw = await sent(provider, server, make_message(title=title))

    assert stdlib(raw)["Subject"] == title
    assert oracle(raw, "Subject") == title


async def test_with_smtputf8_the_subject_and_names_go_as_utf8(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    """A non-ASCII local part needs SMTPUTF8 (RFC 6531), and then headers are UTF-8 as they
    are (RFC 6532): no encoded words. The stand-in offers SMTPUTF8."""
    raw = await sent(provider, server, make_message(address="zoë@example.net"))

    assert header_lines(raw, "Subject") == [["Subject: Wasser: Störung in Köln ☔".encode()]]
    assert header_lines(raw, "To") == [["To: Zoë Ångström <zoë@example.net>".encode()]]
    assert not ENCODED_WORD.search(raw.split(b"\r\n\r\n", 1)[0])
    assert stdlib(raw)["Subject"] == "Wasser: Störung in Köln ☔"
    assert oracle(raw, "Subject") == "Wasser: Störung in Köln ☔"
    assert mailparser.parse_from_bytes(raw).to == [("Zoë Ångström", "zoë@example.net")]
    assert_well_formed_lines(raw)


# --- every header, both readers -----------------------------------------------------------------


async def test_every_header_reads_the_same_in_both_parsers(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    message = make_message(
        9,
        title="Wasser: Störung in Köln ☔ " * 5,
        unsubscribe_url=LONG_LINK,
        preferences_url=LONG_LINK.removesuffix("/unsubscribe?category=payroll&s=1"),
    )
    raw = await sent(provider, server, message)
    ours = stdlib(raw)
    theirs = mailparser.parse_from_bytes(raw)

    assert raw.isascii()
    assert_well_formed_lines(raw)
    assert list(ours.keys()) == list(theirs.headers.keys())
    assert ours.defects == []
    assert theirs.defects == []
    for name in ours:
        assert ours[name].defects == (), name
    assert [(a.display_name, a.addr_spec) for a in ours["From"].addresses] == theirs.from_
    assert theirs.from_ == [("Städtische Wasserwerke", SENDER)]
    assert [(a.display_name, a.addr_spec) for a in ours["To"].addresses] == theirs.to
    assert theirs.to == [("Zoë Ångström", RECIPIENT)]
    assert ours["Date"].datetime == theirs.date
    for name in (
        "Subject",
        "Message-ID",
        "X-Bulletin-Delivery",
        "Auto-Submitted",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "MIME-Version",
    ):
        assert str(ours[name]) == oracle(raw, name), name
    assert ours["Subject"] == " ".join(message.title.split())
    assert ours.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in ours.iter_parts()] == ["text/plain", "text/html"]
    assert theirs.text_plain[0].startswith("Kein Wasser bis 14:00.")
    # Quoted-printable lines are at most 76 characters (RFC 2045 6.7).
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    # Lines stay within RFC 5322's 78 where whitespace allows; a link or a message id, which
    # cannot be broken, takes a longer line.
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    unbroken = (b"List-Unsubscribe:", b"Message-ID:")
    assert all(len(line) <= 78 for line in head if not line.startswith(unbroken))


async def test_a_served_bulletin_sends_conforming_email(stack: Stack) -> None:
    """The whole path, on both databases: the link the engine makes, the Message-ID from the
    stored message and delivery, through the strict stand-in, read by both parsers."""
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(
        stack.api, "zanele", title="Payslips", body="Hello", channels=["email"], category="payroll"
    )
    [listed] = await settled_notification(stack.api, message_id)
    delivery = body_of(await stack.api.get(f"/v1/deliveries/{listed['id']}"), 200)
    assert delivery["state"] == "sent"
    [mail] = stack.smtp.received
    raw = mail.raw

    [[line]] = header_lines(raw, "List-Unsubscribe")
    link = line.removeprefix(b"List-Unsubscribe: <").removesuffix(b">").decode()
    assert link.startswith(f"{stack.base_url}/p/")
    assert link.endswith("/unsubscribe?category=payroll")
    assert len(line) > 78  # long enough that the email package used to encode it
    # The served stack is plain http: a link, but no one-click (RFC 8058 3.1).
    assert header_lines(raw, "List-Unsubscribe-Post") == []
    expected_id = f"<bulletin.{message_id}.{delivery['id']}@acme.example>"
    assert header_lines(raw, "Message-ID") == [[f"Message-ID: {expected_id}".encode()]]
    assert delivery["provider_message_id"] == expected_id
    for name in ("Subject", "Message-ID", "List-Unsubscribe"):
        assert str(stdlib(raw)[name]) == oracle(raw, name), name
    assert content_refusal(raw, require_one_click=False) is None
    assert_well_formed_lines(raw)


# --- the SMTP stand-in refuses what strict servers refuse ---------------------------------------


def raw_message(*headers: str, body: str = "Hello.") -> bytes:
    """A message from its header lines, with the fields a rule below does not concern."""
    given = {header.split(":", 1)[0].lower() for header in headers if not header[:1].isspace()}
    defaults = [
        f"From: {SENDER}",
        f"To: {RECIPIENT}",
        "Subject: Hello",
        "Date: Tue, 03 Dec 2024 10:00:00 +0000",
        "Message-ID: <test.1@water.example.org>",
    ]
    lines = [line for line in defaults if line.split(":", 1)[0].lower() not in given]
    return "\r\n".join([*lines, *headers, "", body, ""]).encode()


async def transmit(server: SmtpServer, raw: bytes) -> tuple[int, str]:
    """Send ``raw`` over SMTP; the server's reply to the content, code and text."""
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port) as client:
        await client.mail(SENDER)
        await client.rcpt(RECIPIENT)
        try:
            reply = await client.data(raw)
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
    return reply.code, reply.message


ENCODED_LIST_UNSUBSCRIBE = (
    "List-Unsubscribe: =?utf-8?q?=3Chttps=3A//bulletin=2Eexample=2Eorg/p/aaaaaaaa?=\r\n"
    " =?utf-8?q?aaaa/unsubscribe=3Fcategory=3Dpayroll=3E?="
)


async def test_the_stand_in_takes_a_conforming_message(server: SmtpServer) -> None:
    raw = raw_message(
        "List-Unsubscribe: <mailto:u@water.example.org>,\r\n <https://b.example/u?c=1>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        body="x" * 998,
    )
    server.require_one_click = True

    code, _ = await transmit(server, raw)

    assert code == 250
    assert len(server.received) == 1


@pytest.mark.parametrize(
    "header",
    [
        ENCODED_LIST_UNSUBSCRIBE,
        "List-Unsubscribe: =?utf-8?b?PGh0dHBzOi8vYi5leGFtcGxlL3U+?=",
    ],
    ids=["q", "b"],
)
async def test_the_stand_in_refuses_an_encoded_list_unsubscribe(
    server: SmtpServer, header: str
) -> None:
    code, text = await transmit(server, raw_message(header))

    assert code == 554
    assert text.startswith("5.6.0")
    assert "RFC 2047" in text
    assert server.received == []


@pytest.mark.parametrize(
    "value",
    [
        "https://b.example/u",
        "<https://b.example/u",
        "<https://b.example/ u>",
        "<https://b.example/u> <mailto:u@b.example>",
        "<>",
        "<b.example/u>",
    ],
    ids=["no-brackets", "unclosed", "space-inside", "no-comma", "empty", "no-scheme"],
)
async def test_the_stand_in_refuses_a_list_unsubscribe_that_is_not_rfc_2369(
    server: SmtpServer, value: str
) -> None:
    code, text = await transmit(server, raw_message(f"List-Unsubscribe: {value}"))

    assert code == 554
    assert "RFC 2369" in text
    assert server.received == []


ONE_CLICK_POST = "List-Unsubscribe-Post: List-Unsubscribe=One-Click"


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        (["List-Unsubscribe: <http://b.example/u>", ONE_CLICK_POST], "https URI"),
        (["List-Unsubscribe: <mailto:u@b.example>", ONE_CLICK_POST], "https URI"),
        ([ONE_CLICK_POST], "https URI"),
        (
            ["List-Unsubscribe: <https://b.example/u>", "List-Unsubscribe-Post: One-Click"],
            "exactly",
        ),
        (
            [
                "List-Unsubscribe: <https://b.example/u>",
                "List-Unsubscribe-Post: =?utf-8?q?List-Unsubscribe=3DOne-Click?=",
            ],
            "exactly",
        ),
    ],
    ids=["http", "mailto-only", "no-list-unsubscribe", "other-value", "encoded"],
)
async def test_the_stand_in_refuses_one_click_that_is_not_rfc_8058(
    server: SmtpServer, headers: list[str], rule: str
) -> None:
    code, text = await transmit(server, raw_message(*headers))

    assert code == 554
    assert "RFC 8058" in text
    assert rule in text
    assert server.received == []


async def test_the_stand_in_refuses_a_message_without_a_message_id(server: SmtpServer) -> None:
    raw = raw_message().replace(b"Message-ID: <test.1@water.example.org>\r\n", b"")
    assert b"Message-ID" not in raw

    code, text = await transmit(server, raw)

    assert (code, text[:5]) == (550, "5.7.1")
    assert "no Message-ID" in text
    assert server.received == []


@pytest.mark.parametrize(
    "value",
    [
        "bulletin.42@water.example.org",
        "<bulletin.42>",
        "<bulletin 42@water.example.org>",
        "<bulletin..42@water.example.org>",
        "=?utf-8?q?=3Cbulletin=2E42=40water=2Eexample=2Eorg=3E?=",
        "",
    ],
    ids=["no-brackets", "no-at", "space", "empty-atom", "encoded", "empty"],
)
async def test_the_stand_in_refuses_a_malformed_message_id(server: SmtpServer, value: str) -> None:
    code, text = await transmit(server, raw_message(f"Message-ID: {value}"))

    assert (code, text[:5]) == (550, "5.7.1")
    assert "RFC 5322 3.6.4" in text
    assert server.received == []


async def test_the_stand_in_refuses_a_line_over_998_octets(server: SmtpServer) -> None:
    code, text = await transmit(server, raw_message(body="x" * 999))

    assert (code, text[:5]) == (554, "5.6.0")
    assert "998" in text
    assert server.received == []
    # The rule holds for header lines too, where aiosmtpd's own limit (1001 with CRLF) would not.
    assert content_refusal(raw_message("X-Long: " + "y" * 991)) is not None
    assert content_refusal(raw_message("X-Long: " + "y" * 990)) is None


async def test_the_stand_in_can_refuse_mail_without_one_click_unsubscribe(
    server: SmtpServer,
) -> None:
    server.require_one_click = True

    code, text = await transmit(server, raw_message())
    listed_only, _ = await transmit(server, raw_message("List-Unsubscribe: <https://b.example/u>"))

    assert (code, text[:5]) == (550, "5.7.1")
    assert "one-click" in text
    assert listed_only == 550
    assert server.received == []


async def test_the_adapter_maps_a_refused_message_to_a_permanent_failure(
    provider: SmtpProvider, server: SmtpServer
) -> None:
    server.require_one_click = True

    with pytest.raises(PermanentSendError) as caught:
        await provider.send(make_message())

    assert caught.value.suppress_address is False
    assert "550 5.7.1" in caught.value.detail
