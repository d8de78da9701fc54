"""Per-address limits of the routes that need no API key, and the ``RateLimit`` fields.

Routes without a key are counted per client address: provider webhooks (``/v1/webhooks/``,
generous: providers post thousands a second from few addresses), preference pages and
unsubscribe links (``/p/``, ``/v1/unsubscribe/``) and portal sign-in posts (strict). The
address is ``request.client`` as the server gives it: behind a reverse proxy it is the proxy's,
unless the operator names the proxy as trusted (``BULLETIN_FORWARDED_ALLOW_IPS``), in which case
uvicorn takes it from ``X-Forwarded-For``.

Requests with a key are counted in :func:`bulletin.orgs.auth.require`; this middleware adds
that decision's fields to the answer.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulletin.api import problems
from bulletin.config import Settings
from bulletin.db import describe
from bulletin.ratelimits.service import Decision, RateLimited, RateLimits, current, refused
from bulletin.services import Services

log = structlog.get_logger("bulletin.ratelimit")


def policy_of(method: str, path: str) -> str | None:
    """The per-address policy of a request, or ``None`` for routes that are not limited so."""
    if path.startswith("/v1/webhooks/"):
        return "webhooks"
    if path.startswith(("/p/", "/v1/unsubscribe/")) and not path.startswith("/p/static/"):
        return "pages"
    if path == "/portal/sign-in" and method == "POST":
        return "sign-in"
    return None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _problem(decision: Decision, detail: str, path: str) -> JSONResponse:
    return problems.problem(
        429,
        "rate-limited",
        "Too many requests",
        detail,
        instance=path,
        headers=decision.headers(),
    )


class RateLimitMiddleware:
    """Counts unauthenticated routes per address; puts every decision's fields on the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        services: Services | None = getattr(state, "services", None)
        name = policy_of(scope["method"], scope["path"])
        if name is not None and services is not None and services.startup.ready:
            limits: RateLimits = state.rate_limits
            try:
                decision = await limits.hit(services.db, name, client_address(scope))
            except (SQLAlchemyError, OSError) as exc:
                # The database is away: the route itself answers 503 (or works without it).
                log.warning("ratelimit.unavailable", policy=name, error=describe(exc))
                decision = None
            if decision is not None and not decision.allowed:
                error = refused(decision, "this address")
                await _problem(decision, error.detail, scope["path"])(scope, receive, send)
                return
        holder: list[Decision] = []
        token = current.set(holder)

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start" and holder:
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for field, value in holder[-1].headers().items():
                    if field.lower().encode() not in present:
                        headers.append((field.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_fields)
        finally:
            current.reset(token)


async def _rate_limited(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    return _problem(exc.decision, exc.detail, request.url.path)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the limits to ``app``: the policies, the middleware, the 429 answer."""
    app.state.rate_limits = RateLimits(settings)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_middleware(RateLimitMiddleware)
