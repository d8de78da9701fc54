"""A local SMTP server (aiosmtpd), for tests and trials of the email channel.

It runs in the caller's event loop on ``127.0.0.1`` and an ephemeral port, plain, with STARTTLS
or with implicit TLS (a self-signed certificate made at start, so clients connect with
``validate_certs=False``), and with AUTH PLAIN/LOGIN when given a username. What it accepts goes
into :attr:`SmtpServer.received`. It can be told to misbehave the way real servers do: refuse a
recipient (:attr:`SmtpServer.rcpt_reply`), refuse or defer the message
(:attr:`SmtpServer.data_reply`), answer late (:attr:`SmtpServer.data_delay`), take the message
and hang up without answering (:attr:`SmtpServer.drop_after_data`), turn connections away
(:attr:`SmtpServer.connect_reply`), or close idle connections
(:meth:`SmtpServer.disconnect_all`).

It refuses content that a strict mailbox provider refuses (:func:`content_refusal`), with a 5xx
reply naming the rule: a line over 998 octets, a missing or malformed ``Message-ID``, list
headers that are not the angle-bracketed URIs of RFC 2369 (RFC 2047 encoded words, say), and a
one-click ``List-Unsubscribe-Post`` that is not RFC 8058's (exactly
``List-Unsubscribe=One-Click``, with an https URI in ``List-Unsubscribe``). Told to
(:attr:`SmtpServer.require_one_click`), it also refuses mail without one-click unsubscribe, as
Gmail and Yahoo do for bulk senders since 2024.

::

    async with SmtpServer(security="starttls", username="u", password="p") as server:
        config = SmtpConfig(host=server.host, port=server.port, security="starttls",
                            validate_certs=False, username="u", password="p", ...)

It is over 400 lines because it stands in for a whole mail server: each refusal above is a
small rule of its own, read by rule rather than from top to bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.policy
import hmac
import ipaddress
import re
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Security = Literal["none", "starttls", "tls"]
#: A scripted answer to ``RCPT TO``: a reply line, or a function of the address giving one
#: (``None`` accepts the recipient).
RcptReply = str | Callable[[str], str | None]
#: A scripted answer to the message content: a reply line, or a function of the message giving
#: one (``None`` accepts it).
DataReply = str | Callable[["ReceivedEmail"], str | None]

_HOSTNAME = "bulletin-devserver"
_SHUTDOWN_TIMEOUT = 5.0

#: The longest line of a message, CRLF not counted (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6).
MAX_LINE_OCTETS = 998
_ATOMS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
# RFC 5322 3.6.4: "<" dot-atom-text "@" (dot-atom-text / no-fold-literal) ">".
_MSG_ID = re.compile(rf"<{_ATOMS}@(?:{_ATOMS}|\[[\x21-\x5a\x5e-\x7e]*\])>")
# RFC 2369 2: angle-bracketed URIs separated by commas, each perhaps followed by a comment.
_LIST_URI = r"\s*<([^<>\s]*)>\s*(?:\([^()]*\)\s*)?"
_LIST_URIS = re.compile(rf"{_LIST_URI}(?:,{_LIST_URI})*")
_EACH_LIST_URI = re.compile(r"<([^<>\s]*)>")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True, slots=True)
class ReceivedEmail:
    """One message the server accepted (the ledger entry)."""

    envelope_from: str
    recipients: tuple[str, ...]
    #: The content parsed with ``email.policy.default``.
    message: EmailMessage
    #: The content exactly as it arrived, after dot-unstuffing.
    raw: bytes
    #: Which connection carried it: 1 for the first the server accepted, and so on.
    connection: int
    #: The user the session logged in as, if it did.
    login: str | None
    #: Whether the session was encrypted (implicit TLS or STARTTLS).
    tls: bool


class SmtpServer:
    """An SMTP server on 127.0.0.1 that records what it receives and fails on request.

    Used as an async context manager; :attr:`host` and :attr:`port` are set once it is entered.
    The fault settings are plain attributes and may be changed while it runs.
    """

    def __init__(
        self,
        *,
        security: Security = "none",
        username: str | None = None,
        password: str | None = None,
        port: int = 0,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both a username and a password, or neither")
        self.security: Security = security
        self.username = username
        self.password = password
        self.host = "127.0.0.1"
        #: The port to listen on (0: any free one); the one it listens on once started.
        self.port = port
        #: The server's certificate (PEM) in the TLS modes.
        self.certificate: bytes | None = None
        self.received: list[ReceivedEmail] = []
        #: Connections accepted so far, including ones turned away.
        self.connections = 0
        #: Most connections open at once.
        self.peak_connections = 0
        #: Scripted ``RCPT TO`` answers by address, e.g. ``"550 5.1.1 No such user"``.
        self.rcpt_reply: dict[str, RcptReply] = {}
        #: Scripted answer to the content (e.g. ``"451 4.3.0 Try later"``); a refused message is
        #: not recorded.
        self.data_reply: DataReply | None = None
        #: Seconds between receiving the content and answering it.
        self.data_delay = 0.0
        #: Record the message, then close the connection without answering.
        self.drop_after_data = False
        #: Greet with this line and hang up (e.g. ``"421 4.3.2 Service not available"``).
        self.connect_reply: str | None = None
        #: Refuse mail without RFC 8058 one-click unsubscribe, as Gmail and Yahoo refuse bulk
        #: mail. Off by default: which mail counts as bulk is the provider's judgement, and a
        #: transactional email needs no unsubscribe link.
        self.require_one_click = False
        self._tls_context: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._live: dict[asyncio.BaseProtocol, asyncio.BaseTransport] = {}
        self._all_gone = asyncio.Event()
        self._all_gone.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on 127.0.0.1, on the port asked for or an ephemeral one."""
        if self.security != "none":
            self.certificate, self._tls_context = _self_signed_context()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            host=self.host,
            port=self.port,
            ssl=self._tls_context if self.security == "tls" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for transport in list(self._live.values()):
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_TIMEOUT):
                await self._all_gone.wait()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # aiosmtpd cancels each session's task as its connection goes: let them finish.
        for _ in range(3):
            await asyncio.sleep(0)

    async def disconnect_all(self) -> None:
        """Close every open connection, as a server does to idle clients, and wait until
        they are gone."""
        for transport in list(self._live.values()):
            transport.close()
        await self.wait_disconnected()

    async def wait_disconnected(self, timeout: float = _SHUTDOWN_TIMEOUT) -> None:
        """Wait until no connection is open (``TimeoutError`` after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            await self._all_gone.wait()

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._live)

    # --- connections ---------------------------------------------------------------------

    def _protocol(self) -> asyncio.BaseProtocol:
        self.connections += 1
        if self.connect_reply is not None:
            return _TurnAway(self, self.connect_reply)
        return _Session(
            self,
            self.connections,
            _Handler(self),
            hostname=_HOSTNAME,
            tls_context=self._tls_context if self.security == "starttls" else None,
            require_starttls=self.security == "starttls",
            # Implicit TLS is invisible to aiosmtpd, and the plain mode logs in without TLS.
            auth_require_tls=self.security == "starttls",
            authenticator=self._authenticate,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )

    def _opened(self, protocol: asyncio.BaseProtocol, transport: asyncio.BaseTransport) -> None:
        self._live[protocol] = transport
        self._all_gone.clear()
        self.peak_connections = max(self.peak_connections, len(self._live))

    def _closed(self, protocol: asyncio.BaseProtocol) -> None:
        self._live.pop(protocol, None)
        if not self._live:
            self._all_gone.set()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if self.username is None or self.password is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login_ok = hmac.compare_digest(data.login, self.username.encode())
        password_ok = hmac.compare_digest(data.password, self.password.encode())
        if login_ok and password_ok:
            return AuthResult(success=True, auth_data=self.username)
        return AuthResult(success=False, handled=False)


class _Session(SMTP):
    """aiosmtpd's protocol, telling the server when a connection comes and goes."""

    def __init__(self, owner: SmtpServer, number: int, handler: _Handler, **options: Any) -> None:
        super().__init__(handler, **options)
        self.owner = owner
        self.number = number

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.owner._opened(self, transport)
        else:
            # STARTTLS replaced the transport with the encrypted one.
            self.owner._live[self] = transport

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self.owner._closed(self)


class _TurnAway(asyncio.Protocol):
    """Greets with a refusal and closes, as a server out of capacity does."""

    def __init__(self, owner: SmtpServer, reply: str) -> None:
        self.owner = owner
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.owner._opened(self, transport)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.reply.encode() + b"\r\n")
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._closed(self)


class _Handler:
    """The aiosmtpd handler: scripted replies, and the ledger."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.owner.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        scripted = self.owner.rcpt_reply.get(address)
        reply = scripted(address) if callable(scripted) else scripted
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        raw = envelope.original_content or b""
        refusal = content_refusal(raw, require_one_click=owner.require_one_click)
        if refusal is not None:
            return refusal
        transport = server.transport
        assert isinstance(server, _Session)
        assert envelope.mail_from is not None
        received = ReceivedEmail(
            envelope_from=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            message=_parse(raw, utf8=envelope.smtp_utf8),
            raw=raw,
            connection=server.number,
            login=session.auth_data if isinstance(session.auth_data, str) else None,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
        )
        scripted = owner.data_reply
        reply = scripted(received) if callable(scripted) else scripted
        if reply is None or reply.startswith("2"):
            owner.received.append(received)
        if owner.data_delay > 0:
            await asyncio.sleep(owner.data_delay)
        if owner.drop_after_data:
            if transport is not None:
                transport.close()
            # Closing the connection cancels this session's task: no answer is ever written.
            await asyncio.Event().wait()
        return reply or "250 2.0.0 OK: queued"


def content_refusal(raw: bytes, *, require_one_click: bool = False) -> str | None:
    """The reply a strict receiving server gives to the message ``raw`` (the content of
    ``DATA``, dot-unstuffed), or ``None`` when it takes it.

    The rules are the standards' and the large mailbox providers': lines of at most 998
    octets; one ``Message-ID``, a well-formed msg-id; list headers written as RFC 2369 writes
    them, never as RFC 2047 encoded words (a mail client would not find the link in one); a
    ``List-Unsubscribe-Post`` only as RFC 8058 gives it, with an https link to post to. With
    ``require_one_click``, mail without one-click unsubscribe is refused too.
    """
    for number, line in enumerate(raw.split(b"\r\n"), start=1):
        if len(line) > MAX_LINE_OCTETS:
            return (
                f"554 5.6.0 Line {number} is {len(line)} octets long; a line may have at most "
                f"{MAX_LINE_OCTETS} (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6)"
            )
    fields = _header_fields(raw)
    ids = fields.get("message-id", [])
    if not ids:
        return "550 5.7.1 The message has no Message-ID header (RFC 5322 3.6.4)"
    if len(ids) > 1:
        return "554 5.6.0 The message has more than one Message-ID header (RFC 5322 3.6)"
    if not _MSG_ID.fullmatch(ids[0].strip()):
        return (
            "550 5.7.1 The Message-ID header is not a msg-id, <left@right> with no spaces "
            "(RFC 5322 3.6.4)"
        )
    unsubscribe = fields.get("list-unsubscribe", [])
    posts = fields.get("list-unsubscribe-post", [])
    if len(unsubscribe) > 1 or len(posts) > 1:
        return "554 5.6.0 The message has more than one List-Unsubscribe or -Post header"
    links: list[str] = []
    if unsubscribe:
        if _ENCODED_WORD.search(unsubscribe[0]):
            return (
                "554 5.6.0 List-Unsubscribe is written as RFC 2047 encoded words; it must hold "
                "angle-bracketed URIs as they are (RFC 2369 2)"
            )
        if not _LIST_URIS.fullmatch(unsubscribe[0]):
            return (
                "554 5.6.0 List-Unsubscribe is not a comma-separated list of angle-bracketed "
                "URIs without spaces (RFC 2369 2)"
            )
        links = _EACH_LIST_URI.findall(unsubscribe[0])
        if not all(_URI_SCHEME.match(link) for link in links):
            return "554 5.6.0 List-Unsubscribe holds something that is not a URI (RFC 2369 2)"
    if posts:
        if posts[0].strip() != _ONE_CLICK:
            return f"554 5.6.0 List-Unsubscribe-Post must be exactly {_ONE_CLICK} (RFC 8058 3.1)"
        if not any(link.lower().startswith("https://") for link in links):
            return (
                "554 5.6.0 One-click unsubscribe (List-Unsubscribe-Post) needs an https URI in "
                "List-Unsubscribe (RFC 8058 3.1)"
            )
    if require_one_click and not posts:
        return (
            "550 5.7.1 Bulk mail must offer one-click unsubscribe: List-Unsubscribe with an "
            "https URI and List-Unsubscribe-Post (RFC 8058)"
        )
    return None


def _header_fields(raw: bytes) -> dict[str, list[str]]:
    """The header fields of ``raw`` by lower-case name, each value unfolded but not decoded:
    the text on the wire, which is what the rules are about."""
    fields: dict[str, list[str]] = {}
    last: tuple[str, int] | None = None
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.decode("utf-8", errors="surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t") and last is not None:
            # Unfolding removes the CRLF and keeps the white space (RFC 5322 2.2.3).
            name, index = last
            fields[name][index] += line
            continue
        name, colon, value = line.partition(":")
        if not colon:
            last = None
            continue
        values = fields.setdefault(name.strip().lower(), [])
        values.append(value)
        last = (name.strip().lower(), len(values) - 1)
    return fields


def _parse(raw: bytes, *, utf8: bool) -> EmailMessage:
    if utf8:
        # SMTPUTF8 headers are UTF-8, which the bytes parser would leave undecoded.
        text = raw.decode("utf-8", errors="surrogateescape")
        message = Parser(policy=email.policy.default).parsestr(text)
    else:
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _self_signed_context() -> tuple[bytes, ssl.SSLContext]:
    """A server TLS context with a fresh self-signed certificate for localhost/127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # ssl loads a certificate chain only from files; they are gone once it is loaded.
    with tempfile.TemporaryDirectory(prefix="bulletin-smtp-") as directory:
        certificate_file = Path(directory, "cert.pem")
        key_file = Path(directory, "key.pem")
        certificate_file.write_bytes(certificate_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(certificate_file, key_file)
    return certificate_pem, context
