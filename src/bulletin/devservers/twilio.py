"""A local server speaking Twilio's Messages API (``2010-04-01``), for tests and trials.

It answers ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` the way Twilio does: the
same validation and error codes, a ``201`` with a Message resource on success. What it accepts
goes into :attr:`TwilioServer.accepted`. It can be told to misbehave (a Twilio error, latency,
a connection dropped after accepting or reset before) through :meth:`TwilioServer.fail_next`
or a :attr:`TwilioServer.script`, and it can enforce a rate limit. It also plays Twilio's other
half: :meth:`TwilioServer.send_status` and :meth:`TwilioServer.send_inbound` post signed
webhooks, exactly as Twilio would, to Bulletin's endpoints.

It refuses at least what Twilio refuses in a create request, with Twilio's codes and error
body (``code``, ``message``, ``more_info``, ``status``):

* no ``To``: 21604 (a JSON body too: Twilio reads form posts only);
* a ``To`` not in E.164: 21211;
* neither ``From`` nor ``MessagingServiceSid``: 21603;
* a ``MessagingServiceSid`` that is not ``MG`` and 32 hex digits: 21705;
* a ``From`` that is not E.164, a short code or an alphanumeric sender id: 21212;
* a ``From`` that is not one of :attr:`TwilioServer.senders` (when they are given): 21606;
* no ``Body``: 21602; a ``Body`` over 1,600 characters (UTF-16 code units): 21617;
* a ``StatusCallback`` that is not an http(s) URL with a host name (no underscores) of at most
  4,000 characters: 21609;
* other credentials than the account's: 20003 (401); another account's URL: 20404.

Its webhooks are signed the way the account is set up: with the auth token (HMAC-SHA1), or
with a :class:`SharedKey` (HMAC-SHA256 by default) and the
``X-Twilio-Webhooks-Signature-Settings`` header. :attr:`TwilioServer.sign_url` chooses the form
of the URL signed, as Twilio's back end varies it: as given, with the scheme's default port
written out (``https://host:443/...``), or without any port.

::

    async with TwilioServer(account_sid=sid, auth_token=token) as server:
        config = TwilioConfig(..., base_url=server.base_url)

It is over 400 lines because it stands in for a whole provider, both the REST API and its
webhooks: each refusal above is a small rule of its own, read by rule rather than from top
to bottom.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import email.utils
import re
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from bulletin.channels.sms import measure
from bulletin.channels.twilio import (
    API_VERSION,
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    signature,
)

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
#: Up to 11 letters, digits and spaces, at least one of them a letter.
_ALPHANUMERIC_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
#: The longest ``Body`` Twilio takes, counted in UTF-16 code units (an emoji counts two).
MAX_BODY = 1600
#: The longest ``StatusCallback`` URL Twilio takes.
MAX_CALLBACK_URL = 4000


@dataclass(frozen=True, slots=True)
class AcceptedSms:
    """One message the server accepted (the ledger entry)."""

    sid: str
    to: str
    from_: str | None
    body: str
    status_callback: str | None
    #: ``time.monotonic()`` when it was accepted.
    at: float
    messaging_service_sid: str | None = None
    #: Every form field exactly as it arrived.
    params: dict[str, str] = field(default_factory=dict)
    #: The request itself: method, path, headers but ``Authorization`` (it held the account
    #: sid and the auth token: other credentials are refused, 20003) and every form field in
    #: the order sent.
    method: str = "POST"
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    pairs: tuple[tuple[str, str], ...] = ()


#: The form of a webhook's URL that its signature covers (see :func:`signed_form`).
SignedUrl = Literal["as_given", "default_port", "no_port"]


@dataclass(frozen=True, slots=True)
class SharedKey:
    """A SharedKey that a Webhook Setting signs the account's webhooks with, instead of the
    auth token."""

    key_id: str
    secret: str
    algorithm: str = HMAC_SHA256


@dataclass(frozen=True, slots=True)
class Fault:
    """How the server misbehaves for one request. Build one with the class methods.

    ``delay`` comes first (latency), then the failure: a Twilio error answer, a connection reset
    before the message is accepted, the message accepted and the connection closed with no
    answer, or the message accepted and answered ``201`` with a body that is not JSON. A fault
    with only a delay answers normally, late.
    """

    delay: float = 0.0
    code: int | None = None
    http_status: int = 400
    message: str | None = None
    retry_after: float | None = None
    drop: Literal["reset_before_accept", "drop_after_accept", "garble_after_accept"] | None = None

    @classmethod
    def error(
        cls,
        code: int,
        http_status: int = 400,
        *,
        message: str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer with a Twilio error (and a ``Retry-After`` header when given)."""
        return cls(
            delay=delay,
            code=code,
            http_status=http_status,
            message=message,
            retry_after=retry_after,
        )

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Answer normally, ``seconds`` late."""
        return cls(delay=seconds)

    @classmethod
    def reset_before_accept(cls, delay: float = 0.0) -> Fault:
        """Reset the connection after reading the request, without accepting the message."""
        return cls(delay=delay, drop="reset_before_accept")

    @classmethod
    def drop_after_accept(cls, delay: float = 0.0) -> Fault:
        """Accept the message (it is in the ledger), then close the connection unanswered."""
        return cls(delay=delay, drop="drop_after_accept")

    @classmethod
    def garble_after_accept(cls, delay: float = 0.0) -> Fault:
        """Accept the message, then answer ``201`` with a body no client can read."""
        return cls(delay=delay, drop="garble_after_accept")


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """What Bulletin answered to a webhook the server posted."""

    status: int
    body: str
    content_type: str


_MESSAGES = {
    20003: "Authenticate",
    20429: "Too Many Requests",
    21602: "Message body is required.",
    21603: "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number is not a message-capable number of this account.",
    21609: "Invalid 'StatusCallback'.",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21705: "The Messaging Service is invalid.",
}


def _error(
    code: int, http_status: int, message: str | None = None, retry_after: float | None = None
) -> web.Response:
    payload = {
        "code": code,
        "message": message or _MESSAGES.get(code, "Twilio could not process the request"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": http_status,
    }
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    if http_status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
    return web.json_response(payload, status=http_status, headers=headers)


class TwilioServer:
    """Twilio's Messages API on ``127.0.0.1`` (an ephemeral port), with a ledger and faults."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        max_per_second: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        senders: Iterable[str] | None = None,
        shared_key: SharedKey | None = None,
        sign_url: SignedUrl = "as_given",
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        #: The account's own numbers; when set, a ``From`` outside them is refused (21606).
        self.senders = frozenset(senders) if senders is not None else None
        #: When set, webhooks are signed with this SharedKey rather than the auth token.
        self.shared_key = shared_key
        #: The form of the URL its webhooks are signed over.
        self.sign_url: SignedUrl = sign_url
        #: When set, sends beyond this many over any 1 s window are answered 429 / 20429.
        self.max_per_second = max_per_second
        #: Decides a fault per request from its form fields; :meth:`fail_next` comes first.
        self.script: Callable[[dict[str, str]], Fault | None] | None = None
        self.accepted: list[AcceptedSms] = []
        #: How many sends were answered 429 by the ``max_per_second`` limit.
        self.rate_limited = 0
        self._queued: deque[Fault] = deque()
        self._recent: deque[float] = deque()
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.base_url = ""

    async def __aenter__(self) -> Self:
        self._closing.clear()
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._create)
        # Cancelling a handler when its client goes away ends latency faults with the client.
        self._runner = web.AppRunner(
            app, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.base_url = f"http://{self._host}:{site.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(
        self, n: int, code: int, http_status: int = 400, retry_after: float | None = None
    ) -> None:
        """Answer the next ``n`` sends with Twilio error ``code``, whatever the script says."""
        self._queued.extend(
            Fault.error(code, http_status, retry_after=retry_after) for _ in range(n)
        )

    def inject(self, *faults: Fault) -> None:
        """Apply these faults, in order, to the next sends (before :attr:`script`)."""
        self._queued.extend(faults)

    def find(self, sid: str) -> AcceptedSms:
        """The accepted message with this sid."""
        for sms in self.accepted:
            if sms.sid == sid:
                return sms
        raise KeyError(f"no accepted message has sid {sid!r}")

    def _authenticated(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            return False
        return secrets.compare_digest(credentials, f"{self.account_sid}:{self.auth_token}".encode())

    async def _create(self, request: web.Request) -> web.StreamResponse:
        if not self._authenticated(request):
            return _error(20003, 401)
        if request.match_info["account"] != self.account_sid:
            return _error(20404, 404, f"The requested resource {request.path} was not found")
        # Twilio reads form posts only: a JSON body has no 'To' (21604).
        posted = await request.post()
        pairs = tuple((name, str(value)) for name, value in posted.items())
        form = dict(pairs)

        fault = self._queued.popleft() if self._queued else None
        if fault is None and self.script is not None:
            fault = self.script(form)
        if fault is not None and fault.delay > 0:
            await self._sleep(fault.delay)
        if fault is not None and fault.drop == "reset_before_accept":
            return _reset(request)
        if fault is not None and fault.code is not None:
            return _error(fault.code, fault.http_status, fault.message, fault.retry_after)

        refusal = self._validate(form)
        if refusal is not None:
            return refusal
        if self._over_rate():
            self.rate_limited += 1
            return _error(20429, 429)

        sms = self._accept(form, request, pairs)
        if fault is not None and fault.drop == "drop_after_accept":
            return _drop(request)
        if fault is not None and fault.drop == "garble_after_accept":
            return web.Response(status=201, text="<html>502 Bad Gateway", content_type="text/html")
        return web.json_response(self._resource(sms), status=201)

    async def _sleep(self, seconds: float) -> None:
        # Shutting down must not wait out a long latency fault.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    def _validate(self, form: dict[str, str]) -> web.Response | None:
        to = form.get("To", "")
        if not to:
            return _error(21604, 400)
        if not _E164.fullmatch(to):
            return _error(21211, 400, f"The 'To' number {to} is not a valid phone number.")
        sender, service = form.get("From", ""), form.get("MessagingServiceSid", "")
        if not sender and not service:
            return _error(21603, 400)
        if service and not _MESSAGING_SERVICE_SID.fullmatch(service):
            return _error(21705, 400)
        if sender and not (
            _E164.fullmatch(sender)
            or _SHORT_CODE.fullmatch(sender)
            or _ALPHANUMERIC_ID.fullmatch(sender)
        ):
            return _error(21212, 400, f"The 'From' number {sender} is not a valid phone number.")
        if sender and self.senders is not None and sender not in self.senders:
            return _error(21606, 400)
        body = form.get("Body", "")
        if not body:
            return _error(21602, 400)
        if len(body.encode("utf-16-le")) // 2 > MAX_BODY:
            return _error(21617, 400)
        callback = form.get("StatusCallback")
        if callback is not None and not _valid_callback(callback):
            return _error(21609, 400)
        return None

    def _over_rate(self) -> bool:
        if self.max_per_second is None:
            return False
        now = time.monotonic()
        while self._recent and now - self._recent[0] >= 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.max_per_second:
            return True
        self._recent.append(now)
        return False

    def _accept(
        self, form: dict[str, str], request: web.Request, pairs: tuple[tuple[str, str], ...]
    ) -> AcceptedSms:
        sms = AcceptedSms(
            sid="SM" + secrets.token_hex(16),
            to=form["To"],
            from_=form.get("From") or None,
            body=form["Body"],
            status_callback=form.get("StatusCallback") or None,
            at=time.monotonic(),
            messaging_service_sid=form.get("MessagingServiceSid") or None,
            params=dict(form),
            method=request.method,
            path=request.path,
            headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            pairs=pairs,
        )
        self.accepted.append(sms)
        return sms

    def _resource(self, sms: AcceptedSms) -> dict[str, object]:
        now = email.utils.format_datetime(dt.datetime.now(dt.UTC).replace(microsecond=0))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sms.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": sms.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sms.from_,
            "messaging_service_sid": sms.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(measure(sms.body).segments),
            "price": None,
            "price_unit": "USD",
            "sid": sms.sid,
            # Twilio says "accepted" while a Messaging Service is still choosing the sender.
            "status": "queued" if sms.from_ else "accepted",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": sms.to,
            "uri": f"{uri}.json",
        }

    async def send_status(
        self,
        session: aiohttp.ClientSession,
        sid: str,
        status: str,
        error_code: int | None = None,
    ) -> WebhookReply:
        """Post the status callback Twilio would send for message ``sid`` reaching ``status``."""
        sms = self.find(sid)
        if sms.status_callback is None:
            raise ValueError(f"message {sid} was sent without a StatusCallback")
        params = {
            "AccountSid": self.account_sid,
            "MessageSid": sms.sid,
            "SmsSid": sms.sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "To": sms.to,
            "From": sms.from_ or "",
            "ApiVersion": API_VERSION,
        }
        if sms.messaging_service_sid is not None:
            params["MessagingServiceSid"] = sms.messaging_service_sid
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return await self._post_signed(session, sms.status_callback, params)

    async def send_inbound(
        self, session: aiohttp.ClientSession, url: str, from_: str, to: str, body: str
    ) -> WebhookReply:
        """Post the webhook Twilio sends when ``from_`` texts ``body`` to our number ``to``."""
        params = {
            "MessageSid": "SM" + secrets.token_hex(16),
            "AccountSid": self.account_sid,
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "SmsStatus": "received",
            "ApiVersion": API_VERSION,
        }
        return await self._post_signed(session, url, params)

    def sign(self, url: str, params: dict[str, str]) -> dict[str, str]:
        """The signature headers Twilio would send with a post of ``params`` to ``url``, set up
        as this server is (:attr:`shared_key`, :attr:`sign_url`)."""
        signed_url = signed_form(url, self.sign_url)
        if self.shared_key is None:
            return {SIGNATURE_HEADER: signature(self.auth_token, signed_url, params)}
        key = self.shared_key
        return {
            SIGNATURE_HEADER: signature(key.secret, signed_url, params, key.algorithm),
            SIGNATURE_SETTINGS_HEADER: f"key={key.key_id},algorithm={key.algorithm}",
        }

    async def _post_signed(
        self, session: aiohttp.ClientSession, url: str, params: dict[str, str]
    ) -> WebhookReply:
        headers = {
            **self.sign(url, params),
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
        }
        async with session.post(url, data=params, headers=headers) as response:
            return WebhookReply(response.status, await response.text(), response.content_type)


def signed_form(url: str, form: SignedUrl) -> str:
    """``url`` as Twilio's back end may sign it: as given, with the scheme's default port
    written out when it names none, or without its port."""
    parts = urlsplit(url)
    if form == "no_port" and parts.port is not None:
        return parts._replace(netloc=parts.netloc.rsplit(":", 1)[0]).geturl()
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if form == "default_port" and parts.port is None and default is not None:
        return parts._replace(netloc=f"{parts.netloc}:{default}").geturl()
    return url


def _valid_callback(url: str) -> bool:
    """Whether Twilio takes ``url`` as a ``StatusCallback`` (error 21609 when not)."""
    if len(url) > MAX_CALLBACK_URL or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return False
    hostport = parts.netloc.rpartition("@")[2]
    bracketed = hostport.startswith("[")
    host = hostport[: hostport.find("]") + 1] if bracketed else hostport.partition(":")[0]
    return (
        parts.scheme in ("http", "https") and port != 0 and _HOST_NAME.fullmatch(host) is not None
    )


# Both raise CancelledError: aiohttp takes it as the client having gone away, so it writes no
# response and closes the connection, which is the point.
def _reset(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise asyncio.CancelledError


def _drop(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError
