"""Email through an SMTP server (a relay, or an email service's SMTP endpoint), with aiosmtplib.

:func:`build_email` turns a delivery into a MIME message: ``multipart/alternative`` with a
plain-text and an HTML part, UTF-8 throughout, and a ``Message-ID`` unique in the world and the
same for every attempt (:func:`message_id`), so that a resend of a delivery whose outcome was
unknown is recognisable as the same message. :func:`wire_bytes` writes it for SMTP: the email
package's ``policy.SMTP``, except for the headers Bulletin folds itself (:class:`WirePolicy`):
list headers and message ids stay as RFC 2369 and RFC 5322 write them, never as RFC 2047
encoded words, and the ``Subject`` is encoded only where it has to be.

:class:`SmtpProvider` keeps a small pool of open connections and sends one message per SMTP
transaction (``MAIL FROM``, ``RCPT TO``, ``DATA``). SMTP has no idempotency key, so the provider
does not deduplicate. Replies are mapped here, at the boundary, onto Bulletin's three outcomes:

* anything that fails before the message content goes out (connecting, TLS, ``EHLO``, ``MAIL
  FROM``, ``RCPT TO``, a timeout of those) is transient: a server delivers nothing until it has
  answered the content, so nothing was sent;
* authentication refused (535, or 530 "authentication required"): transient for a minute with
  the whole account slowed down, logged loudly, because only an operator can fix credentials;
* a TLS certificate that does not verify, or a server without what the configuration needs
  (STARTTLS, AUTH): transient for a minute, the account slowed down, logged loudly, likewise;
* 421 (the server is closing the channel, usually overloaded or rate limiting) anywhere:
  transient, and the account slows down;
* other 4xx replies: transient;
* a recipient refused with 5xx: permanent, and the address is suppressed (a hard bounce), unless
  the enhanced status code blames policy, the system or the content rather than the mailbox
  (``5.3``-``5.7``): those do not say the address is bad, and suppressing on them would let one
  misconfigured relay ("relaying denied") suppress every address it is given;
* ``MAIL FROM`` or ``DATA`` refused with 5xx: permanent, not the address's fault;
* the connection lost once ``DATA`` has been issued: in doubt, because the server may have
  queued the message. aiosmtplib does not say whether the content had gone out when the
  connection broke during ``DATA``, and "in doubt" is the side that never delivers twice. No
  answer at all is left to the engine's send timeout: its ``TimeoutError`` means in doubt too.

It is over 400 lines because the wire form of a message (folding and encoding by RFC 5322 and
RFC 2047) and the SMTP transaction are one boundary: each reply's meaning depends on what was
written, and the list above is the one place that maps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import re
import socket
import ssl
from dataclasses import dataclass
from email.charset import Charset
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import structlog
from email_validator import EmailNotValidError, validate_email
from structlog.typing import FilteringBoundLogger

from bulletin.channels import egress
from bulletin.channels.base import Accepted, OutboundMessage, Provider
from bulletin.channels.configs import SmtpConfig
from bulletin.errors import (
    ChannelError,
    InDoubtSendError,
    PermanentSendError,
    TransientSendError,
)

log = structlog.get_logger("bulletin.channels.smtp")

#: "Service not available, closing transmission channel" (RFC 5321 4.2.3).
SERVICE_NOT_AVAILABLE = 421
#: "Authentication required" (RFC 4954).
_AUTH_REQUIRED = 530
#: How long an account pauses after an answer only an operator can fix (credentials, TLS).
_ACCOUNT_RETRY_SECONDS = 60.0
#: How long an account pauses after a 421: the server is shedding load or rate limiting.
_SERVICE_UNAVAILABLE_PAUSE = 30.0
#: Longest wait for the answer to ``RSET`` or ``QUIT`` when tidying a connection up.
_TIDY_TIMEOUT = 2.0

# An enhanced status code (RFC 3463) at the start of a reply text: class.subject.detail.
_ENHANCED_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
# Subjects that blame the mailbox or its address: 0 other/undefined, 1 addressing, 2 mailbox.
_ADDRESS_SUBJECTS = frozenset({"0", "1", "2"})
_BLANK_LINES = re.compile(r"\n[ \t]*\n+")

#: The longest a line of a message may be, CRLF not counted (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6).
MAX_LINE_OCTETS = 998
#: Where header lines are folded when whitespace allows: within RFC 5322's 78 and RFC 2047's 76
#: for lines holding encoded words.
_FOLD_WIDTH = 76
#: The longest an RFC 2047 encoded word may be.
_ENCODED_WORD_MAX = 75
#: Headers whose values are message ids or angle-bracketed URIs (RFC 5322 3.6.4, RFC 2369,
#: RFC 2919, RFC 8058): written as they are, folded only at their own whitespace.
_IDENTIFIER_HEADERS = frozenset(
    {
        "message-id",
        "in-reply-to",
        "references",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-help",
        "list-subscribe",
        "list-post",
        "list-owner",
        "list-archive",
    }
)
#: Unstructured text headers that Bulletin encodes and folds itself.
_TEXT_HEADERS = frozenset({"subject"})
_WRITTEN_HEADERS = _IDENTIFIER_HEADERS | _TEXT_HEADERS
_UTF8 = Charset("utf-8")
# Characters that cannot stand in an angle-bracketed URI of a list header (RFC 2369, RFC 3986).
_NOT_IN_URI = re.compile(r"[\x00-\x20<>\"\x7f]")


def build_email(
    message: OutboundMessage, config: SmtpConfig, *, now: dt.datetime | None = None
) -> EmailMessage:
    """The MIME message for one delivery, addressed from ``config`` to ``message.address``.

    Raises ``ValueError`` when an address cannot be written in a message header.
    """
    sender = wire_address(config.from_address)
    recipient = wire_address(message.address)
    email_message = EmailMessage(policy=_BUILD)
    email_message["From"] = _mailbox(config.from_name, sender)
    email_message["To"] = _mailbox(message.recipient_name, recipient)
    email_message["Subject"] = _one_line(message.title)
    email_message["Date"] = format_datetime(now or dt.datetime.now(dt.UTC))
    email_message["Message-ID"] = message_id(message, config.from_address)
    email_message["X-Bulletin-Delivery"] = str(message.delivery_id)
    email_message["Auto-Submitted"] = "auto-generated"
    if message.unsubscribe_url:
        email_message["List-Unsubscribe"] = _angle_uri(message.unsubscribe_url)
        # RFC 8058: a mail client may unsubscribe with one POST, without opening a page, but
        # only to an https link; a receiver ignores the claim with any other.
        if urlsplit(message.unsubscribe_url).scheme.lower() == "https":
            email_message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # Quoted-printable keeps both parts 7-bit clean with short lines, so the message passes
    # through any server, including one without 8BITMIME.
    email_message.set_content(
        message.body + text_footer(message),
        subtype="plain",
        charset="utf-8",
        cte="quoted-printable",
    )
    email_message.add_alternative(
        html_from_text(message) if message.html is None else with_html_footer(message),
        subtype="html",
        charset="utf-8",
        cte="quoted-printable",
    )
    return email_message


def html_from_text(message: OutboundMessage) -> str:
    """An HTML version of a plain-text message: its title as a heading, its paragraphs, and
    the preference and unsubscribe links at the foot when it has them."""
    language = f' lang="{html.escape(message.locale)}"' if message.locale else ""
    title = html.escape(message.title)
    parts = [
        "<!DOCTYPE html>",
        f"<html{language}>",
        '<head><meta charset="utf-8">',
        f"<title>{title}</title></head>",
        "<body>",
    ]
    if message.title:
        parts.append(f"<h1>{title}</h1>")
    text = message.body.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    for paragraph in _BLANK_LINES.split(text):
        if paragraph.strip():
            lines = (html.escape(line) for line in paragraph.split("\n"))
            parts.append("<p>" + "<br>\n".join(lines) + "</p>")
    if footer := html_footer(message):
        parts.append(footer)
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def html_footer(message: OutboundMessage) -> str:
    """The foot of an email's HTML part: its preference and unsubscribe links, if any."""
    links = [
        f'<a href="{html.escape(url, quote=True)}">{label}</a>'
        for url, label in (
            (message.preferences_url, "Manage your preferences"),
            (message.unsubscribe_url, "Unsubscribe"),
        )
        if url
    ]
    if not links:
        return ""
    return '<hr>\n<p style="font-size:small">' + " &middot; ".join(links) + "</p>"


def with_html_footer(message: OutboundMessage) -> str:
    """The message's own HTML with the footer placed before ``</body>`` (or at its end)."""
    assert message.html is not None
    footer = html_footer(message)
    if not footer:
        return message.html
    at = message.html.lower().rfind("</body>")
    if at < 0:
        return f"{message.html}\n{footer}\n"
    return f"{message.html[:at]}{footer}\n{message.html[at:]}"


def text_footer(message: OutboundMessage) -> str:
    """The foot of an email's plain-text part: the preference link, if it has one.

    The unsubscribe link stays in the headers and the HTML part: a text reader follows the
    preference page, which unsubscribes too.
    """
    if not message.preferences_url:
        return ""
    return f"\n\n-- \nManage your preferences: {message.preferences_url}\n"


def message_id(message: OutboundMessage, from_address: str) -> str:
    """The ``Message-ID`` of a delivery: ``<bulletin.{message id}.{delivery id}@{from domain}>``.

    It must be unique in the world (RFC 5322 3.6.4), and the same for every attempt to send the
    delivery, so that a resend of one whose outcome was unknown carries the id of the first
    attempt and a receiver can recognise the copy. The delivery id alone is stable but repeats
    between installations, because every database counts deliveries from 1; the sender's domain
    does not tell them apart either when two installations send from one domain. The message's
    id is a UUIDv7 made when the message was created (a millisecond time and 62 random bits), so
    no other installation has it, and with the delivery id it names one delivery of that
    message. Both are fixed before the first attempt. A random id per attempt would be unique
    but would change between attempts; one stored per delivery would add a column for what
    these two already give. The message id is written as the API shows it, so an operator can
    find the message from a mail log.
    """
    domain = wire_address(from_address).rpartition("@")[2]
    return f"<bulletin.{message.message_id}.{message.delivery_id}@{domain}>"


class WirePolicy(EmailPolicy):
    """``email.policy.default`` (``SMTP`` with ``linesep="\\r\\n"``, ``SMTPUTF8`` with
    ``utf8=True`` too), except for the headers Bulletin writes itself.

    The email package folds a header line past 78 characters, and where it cannot break a long
    word (a URL) it rewrites the whole value as RFC 2047 encoded words: ``List-Unsubscribe``
    became ``=?utf-8?q?=3Chttps=3A//...?=``, which no mail client reads as a list header, so
    the email lost its one-click unsubscribe. Encoded words are for text, not for URIs or
    message ids (RFC 2047 5). Its folding also puts a second space before an encoded word that
    it moves to a new line, which changes a ``Subject``. So identifier headers
    (:data:`_IDENTIFIER_HEADERS`) are written as they are and folded only at their own
    whitespace, a long URL staying whole on its line (up to :data:`MAX_LINE_OCTETS`), and the
    ``Subject`` is encoded only when it needs to be (:func:`_fold_text`). The other headers
    (addresses, MIME) are the email package's.

    These headers are stored as given, so a message must be built with this policy too, not
    only written with it: the email package parses a value when it is set, and would decode a
    title's text that merely looks like an encoded word. Reading one back still parses it.
    """

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        """The value as given for the headers written here; parsed as usual for the others."""
        # The parent refuses a value with a line break in it, for these headers too.
        stored = super().header_store_parse(name, value)
        if isinstance(value, str) and name.lower() in _WRITTEN_HEADERS:
            return name, value
        return stored

    def fold(self, name: str, value: Any) -> str:
        """``name: value`` as it is written, lines ended with ``linesep``."""
        written = _fold_header(name, str(value), utf8=self.utf8, linesep=self.linesep)
        return super().fold(name, value) if written is None else written

    def fold_binary(self, name: str, value: Any) -> bytes:
        """:meth:`fold` as bytes: ASCII, or UTF-8 with ``utf8`` (SMTPUTF8, RFC 6532)."""
        written = _fold_header(name, str(value), utf8=self.utf8, linesep=self.linesep)
        if written is None:
            return super().fold_binary(name, value)
        return written.encode("utf-8" if self.utf8 else "ascii")


#: A message is built at 76: the email package writes quoted-printable lines as long as the
#: policy's line length, 78 by default, and RFC 2045 6.7 allows 76.
_BUILD = WirePolicy(max_line_length=76)
_WIRE = WirePolicy(linesep="\r\n")
_WIRE_UTF8 = _WIRE.clone(utf8=True)


def wire_bytes(message: EmailMessage, *, utf8: bool = False) -> bytes:
    """``message`` as it goes in SMTP ``DATA``: CRLF line ends, no line over 998 octets.

    ``utf8`` writes non-ASCII header text as UTF-8 (for a server that takes SMTPUTF8) instead
    of encoded words. Raises ``ValueError`` when a header cannot be written within the limits.
    """
    return message.as_bytes(policy=_WIRE_UTF8 if utf8 else _WIRE)


def _fold_header(name: str, value: str, *, utf8: bool, linesep: str) -> str | None:
    """The header as Bulletin writes it, or ``None`` when the email package writes it."""
    if name.lower() in _IDENTIFIER_HEADERS:
        if not value.isascii():
            raise ValueError(f"the {name} header may hold only ASCII (URIs and message ids)")
        return _fold_words(name, value.split(), linesep)
    if name.lower() in _TEXT_HEADERS:
        return _fold_text(name, value, utf8=utf8, linesep=linesep)
    return None


def _fold_words(name: str, words: list[str], linesep: str) -> str:
    """``name: word word ...``, a line started wherever the next word would pass the fold
    width. A word is never split: a long one takes a line of its own."""
    lines = [f"{name}:"]
    for index, word in enumerate(words):
        if index and len(lines[-1]) + 1 + len(word) > _FOLD_WIDTH:
            lines.append("")
        lines[-1] += f" {word}"
    return _joined(name, lines, linesep)


def _fold_text(name: str, text: str, *, utf8: bool, linesep: str) -> str:
    """An unstructured header (RFC 5322 3.2.5), its words separated by single spaces.

    The text goes as it is when every word can: ASCII, or any text with ``utf8`` (RFC 6532).
    Otherwise (non-ASCII without ``utf8``, control characters, a word that would read as an
    encoded word, a word too long for a line) all of it goes as RFC 2047 encoded words, each
    filling what is left of its line within 76 characters (RFC 2047 2). All of it, not only the
    words that need it, because a line break between plain text and an encoded word is read
    two ways: RFC 2047 keeps the space there, and the decoder of Python's ``email.header``
    (which many readers use, mail-parser among them) drops it, running two words together.
    """
    words = text.split()
    longest = MAX_LINE_OCTETS - len(name) - 2
    if not any(_needs_encoding(word, utf8=utf8, longest=longest) for word in words):
        return _fold_words(name, words, linesep)
    lines = [f"{name}:"]
    rest = " ".join(words)
    while rest:
        word, rest = _encoded_word(rest, room=_FOLD_WIDTH - len(lines[-1]) - 1)
        if not word:
            lines.append("")
            word, rest = _encoded_word(rest, room=_FOLD_WIDTH - 1)
        lines[-1] += f" {word}"
    return _joined(name, lines, linesep)


def _needs_encoding(word: str, *, utf8: bool, longest: int) -> bool:
    if not utf8 and not word.isascii():
        return True
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in word):
        return True
    # A decoder would take it for an encoded word and decode it.
    if "=?" in word:
        return True
    return len(word.encode()) > longest


def _encoded_word(text: str, *, room: int) -> tuple[str, str]:
    """The longest start of ``text`` that fits ``room`` characters as one encoded word (and
    what is left); ``""`` when not even its first character fits."""
    room = min(room, _ENCODED_WORD_MAX)
    word, taken = "", 0
    for end in range(1, len(text) + 1):
        candidate = _UTF8.header_encode(text[:end])
        if len(candidate) > room:
            break
        word, taken = candidate, end
    return word, text[taken:]


def _joined(name: str, lines: list[str], linesep: str) -> str:
    if any(len(line.encode()) > MAX_LINE_OCTETS for line in lines):
        raise ValueError(f"the {name} header has a part too long for a line of a message")
    return linesep.join(lines) + linesep


def _angle_uri(url: str) -> str:
    """``<url>`` for a list header, which must hold a URI as it is (RFC 2369 2)."""
    if not url.isascii() or _NOT_IN_URI.search(url):
        raise ValueError("the unsubscribe link is not a URI that a list header can carry")
    return f"<{url}>"


def wire_address(address: str) -> str:
    """The address with its domain in ASCII (IDNA), as SMTP and message headers need it.

    Only a non-ASCII local part is left, which needs a server supporting SMTPUTF8.
    """
    if address.isascii():
        return address
    try:
        parsed = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{address!r} is not an email address: {exc}") from exc
    return f"{parsed.local_part}@{parsed.ascii_domain}"


def _mailbox(name: str | None, address: str) -> Address:
    # Given as parts: parsing an addr_spec refuses a non-ASCII local part, which SMTPUTF8 allows.
    local_part, _, domain = address.rpartition("@")
    return Address(_one_line(name or ""), username=local_part, domain=domain)


def _one_line(text: str) -> str:
    # A line break in a header value would start a new header (and the email package refuses it).
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class _Envelope:
    """One message ready for an SMTP transaction."""

    sender: str
    recipient: str
    content: bytes
    message_id: str
    #: The envelope has a non-ASCII local part: the server must support SMTPUTF8.
    utf8: bool


class SmtpProvider(Provider):
    """Sends email through one SMTP server and login, over a pool of reused connections.

    Up to ``config.connections`` connections are opened as sends need them and kept open between
    sends; each carries one transaction at a time. ``connect_timeout`` bounds everything done
    before the message content goes out (connecting, TLS, login, ``MAIL FROM``, ``RCPT TO``):
    failing there is transient, because nothing was sent. It should be well below the engine's
    send timeout, which bounds the rest.

    Unless ``allow_private``, the server must listen on a usual SMTP port and every address its
    name resolves to is checked before connecting: only public ones are tried (see
    :mod:`bulletin.channels.egress`). ``resolver`` replaces the system's name resolution.
    """

    name = "smtp"
    deduplicates = False

    def __init__(
        self,
        config: SmtpConfig,
        *,
        connect_timeout: float = 5.0,
        allow_private: bool = False,
        resolver: egress.Resolver | None = None,
    ) -> None:
        self._config = config
        self._connect_timeout = connect_timeout
        self._allow_private = allow_private
        self._resolver = resolver
        self._password = config.password.get_secret_value() if config.password else None
        self._slots = asyncio.Semaphore(config.connections)
        self._idle: list[aiosmtplib.SMTP] = []
        self._open: set[aiosmtplib.SMTP] = set()
        self._local_hostname: str | None = None
        self.account = f"smtp:{config.host}:{config.port}:{config.username or ''}"
        self.rate_per_second = config.rate_per_second

    async def close(self) -> None:
        """Say ``QUIT`` on idle connections and close every connection."""
        idle, self._idle = self._idle, []
        for connection in idle:
            # It is closed below anyway; the server may have gone first.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await connection.quit(timeout=_TIDY_TIMEOUT)
        for connection in list(self._open):
            self._discard(connection)
        # Let the transports run their close callbacks before the caller's loop moves on.
        await asyncio.sleep(0)

    async def send(self, message: OutboundMessage) -> Accepted:
        """Send one email; its ``Message-ID`` is the provider message id."""
        bound = log.bind(delivery_id=message.delivery_id, account=self.account)
        envelope = self._envelope(message)
        try:
            # Waiting for a connection is bounded here, not by the engine's send timeout: a
            # send cut off while it waited has sent nothing, and must not be taken as in doubt.
            async with asyncio.timeout(self._connect_timeout):
                await self._slots.acquire()
        except TimeoutError:
            bound.info("smtp.pool_busy", connections=self._config.connections)
            raise TransientSendError(
                f"all {self._config.connections} SMTP connections stayed busy; nothing was sent"
            ) from None
        try:
            connection = await self._ready(envelope, bound)
            try:
                reply = await connection.data(envelope.content, timeout=None)
            except aiosmtplib.SMTPDataError as exc:
                await self._reset(connection)
                raise self._refusal("DATA", exc, bound) from exc
            except (aiosmtplib.SMTPException, OSError) as exc:
                self._discard(connection)
                bound.warning("smtp.in_doubt", error=repr(exc))
                raise InDoubtSendError(
                    f"the SMTP connection failed during DATA, and the server may have queued "
                    f"the message: {exc}"
                ) from exc
            except BaseException:
                # Cancelled (the engine's send timeout): the server may still answer, so the
                # connection is out of step and cannot carry another message.
                self._discard(connection)
                raise
            self._idle.append(connection)
        finally:
            self._slots.release()
        bound.debug("smtp.accepted", reply=reply.message)
        return Accepted(envelope.message_id)

    def _envelope(self, message: OutboundMessage) -> _Envelope:
        try:
            built = build_email(message, self._config)
            sender = wire_address(self._config.from_address)
            recipient = wire_address(message.address)
            utf8 = not (sender.isascii() and recipient.isascii())
            content = wire_bytes(built, utf8=utf8)
        except ValueError as exc:
            raise PermanentSendError(f"the email cannot be written: {exc}") from exc
        return _Envelope(
            sender=sender,
            recipient=recipient,
            content=content,
            message_id=str(built["Message-ID"]),
            utf8=utf8,
        )

    async def _ready(self, envelope: _Envelope, bound: FilteringBoundLogger) -> aiosmtplib.SMTP:
        """A connection on which ``MAIL FROM`` and ``RCPT TO`` were accepted for ``envelope``."""
        connection: aiosmtplib.SMTP | None = None
        step = "connect"
        try:
            async with asyncio.timeout(self._connect_timeout):
                connection = self._take_idle()
                if connection is not None:
                    step = "MAIL FROM"
                    try:
                        await self._mail_from(connection, envelope)
                    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPSenderRefused) as exc:
                        if isinstance(exc, aiosmtplib.SMTPSenderRefused) and (
                            exc.code != SERVICE_NOT_AVAILABLE
                        ):
                            raise
                        # The server closed the connection while it sat idle (a disconnect,
                        # or a 421 "timeout" on the first command). Nothing was sent.
                        bound.info("smtp.stale_connection", error=repr(exc))
                        self._discard(connection)
                        connection = None
                if connection is None:
                    step = "connect"
                    connection = await self._connect()
                    step = "MAIL FROM"
                    await self._mail_from(connection, envelope)
                step = "RCPT TO"
                await connection.rcpt(
                    envelope.recipient, encoding="utf-8" if envelope.utf8 else "ascii", timeout=None
                )
        except ChannelError:
            if connection is not None:
                self._idle.append(connection)
            raise
        except BaseException as exc:
            error = await self._before_content(step, exc, connection, bound)
            if error is None:
                raise
            raise error from exc
        return connection

    async def _before_content(
        self,
        step: str,
        exc: BaseException,
        connection: aiosmtplib.SMTP | None,
        bound: FilteringBoundLogger,
    ) -> ChannelError | None:
        """Tidy up after a failure before the content went out, and say what it means.

        ``None`` means the exception is not ours to map (a cancellation) and must propagate.
        """
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
            if connection is not None:
                await self._reset(connection)
            if step == "connect":
                return self._connect_refusal(exc, bound)
            return self._refusal(step, exc, bound)
        if connection is not None:
            self._discard(connection)
        if isinstance(exc, egress.AddressNotAllowed):
            bound.warning(
                "smtp.address_not_allowed",
                host=self._config.host,
                port=self._config.port,
                hint="the SMTP server's address is not public or its port not a usual SMTP "
                "port; fix the configuration or set BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES",
            )
            return TransientSendError(
                egress.NOT_ALLOWED, retry_after=_ACCOUNT_RETRY_SECONDS, slow_down=True
            )
        if isinstance(exc, TimeoutError):
            bound.info("smtp.timeout_before_content", step=step)
            return TransientSendError(f"the SMTP server did not answer {step} in time")
        if _certificate_refused(exc):
            bound.error(
                "smtp.certificate_refused",
                error=str(exc),
                hint="the server's TLS certificate is not trusted; fix it or set validate_certs",
            )
            return TransientSendError(
                "the SMTP server's TLS certificate was refused",
                retry_after=_ACCOUNT_RETRY_SECONDS,
                slow_down=True,
            )
        if isinstance(exc, OSError):
            # A refused or lost connection, a failed TLS handshake (ssl.SSLError): the
            # aiosmtplib connection errors derive from ConnectionError.
            # What answered, or did not, is for the operator's log: the text goes to tenants.
            bound.info("smtp.failed_before_content", step=step, error=repr(exc))
            if step == "connect":
                return TransientSendError("could not connect to the SMTP server")
            return TransientSendError(f"the SMTP connection failed at {step}")
        if isinstance(exc, aiosmtplib.SMTPException) and step == "connect":
            # STARTTLS or AUTH not offered, or no login method in common: the configuration
            # does not match the server, which only an operator can fix.
            bound.error(
                "smtp.server_mismatch",
                error=str(exc),
                security=self._config.security,
                hint="check the SMTP security mode, port and login",
            )
            return TransientSendError(
                f"the SMTP server cannot be used as configured: {exc}",
                retry_after=_ACCOUNT_RETRY_SECONDS,
                slow_down=True,
            )
        if isinstance(exc, aiosmtplib.SMTPException):
            bound.info("smtp.failed_before_content", step=step, error=repr(exc))
            return TransientSendError(f"the SMTP {step} failed: {exc!r}")
        if isinstance(exc, ValueError):
            # aiosmtplib will not put an address with spaces or brackets on a command line.
            return PermanentSendError(f"the address cannot be used in SMTP: {exc}")
        return None

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._local_hostname is None:
            # Looked up once: getfqdn may wait on DNS, and its answer does not change.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        security = self._config.security
        host, port = self._config.host, self._config.port
        if not self._allow_private and port not in egress.SMTP_PORTS:
            raise egress.AddressNotAllowed
        # Resolved and checked here, and the checked address connected to; the name is kept
        # for TLS (server name and certificate).
        sock = await egress.connect(
            host, port, allow_private=self._allow_private, resolver=self._resolver
        )
        connection = aiosmtplib.SMTP(
            hostname=host,
            sock=sock,
            username=self._config.username,
            password=self._password,
            local_hostname=self._local_hostname,
            # Timeouts are ours: connect_timeout before the content, the engine's after it.
            timeout=None,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            validate_certs=self._config.validate_certs,
        )
        # The socket is the connection's from here on: closing the connection closes it.
        await connection.connect()
        self._open.add(connection)
        if connection.is_ehlo_or_helo_needed:
            # Without TLS or a login aiosmtplib greets only with its first command, and MAIL
            # FROM needs the server's extensions first: without them a message needing SMTPUTF8
            # was refused as if the server lacked it, and SIZE was never declared.
            try:
                await connection.ehlo()
            except aiosmtplib.SMTPHeloError:
                await connection.helo()
        return connection

    async def _mail_from(self, connection: aiosmtplib.SMTP, envelope: _Envelope) -> None:
        options: list[str] = []
        if connection.supports_extension("size"):
            # Lets the server refuse a message too large before it is sent.
            options.append(f"SIZE={len(envelope.content)}")
        if envelope.utf8:
            if not connection.supports_extension("smtputf8"):
                raise PermanentSendError(
                    "the address has a non-ASCII local part and the SMTP server does not "
                    "support SMTPUTF8"
                )
            options.append("SMTPUTF8")
            if connection.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
        await connection.mail(
            envelope.sender,
            options=options,
            encoding="utf-8" if envelope.utf8 else "ascii",
            timeout=None,
        )

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection
            self._discard(connection)
        return None

    async def _reset(self, connection: aiosmtplib.SMTP) -> None:
        """Abandon the transaction with ``RSET`` and keep the connection, or close it."""
        if not connection.is_connected:
            self._discard(connection)
            return
        try:
            await connection.rset(timeout=_TIDY_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError):
            self._discard(connection)
        except BaseException:
            self._discard(connection)
            raise
        else:
            self._idle.append(connection)

    def _discard(self, connection: aiosmtplib.SMTP) -> None:
        self._open.discard(connection)
        connection.close()

    def _connect_refusal(
        self, exc: aiosmtplib.SMTPResponseException, bound: FilteringBoundLogger
    ) -> TransientSendError:
        # The greeting's text is the server's banner: for the operator's log only.
        detail = f"the SMTP server refused the connection ({exc.code})"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or exc.code == _AUTH_REQUIRED:
            return self._login_refused(exc, bound)
        if exc.code == SERVICE_NOT_AVAILABLE:
            bound.warning("smtp.service_not_available", code=exc.code, reply=exc.message)
            return TransientSendError(
                detail, retry_after=_SERVICE_UNAVAILABLE_PAUSE, slow_down=True
            )
        bound.warning("smtp.connect_refused", code=exc.code, reply=exc.message)
        return TransientSendError(detail)

    def _login_refused(
        self, exc: aiosmtplib.SMTPResponseException, bound: FilteringBoundLogger
    ) -> TransientSendError:
        bound.error(
            "smtp.authentication_failed",
            code=exc.code,
            reply=exc.message,
            username=self._config.username,
            hint="check the SMTP username and password",
        )
        return TransientSendError(
            f"the SMTP server refused the login: {exc.code} {exc.message}",
            retry_after=_ACCOUNT_RETRY_SECONDS,
            slow_down=True,
        )

    def _refusal(
        self, step: str, exc: aiosmtplib.SMTPResponseException, bound: FilteringBoundLogger
    ) -> ChannelError:
        code = exc.code
        detail = f"the SMTP server refused {step}: {code} {exc.message}"
        if code == SERVICE_NOT_AVAILABLE:
            bound.warning("smtp.service_not_available", step=step, reply=exc.message)
            return TransientSendError(
                detail, retry_after=_SERVICE_UNAVAILABLE_PAUSE, slow_down=True
            )
        if code == _AUTH_REQUIRED:
            return self._login_refused(exc, bound)
        if 400 <= code < 500:
            bound.info("smtp.deferred", step=step, code=code, reply=exc.message)
            return TransientSendError(detail)
        if 500 <= code < 600:
            suppress = step == "RCPT TO" and _blames_mailbox(exc.message)
            bound.info("smtp.refused", step=step, code=code, reply=exc.message, suppress=suppress)
            return PermanentSendError(detail, suppress_address=suppress)
        # Not a reply SMTP allows here: the server is not well; try again later.
        bound.warning("smtp.unexpected_reply", step=step, code=code, reply=exc.message)
        return TransientSendError(detail)


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a connection failed because the server's certificate did not verify."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__
    return False


def _blames_mailbox(reply: str) -> bool:
    """Whether a 5xx reply says the mailbox or its address is bad (a hard bounce).

    Without an enhanced status code, a refused recipient is taken as a bad address.
    """
    status = _ENHANCED_STATUS.match(reply.strip())
    return status is None or status.group(2) in _ADDRESS_SUBJECTS
