"""Request ids, one log line and metrics for every API request, as a pure ASGI middleware.

Each request gets an id: the caller's ``X-Request-ID`` when it is sane (up to 64 characters
of ``A-Z a-z 0-9 . _ -``), otherwise a new one. It is bound to structlog's context for the
whole request, so every line logged while answering carries it, and it is returned in the
``X-Request-ID`` response header, on errors too. When the answer is sent, the request is
counted by route template (never the raw path, which holds ids and unsubscribe tokens),
method and status, and logged once as ``http.request``.

It also records what the request carries in its credential headers, cookies, secret-named
query parameters and body fields (:class:`bulletin.logs.RequestSecrets`), so that no line
logged while answering it repeats them; its own line names the route template, never the path
or the query string, which may hold tokens.

It must wrap the whole application, outside Starlette's error middleware, so that a 500 and
the error handler's own log line also carry the id (``app.create_app`` places it there).
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulletin import logs
from bulletin.metrics import HTTP_REQUESTS, HTTP_SECONDS

log = structlog.get_logger("bulletin.api")

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEADER_KEY = HEADER.lower().encode()
#: Methods counted under their own name; anything else is "other", to bound the labels.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Probes and scrapes arrive every few seconds; their lines are only worth it when debugging.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
#: The route label of requests that matched no route (so unknown paths add no label values).
UNMATCHED = "<unmatched>"


def request_id_of(scope: Scope) -> str:
    """The caller's request id if it is sane, else a new one."""
    for key, value in scope["headers"]:
        if key == _HEADER_KEY:
            given: str = value.decode("latin-1")
            if _SANE.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The template of the route that answered (``/v1/recipients/{external_id}``)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED


class TelemetryMiddleware:
    """Binds the request id, sets the response header, counts and logs each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        status = 500  # what the client gets if the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])  # optional in ASGI
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        carried = logs.RequestSecrets(scope["headers"], scope.get("query_string", b""))

        async def receive_watched() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                carried.add_body(message.get("body", b""))
            return message

        watching = logs.watch(carried)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive_watched, send_with_id)
            finally:
                self._record(scope, status, time.perf_counter() - started)
        # Not on an exception: the server logs it once more after this returns, in this task,
        # and that copy must be masked with this request's secrets too.
        logs.unwatch(watching)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = route_of(scope)
        method = scope["method"] if scope["method"] in _METHODS else "other"
        HTTP_REQUESTS.labels(route, method, str(status)).inc()
        HTTP_SECONDS.labels(route, method).observe(seconds)
        emit = log.debug if route in _QUIET_ROUTES and status < 400 else log.info
        emit(
            "http.request",
            method=method,
            route=route,
            status=status,
            duration_ms=round(seconds * 1000, 2),
        )
