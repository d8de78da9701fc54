"""A limit on the size of request bodies, enforced before and while a body is read.

A request whose ``Content-Length`` is over the limit is answered 413 without reading a byte of
its body. A request without one (``Transfer-Encoding: chunked``) is counted as it streams in:
the moment it grows past the limit, reading stops and the answer is a 413, whatever the route
was about to do with the body. Either way nothing of the request is applied.

A JSON body (or one without a content type, which some routes read as JSON) is read whole,
within the same limit, and its nesting is measured before any parser sees it: one nested more
than :data:`bulletin.jsonvalue.MAX_BODY_DEPTH` levels is answered 422. Python's JSON parser
recurses, and a body nested near its limit would pass the first parse and fail a later one
deeper in the stack (the Idempotency-Key fingerprint, a log line) as a 500.

This is a pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, so that it sees
the body as it streams instead of after it has been buffered.
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulletin import jsonvalue
from bulletin.api.problems import problem

log = structlog.get_logger("bulletin.api")


class _TooLarge(Exception):
    """Raised into the application when the body it is reading grows past the limit."""


class BodySizeLimit:
    """Answer 413 to any HTTP request whose body is longer than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            log.warning(
                "api.body_too_large", path=scope["path"], declared=declared, limit=self.max_bytes
            )
            await self._reject(scope, receive, send)
            return
        if _reads_as_json(scope):
            await self._whole(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    log.warning(
                        "api.body_too_large",
                        path=scope["path"],
                        received=received,
                        limit=self.max_bytes,
                    )
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Whatever the route makes of a body cut short (FastAPI calls it a 400) is not
            # sent: the 413 below is the answer. A route that had already begun to answer
            # keeps its answer.
            if exceeded and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Once the body is cut short, whatever the route raised (this module's _TooLarge,
            # or what a parser made of it) is answered by the 413 below.
            if not exceeded:
                raise
        if exceeded and not started:
            await self._reject(scope, receive, send)

    async def _whole(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body whole (within the limit), measure its nesting, then run the app on it."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: there is no one to answer
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                log.warning(
                    "api.body_too_large",
                    path=scope["path"],
                    received=received,
                    limit=self.max_bytes,
                )
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if jsonvalue.too_deep(body):
            log.warning("api.body_too_deep", path=scope["path"], limit=jsonvalue.MAX_BODY_DEPTH)
            limit = jsonvalue.MAX_BODY_DEPTH
            response = problem(
                422,
                "validation-error",
                "Invalid request",
                f"The JSON body is nested deeper than {limit} levels.",
                instance=scope["path"],
                errors_=[
                    {
                        "loc": ["body"],
                        "message": f"JSON nested deeper than {limit} levels",
                        "type": "json_depth",
                    }
                ],
            )
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "payload-too-large",
            "Payload too large",
            f"The request body is larger than the limit of {self.max_bytes} bytes.",
            instance=scope["path"],
            # The rest of the body is not read: the connection cannot be reused for another
            # request.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _reads_as_json(scope: Scope) -> bool:
    """Whether a route may parse this request's body as JSON: a JSON media type, or none."""
    if scope["method"] in ("GET", "HEAD", "OPTIONS"):
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = bytes(value).decode("latin-1").split(";", 1)[0].strip().lower()
            return media == "application/json" or media.endswith("+json")
    return True


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server has already refused a Content-Length that is not a number.
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else None
    return None
