"""A local stand-in for Meta's WhatsApp Cloud API ``/messages`` endpoint, and webhook helpers.

:class:`WhatsAppCloudServer` answers ``POST /{version}/{phone_number_id}/messages`` the way the
Cloud API does: it checks the bearer token, the path and the message, answers with a ``wamid``,
and records what it accepted in :attr:`~WhatsAppCloudServer.accepted`. Tests (and the chaos
harness) make it misbehave with :meth:`~WhatsAppCloudServer.fail_next`,
:meth:`~WhatsAppCloudServer.inject` or a :attr:`~WhatsAppCloudServer.script` that picks a
:data:`Fault` per request. It can also enforce the pair rate limit and a throughput limit, so
that a pacing mistake shows up as the errors Meta would send.

It refuses what the Cloud API refuses, with Meta's codes and error bodies:

* a template text parameter with a new-line, a tab or more than four consecutive spaces:
  132018 (always);
* a text parameter longer than Meta's limits (Cloud API reference, parameter object): over
  32768 characters, the schema's ``maxLength``, is a Graph parameter error (100); a body
  parameter over 1024 characters when the request has other components, or a header parameter
  over 60, makes the template's text too long (132005) (always);
* free text (``type: text``) to a person whose 24-hour customer service window is closed:
  131047, when ``enforce_window`` is on. The window opens when the person writes
  (:meth:`~WhatsAppCloudServer.person_writes`); templates go out whatever the window.

And it sends what the Cloud API sends, signed with ``X-Hub-Signature-256`` like Meta, to
:attr:`~WhatsAppCloudServer.webhook_url`: the inbound message of a person who writes (also from
a person with a username and no phone number), statuses with or without
``biz_opaque_callback_data`` (:meth:`~WhatsAppCloudServer.send_status`), failed statuses whose
``errors`` have Meta's shape, and one POST that carries statuses and messages together
(:func:`batch_payload`).

:func:`status_payload`, :func:`inbound_payload` and :func:`post_webhook` build and deliver
webhooks exactly as Meta sends them, for tests that post them themselves.

It is over 400 lines because it stands in for a whole provider, both the Cloud API and its
webhooks, with the window and pacing rules Meta enforces: each is a small rule of its own,
read by rule rather than from top to bottom.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from aiohttp import web

from bulletin.channels.whatsapp import SIGNATURE_HEADER, sign


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """One message the server accepted: its ``wamid``, recipient, the JSON body, and when
    (``time.monotonic()``)."""

    wamid: str
    to: str
    body: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """One valid request the server refused on purpose (a fault or a limit), and when."""

    to: str
    code: int
    at: float


@dataclass(frozen=True, slots=True)
class GraphError:
    """Answer with a Graph API error, after ``delay`` seconds.

    ``http_status`` ``None`` means the status Meta uses for ``code``; ``retry_after`` adds a
    ``Retry-After`` header (seconds, or an HTTP date).
    """

    code: int
    http_status: int | None = None
    message: str | None = None
    subcode: int | None = None
    details: str | None = None
    retry_after: float | str | None = None
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Latency:
    """Accept the message at once (it is in the ledger), but answer only ``seconds`` later."""

    seconds: float


@dataclass(frozen=True, slots=True)
class DropAfterAccept:
    """Accept the message (it is in the ledger), then close the connection without an answer."""

    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class ResetBeforeAccept:
    """Close the connection without an answer and without accepting the message."""


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """Answer with these raw bytes (an HTML error page from a proxy, a garbled success).

    ``accept`` records the message in the ledger first, as when the Cloud API took it and
    something on the way back mangled the answer.
    """

    status: int = 200
    body: bytes = b"<html><body>Bad gateway</body></html>"
    content_type: str = "text/html"
    accept: bool = True


Fault = GraphError | Latency | DropAfterAccept | ResetBeforeAccept | RawAnswer

#: Titles Meta puts in the message of each error, as ``(#code) title``.
_TITLES = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    4: "Application request limit reached",
    10: "Application does not have permission for this action",
    100: "Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    200: "Permissions error",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131008: "Required parameter is missing",
    131016: "Service unavailable",
    131026: "Message undeliverable",
    131030: "Recipient phone number not in allowed list",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131051: "Unsupported message type",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    132000: "Number of parameters does not match the expected number of params",
    132001: "Template name does not exist in the translation",
    132005: "Translated text too long",
    132007: "Template Format Character Policy Violated",
    132012: "Parameter format does not match format in the created template",
    132018: "There was an issue with the parameters in your template.",
}
#: Meta's ``error_data.details`` for the errors whose details say more than the title.
_DETAILS = {
    131047: (
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number."
    ),
    132018: "Param text cannot have new-line/tab characters or more than 4 consecutive spaces",
}
_STATUS_FOR_CODE = {
    1: 500,
    2: 503,
    4: 429,
    10: 403,
    190: 401,
    200: 403,
    80007: 429,
    130429: 429,
    131000: 500,
    131016: 503,
    131056: 429,
}
_TO = re.compile(r"\+?[1-9][0-9]{6,14}")
_MAX_TEXT = 4096
#: How long a webhook post may take before it counts as failed.
_WEBHOOK_TIMEOUT_SECONDS = 10.0
#: Line breaks, tabs and runs of five spaces: what the Cloud API refuses in parameter text.
_BAD_PARAMETER_TEXT = re.compile(r"[\r\n\t]| {5}")
#: ``maxLength`` of a text parameter in Meta's OpenAPI description (``TextParameter``).
_MAX_PARAMETER = 32768
#: Meta's limits for a body parameter when the request has other components, and for a header.
_MAX_BODY_PARAMETER_WITH_OTHERS = 1024
_MAX_HEADER_PARAMETER = 60
#: The customer service window: free text is allowed this long after the person last wrote.
WINDOW_SECONDS = 24 * 3600


class _Invalid(Exception):
    def __init__(
        self, code: int, details: str, *, http_status: int = 400, subcode: int | None = None
    ):
        super().__init__(details)
        self.code = code
        self.details = details
        self.http_status = http_status
        self.subcode = subcode


def graph_error_body(
    code: int, message: str | None = None, *, subcode: int | None = None, details: str | None = None
) -> dict[str, Any]:
    """A Graph API error body, shaped as the Cloud API sends it."""
    error: dict[str, Any] = {
        "message": message or f"(#{code}) {_TITLES.get(code, 'Error')}",
        "type": "OAuthException",
        "code": code,
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = base64.urlsafe_b64encode(uuid.uuid4().bytes[:12]).decode()
    return {"error": error}


@dataclass(frozen=True, slots=True)
class SentWebhook:
    """One webhook the server built: the payload, and the HTTP status Bulletin answered
    (``None`` when no :attr:`~WhatsAppCloudServer.webhook_url` is set or the post failed)."""

    payload: dict[str, Any]
    status: int | None


WindowRefusal = Literal["status", "error"]


class WhatsAppCloudServer:
    """The Cloud API's send endpoint on 127.0.0.1, with a ledger and scriptable faults.

    Use it as ``async with WhatsAppCloudServer(...) as server`` and point the adapter at
    :attr:`base_url`. ``pair_interval`` (seconds) and ``max_per_second`` switch on Meta's pair
    rate limit (131056) and throughput limit (130429, over a sliding second); ``templates``,
    when given, is the set of approved template names (others get 132001). Template parameters
    are always held to Meta's rules (132018, length limits).

    ``enforce_window`` refuses free text to a person who has not written in the last 24 hours
    (131047), as the Cloud API does. It is off by default only because many tests send free text
    without playing the person's message first; ``bulletin devservers`` and the conformance
    tests turn it on. ``window_refusal`` says how the refusal comes: ``"status"`` (the default,
    what the Cloud API does for this error) answers 200 with a ``wamid`` and then posts a
    ``failed`` status whose ``errors`` carry 131047; ``"error"`` answers HTTP 400 with the Graph
    error 131047 at once. Either way the send is listed in :attr:`refused`.

    ``webhook_url`` and ``app_secret`` say where the server posts the webhooks it sends and the
    secret it signs them with; both may be set after construction, once Bulletin's webhook
    address is known. Without a URL, webhooks are only recorded in :attr:`webhooks`.
    """

    def __init__(
        self,
        *,
        access_token: str,
        phone_number_id: str = "100000000000001",
        api_version: str = "v21.0",
        port: int = 0,
        pair_interval: float | None = None,
        max_per_second: float | None = None,
        templates: Collection[str] | None = None,
        enforce_window: bool = False,
        window_refusal: WindowRefusal = "status",
        webhook_url: str | None = None,
        app_secret: str | None = None,
    ) -> None:
        if window_refusal not in ("status", "error"):
            raise ValueError(f"window_refusal must be 'status' or 'error', not {window_refusal!r}")
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.api_version = api_version
        self.pair_interval = pair_interval
        self.max_per_second = max_per_second
        self.templates = None if templates is None else set(templates)
        #: Refuse free text to a person whose customer service window is closed (131047).
        self.enforce_window = enforce_window
        #: ``"status"``: a failed status webhook after a 200; ``"error"``: an HTTP 400 answer.
        self.window_refusal: WindowRefusal = window_refusal
        #: Where webhooks are posted (Bulletin's ``/v1/webhooks/whatsapp/...``), if anywhere.
        self.webhook_url = webhook_url
        #: The app secret webhooks are signed with.
        self.app_secret = app_secret
        #: Every message accepted, in order.
        self.accepted: list[AcceptedMessage] = []
        #: Every valid request refused by a fault, a limit or a closed window, in order.
        self.refused: list[Refusal] = []
        #: Every webhook the server sent (or would have sent, without a URL), in order.
        self.webhooks: list[SentWebhook] = []
        #: Decides a fault per valid request (its JSON body); ``None`` answers normally.
        self.script: Callable[[dict[str, Any]], Fault | None] | None = None
        #: How many requests reached the endpoint, valid or not.
        self.requests = 0
        self._port = port
        self._queued: deque[Fault] = deque()
        self._last_to: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self._last_inbound: dict[str, float] = {}
        self._serial = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._posting: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, once started."""
        if self._base_url is None:
            raise RuntimeError("the server is not started")
        return self._base_url

    def sent_to(self, to: str) -> list[AcceptedMessage]:
        """The accepted messages for one recipient (with or without the leading ``+``)."""
        digits = to.removeprefix("+")
        return [message for message in self.accepted if message.to == digits]

    def find(self, wamid: str) -> AcceptedMessage:
        """The accepted message with this ``wamid``."""
        for message in self.accepted:
            if message.wamid == wamid:
                return message
        raise KeyError(wamid)

    def window_open(self, to: str, *, now: float | None = None) -> bool:
        """Whether ``to`` (a number, or a business-scoped user id) wrote in the last 24 hours."""
        last = self._last_inbound.get(to.removeprefix("+"))
        moment = time.time() if now is None else now
        return last is not None and moment - last < WINDOW_SECONDS

    def fail_next(
        self,
        n: int = 1,
        *,
        code: int = 131000,
        http_status: int | None = None,
        message: str | None = None,
        details: str | None = None,
        retry_after: float | str | None = None,
    ) -> None:
        """Answer the next ``n`` valid requests with this Graph API error."""
        self.inject(
            GraphError(
                code,
                http_status=http_status,
                message=message,
                details=details,
                retry_after=retry_after,
            ),
            n,
        )

    def inject(self, fault: Fault, n: int = 1) -> None:
        """Apply ``fault`` to the next ``n`` valid requests (before :attr:`script` is asked)."""
        self._queued.extend([fault] * n)

    # --- what the people and Meta send -------------------------------------------------------

    async def person_writes(
        self,
        number: str | None,
        text: str = "Hello",
        *,
        at: float | None = None,
        user_id: str | None = None,
        username: str | None = None,
        profile_name: str = "Test User",
    ) -> dict[str, Any]:
        """A person writes to the business: their window opens, and the inbound message webhook
        is posted to :attr:`webhook_url` (when set). Returns the payload.

        ``at`` (unix seconds) backdates the message, so that a test can have a person who wrote
        25 hours ago. ``number`` ``None`` is a person with a username whose phone number Meta
        does not share: the webhook identifies them only by their business-scoped ``user_id``
        (derived from ``username`` when not given). With a number, the ``user_id`` Meta now
        adds to every message webhook is derived from its digits, as in :meth:`send_status`.
        """
        if number is None and user_id is None and username is None:
            raise ValueError("a person without a phone number needs a user_id or a username")
        key = number.removeprefix("+") if number is not None else (username or "")
        user_id = user_id or business_scoped_user_id(key)
        moment = time.time() if at is None else at
        keys = [user_id] if number is None else [user_id, number.removeprefix("+")]
        for known in keys:
            # The window runs from the person's latest message, whatever order they are played.
            self._last_inbound[known] = max(moment, self._last_inbound.get(known, moment))
        payload = inbound_payload(
            self.phone_number_id,
            number,
            text,
            int(moment),
            profile_name=profile_name,
            user_id=user_id,
            username=username,
        )
        await self.post(payload)
        return payload

    async def send_status(
        self,
        wamid: str,
        status: str,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        with_callback_data: bool = True,
        post: bool = True,
    ) -> dict[str, Any]:
        """Report ``status`` (``sent``, ``delivered``, ``read``, ``failed``) for an accepted
        message, as Meta does, and post it (unless ``post`` is false). Returns the payload.

        The status carries the message's ``biz_opaque_callback_data`` when the message had one
        and ``with_callback_data`` is true; Meta's schema does not promise the field, so a
        status without it is what a client must also accept. A failed status has ``errors``
        (131026 unless given; build others with :func:`status_error`).
        """
        message = self.find(wamid)
        callback = message.body.get("biz_opaque_callback_data") if with_callback_data else None
        payload = status_payload(
            self.phone_number_id,
            wamid,
            status,
            message.to,
            callback if isinstance(callback, str) else None,
            errors,
            user_id=business_scoped_user_id(message.to),
        )
        if post:
            await self.post(payload)
        return payload

    async def post(self, payload: Mapping[str, Any]) -> int | None:
        """Post ``payload`` to :attr:`webhook_url`, signed as Meta signs; Bulletin's HTTP status,
        or ``None`` without a URL or when the post failed. Recorded in :attr:`webhooks`."""
        status: int | None = None
        if self.webhook_url is not None:
            if self._session is None:
                # Meta gives up on a webhook that takes long to answer; so does the stand-in.
                timeout = aiohttp.ClientTimeout(total=_WEBHOOK_TIMEOUT_SECONDS)
                self._session = aiohttp.ClientSession(timeout=timeout)
            try:
                status = await post_webhook(
                    self._session, self.webhook_url, payload, self.app_secret or ""
                )
            except (aiohttp.ClientError, TimeoutError):
                status = None
        self.webhooks.append(SentWebhook(dict(payload), status))
        return status

    async def settle(self) -> None:
        """Wait until the webhooks the server posts on its own (failed statuses) are sent."""
        while self._posting:
            await asyncio.gather(*self._posting, return_exceptions=True)

    # --- running -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port unless one was given)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancelling a handler whose client left lets a delayed answer end with the test, and a
        # short shutdown keeps a stalled fault from holding up the end of a test.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        self._base_url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening and close every connection."""
        for task in self._posting:
            task.cancel()
        await asyncio.gather(*self._posting, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        try:
            self._check_token(request)
            self._check_path(request)
            body = await self._read_body(request)
            to = _validate(body, self.templates)
        except _Invalid as invalid:
            return _error_response(
                invalid.http_status,
                graph_error_body(invalid.code, subcode=invalid.subcode, details=invalid.details),
            )

        fault = self._queued.popleft() if self._queued else None
        if fault is None and self.script is not None:
            fault = self.script(body)
        if fault is None:
            fault = self._limit(to)
        # A slow answer does not change what the Cloud API decides about the window.
        closed = (fault is None or isinstance(fault, Latency)) and self._window_closed(to, body)
        if closed and self.window_refusal == "error":
            delay = fault.seconds if isinstance(fault, Latency) else 0.0
            fault = GraphError(131047, details=_DETAILS[131047], delay=delay)

        if isinstance(fault, ResetBeforeAccept):
            return _hang_up(request)
        if isinstance(fault, GraphError):
            self.refused.append(Refusal(to, fault.code, time.monotonic()))
            if fault.delay:
                await asyncio.sleep(fault.delay)
            status = fault.http_status or _STATUS_FOR_CODE.get(fault.code, 400)
            headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            payload = graph_error_body(
                fault.code, fault.message, subcode=fault.subcode, details=fault.details
            )
            return _error_response(status, payload, headers)

        if isinstance(fault, RawAnswer):
            if fault.accept:
                self._accept(to, body)
            return web.Response(
                status=fault.status, body=fault.body, content_type=fault.content_type
            )

        answer = self._accept(to, body)
        if isinstance(fault, DropAfterAccept):
            if fault.delay:
                await asyncio.sleep(fault.delay)
            return _hang_up(request)
        if isinstance(fault, Latency):
            await asyncio.sleep(fault.seconds)
        if not closed:
            return web.json_response(answer)
        # The Cloud API takes the message and reports the closed window afterwards, as a
        # failed status: the answer goes out first, then the webhook.
        wamid: str = answer["messages"][0]["id"]
        self.refused.append(Refusal(to, 131047, time.monotonic()))
        response = web.json_response(answer)
        await response.prepare(request)
        await response.write_eof()
        task = asyncio.create_task(self._report_closed_window(wamid))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)
        return response

    async def _report_closed_window(self, wamid: str) -> None:
        await self.send_status(wamid, "failed", errors=[status_error(131047)])

    def _window_closed(self, to: str, body: Mapping[str, Any]) -> bool:
        return (
            self.enforce_window
            and body.get("type", "text") != "template"
            and not self.window_open(to)
        )

    def _check_token(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.access_token:
            raise _Invalid(190, "Invalid OAuth access token", http_status=401)

    def _check_path(self, request: web.Request) -> None:
        parts = request.path.strip("/").split("/")
        if request.method != "POST" or len(parts) != 3 or parts[2] != "messages":
            raise _Invalid(100, f"Unsupported {request.method.lower()} request.", subcode=33)
        if parts[0] != self.api_version:
            raise _Invalid(100, f"Unknown version {parts[0]!r}", subcode=33)
        if parts[1] != self.phone_number_id:
            raise _Invalid(
                100,
                f"Unsupported post request. Object with ID '{parts[1]}' does not exist, cannot "
                "be loaded due to missing permissions, or does not support this operation.",
                subcode=33,
            )

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise _Invalid(100, "The request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise _Invalid(100, "The request body must be a JSON object.")
        return body

    def _limit(self, to: str) -> Fault | None:
        now = time.monotonic()
        if self.pair_interval is not None:
            last = self._last_to.get(to)
            if last is not None and now - last < self.pair_interval:
                return GraphError(131056)
        if self.max_per_second is not None:
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.max_per_second:
                return GraphError(130429)
        return None

    def _accept(self, to: str, body: dict[str, Any]) -> dict[str, Any]:
        serial = next(self._serial).to_bytes(8, "big") + uuid.uuid4().bytes
        wamid = "wamid." + base64.b64encode(serial).decode().rstrip("=")
        now = time.monotonic()
        self.accepted.append(AcceptedMessage(wamid=wamid, to=to, body=body, at=now))
        self._last_to[to] = now
        self._recent.append(now)
        message: dict[str, Any] = {"id": wamid}
        if body.get("type") == "template":
            message["message_status"] = "accepted"
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": to}],
            "messages": [message],
        }


def _validate(body: Mapping[str, Any], templates: set[str] | None) -> str:
    """Check a send the way the Cloud API does; the recipient's digits when it is good."""
    if body.get("messaging_product") != "whatsapp":
        raise _Invalid(100, "The parameter messaging_product is required.")
    if body.get("recipient_type", "individual") != "individual":
        raise _Invalid(100, "Param recipient_type must be 'individual'.")
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise _Invalid(100, "The parameter to is required.")
    if not _TO.fullmatch(to):
        raise _Invalid(100, "Invalid 'to' parameter.")
    callback = body.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        raise _Invalid(100, "Param biz_opaque_callback_data must be a string of 512 characters.")
    kind = body.get("type", "text")
    if kind == "text":
        _validate_text(body.get("text"))
    elif kind == "template":
        _validate_template(body.get("template"), templates)
    else:
        raise _Invalid(100, f"Param type must be one of {{text, template}}, not {kind!r}.")
    return to.removeprefix("+")


def _validate_text(text: object) -> None:
    if not isinstance(text, dict):
        raise _Invalid(100, "The parameter text is required.")
    body = text.get("body")
    if not isinstance(body, str) or not body.strip():
        raise _Invalid(100, "The parameter text['body'] is required.")
    if len(body) > _MAX_TEXT:
        raise _Invalid(100, f"Param text['body'] must be at most {_MAX_TEXT} characters long.")
    if not isinstance(text.get("preview_url", False), bool):
        raise _Invalid(100, "Param text['preview_url'] must be a boolean.")


def _validate_template(template: object, templates: set[str] | None) -> None:
    if not isinstance(template, dict):
        raise _Invalid(100, "The parameter template is required.")
    name = template.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid(100, "The parameter template['name'] is required.")
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str):
        raise _Invalid(100, "The parameter template['language']['code'] is required.")
    components = template.get("components", [])
    if not isinstance(components, list):
        raise _Invalid(100, "Param template['components'] must be an array.")
    for i, component in enumerate(components):
        if not isinstance(component, dict) or not isinstance(component.get("type"), str):
            raise _Invalid(100, f"Param template['components'][{i}]['type'] is required.")
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list):
            raise _Invalid(100, f"Param template['components'][{i}]['parameters'] is invalid.")
        for j, parameter in enumerate(parameters):
            good = (
                isinstance(parameter, dict)
                and parameter.get("type") == "text"
                and isinstance(parameter.get("text"), str)
            )
            if not good:
                raise _Invalid(
                    100, f"Param template['components'][{i}]['parameters'][{j}] is invalid."
                )
    if templates is not None and name not in templates:
        raise _Invalid(132001, f"template name ({name}) does not exist in {language['code']}")
    _check_parameter_texts(components)


def _check_parameter_texts(components: Sequence[Mapping[str, Any]]) -> None:
    """Meta's rules for the text of template parameters (already known to be strings)."""
    only_body = all(component["type"] == "body" for component in components)
    for i, component in enumerate(components):
        kind = component["type"]
        if kind == "header":
            limit: int | None = _MAX_HEADER_PARAMETER
        elif kind == "body" and not only_body:
            limit = _MAX_BODY_PARAMETER_WITH_OTHERS
        else:
            limit = None
        for j, parameter in enumerate(component.get("parameters", [])):
            text: str = parameter["text"]
            where = f"template['components'][{i}]['parameters'][{j}]['text']"
            if len(text) > _MAX_PARAMETER:
                raise _Invalid(
                    100, f"Param {where} must be at most {_MAX_PARAMETER} characters long."
                )
            if limit is not None and len(text) > limit:
                raise _Invalid(
                    132005, f"The {kind} parameter {where} is longer than {limit} characters."
                )
            if _BAD_PARAMETER_TEXT.search(text):
                raise _Invalid(132018, _DETAILS[132018])


def _error_response(
    status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    # Meta sends its error bodies as JSON with the WWW-Authenticate header on 401s.
    extra = dict(headers or {})
    if status == 401:
        extra["WWW-Authenticate"] = 'OAuth "Facebook Platform" "invalid_token"'
    return web.json_response(payload, status=status, headers=extra)


def _hang_up(request: web.Request) -> web.Response:
    # Closing the transport makes aiohttp's attempt to send this response fail quietly, so the
    # client sees the connection end with no answer at all.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


# --- webhooks -------------------------------------------------------------------------------

WABA_ID = "102290129340398"
DISPLAY_PHONE_NUMBER = "15550783881"


def _envelope(phone_number_id: str, value: dict[str, Any]) -> dict[str, Any]:
    metadata = {"display_phone_number": DISPLAY_PHONE_NUMBER, "phone_number_id": phone_number_id}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def _now_seconds() -> int:
    return int(time.time())


def status_error(code: int, title: str | None = None, details: str | None = None) -> dict[str, Any]:
    """One entry of a failed status's ``errors``, as Meta writes it: ``code``, ``title``,
    ``message``, ``error_data.details`` and ``href``."""
    title = title or _TITLES.get(code, "Error")
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details or _DETAILS.get(code, title)},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }


def business_scoped_user_id(key: str, country: str = "US") -> str:
    """A stable business-scoped user id (BSUID) for ``key``, shaped as Meta writes them: a
    two-letter country code, a dot, and digits (``US.13491208655302741918``)."""
    digits = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return f"{country}.{digits}"


def status_payload(
    phone_number_id: str,
    wamid: str,
    status: str,
    recipient: str,
    callback_data: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    timestamp: int | None = None,
    *,
    user_id: str | None = None,
) -> dict[str, Any]:
    """A status webhook (``sent``, ``delivered``, ``read``, ``failed``...) for one message.

    ``callback_data`` ``None`` leaves ``biz_opaque_callback_data`` out, as Meta does for a
    message sent without it. ``user_id`` adds the recipient's business-scoped user id
    (``recipient_user_id``) and, except on a failed status, the ``contacts`` Meta sends with it.
    """
    recipient_id = recipient.removeprefix("+")
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(_now_seconds() if timestamp is None else timestamp),
        "recipient_id": recipient_id,
    }
    if user_id is not None:
        entry["recipient_user_id"] = user_id
    if callback_data is not None:
        entry["biz_opaque_callback_data"] = callback_data
    if status in ("sent", "delivered"):
        entry["conversation"] = {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"{phone_number_id}/{recipient_id}").hex,
            "origin": {"type": "utility"},
        }
        entry["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "utility"}
    if errors is not None:
        entry["errors"] = [dict(error) for error in errors]
    elif status == "failed":
        entry["errors"] = [status_error(131026)]
    value: dict[str, Any] = {"statuses": [entry]}
    if user_id is not None and status != "failed":
        value["contacts"] = [{"wa_id": recipient_id, "user_id": user_id}]
    return _envelope(phone_number_id, value)


def inbound_payload(
    phone_number_id: str,
    from_number: str | None,
    text: str,
    timestamp: int | None = None,
    *,
    message_type: Literal["text", "button", "interactive", "image"] = "text",
    profile_name: str = "Test User",
    user_id: str | None = None,
    username: str | None = None,
) -> dict[str, Any]:
    """A webhook for one message a person sent: typed text, a quick-reply button, a reply
    button of an interactive message, or an image (``text`` is then its caption).

    ``user_id`` is the sender's business-scoped user id, written as Meta does (``user_id`` in
    ``contacts``, ``from_user_id`` in the message); ``username`` goes in the profile. A sender
    with a username whose number Meta does not share has ``from_number`` ``None``: the message
    then has no ``from`` and the contact no ``wa_id``, and a ``user_id`` is required.
    """
    if from_number is None and user_id is None:
        raise ValueError("a sender without a phone number is identified by a user_id")
    message: dict[str, Any] = {}
    contact: dict[str, Any] = {"profile": {"name": profile_name}}
    if username is not None:
        contact["profile"]["username"] = username
    if from_number is not None:
        sender = from_number.removeprefix("+")
        message["from"] = sender
        contact["wa_id"] = sender
    if user_id is not None:
        message["from_user_id"] = user_id
        contact["user_id"] = user_id
    message.update(
        {
            "id": "wamid." + base64.b64encode(uuid.uuid4().bytes).decode().rstrip("="),
            "timestamp": str(_now_seconds() if timestamp is None else timestamp),
            "type": message_type,
        }
    )
    if message_type == "text":
        message["text"] = {"body": text}
    elif message_type == "button":
        message["button"] = {"payload": text, "text": text}
    elif message_type == "interactive":
        reply = {"id": "reply-1", "title": text}
        message["interactive"] = {"type": "button_reply", "button_reply": reply}
    else:
        image = {"mime_type": "image/jpeg", "sha256": "0" * 64, "id": str(uuid.uuid4().int)[:16]}
        if text:
            image["caption"] = text
        message["image"] = image
    return _envelope(phone_number_id, {"contacts": [contact], "messages": [message]})


def batch_payload(*payloads: Mapping[str, Any], one_value: bool = False) -> dict[str, Any]:
    """One POST carrying the changes of several webhooks (statuses and messages together).

    By default each change stays whole, side by side in one entry. With ``one_value`` the
    changes of one phone number are merged into a single ``value`` whose ``statuses``,
    ``messages`` and ``contacts`` arrays hold them all: the densest form a client can get.
    """
    changes: list[dict[str, Any]] = [
        json.loads(json.dumps(change))
        for payload in payloads
        for entry in payload["entry"]
        for change in entry["changes"]
    ]
    if one_value:
        merged: dict[str, dict[str, Any]] = {}
        for change in changes:
            value = change["value"]
            number = value["metadata"]["phone_number_id"]
            into = merged.setdefault(number, {"value": {}, "field": change["field"]})["value"]
            for key, item in value.items():
                if isinstance(item, list):
                    into.setdefault(key, []).extend(item)
                else:
                    into.setdefault(key, item)
        changes = list(merged.values())
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": changes}]}


def webhook_body(payload: Mapping[str, Any]) -> bytes:
    """The bytes Meta would post for ``payload`` (compact JSON, non-ASCII escaped)."""
    return json.dumps(payload, separators=(",", ":")).encode()


async def post_webhook(
    session: aiohttp.ClientSession, url: str, payload: Mapping[str, Any], app_secret: str
) -> int:
    """Post ``payload`` to ``url`` as Meta does, signed with ``app_secret``; the HTTP status."""
    body = webhook_body(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "facebookexternalua",
        SIGNATURE_HEADER: sign(app_secret, body),
    }
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.status
