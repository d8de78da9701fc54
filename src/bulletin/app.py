"""The ASGI application. ``create_app(settings)`` is the only way to make one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from bulletin import __version__
from bulletin.api import health, problems
from bulletin.api import metrics as metrics_endpoint
from bulletin.api.body_limit import BodySizeLimit
from bulletin.api.telemetry import TelemetryMiddleware
from bulletin.bootstrap import Prepare, running
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.deliveries import endpoints as deliveries
from bulletin.deliveries.metrics import database_families
from bulletin.events import endpoints as events
from bulletin.messages import endpoints as messages
from bulletin.orgs import endpoints as organization
from bulletin.orgs.auth import KeyCache
from bulletin.orgs.tasks import recording_key_uses
from bulletin.providers import endpoints as channels
from bulletin.ratelimits import middleware as ratelimits
from bulletin.recipients import endpoints as recipients
from bulletin.sandbox import endpoints as sandbox
from bulletin.subscriptions import endpoints as webhook_endpoints
from bulletin.web import portal, preferences, unsubscribe
from bulletin.web.headers import PageHeaders
from bulletin.web.rendering import STATIC_PATH
from bulletin.webhooks import endpoints as webhooks

DESCRIPTION = """
Bulletin delivers announcements and notifications over WhatsApp, SMS and email, now or at
a scheduled time, honouring each person's preferences, and reaches each person once.

Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. Errors are RFC 9457
problem details. Lists are cursor-paginated (`?limit=&cursor=`). Every creating POST accepts
an `Idempotency-Key` header.
"""


class BulletinAPI(FastAPI):
    """FastAPI with request ids, request logs and request metrics around everything."""

    def build_middleware_stack(self) -> ASGIApp:
        # Outside Starlette's error middleware, which ``add_middleware`` cannot reach: a 500
        # and the error handler's log line then carry the request id too.
        return TelemetryMiddleware(super().build_middleware_stack())


def create_app(
    settings: Settings,
    *,
    run_worker: bool = False,
    registry: ChannelRegistry | None = None,
    migrate_it: bool = False,
    prepare: Prepare | None = None,
) -> FastAPI:
    """The API; with ``run_worker`` the same process also runs the delivery engine.

    The app listens at once and starts in the background (see :mod:`bulletin.bootstrap`):
    waits for the database (applying migrations with ``migrate_it``), runs ``prepare``, starts
    the engine. Until then ``/health`` answers 200, ``/ready`` 503, and everything else a 503
    problem with ``Retry-After``; ``app.state.services.startup.wait()`` waits for the end.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(
            settings,
            dispatch=run_worker,
            schedule=run_worker,
            registry=registry,
            migrate_it=migrate_it,
            prepare=prepare,
            wait=False,
        ) as services:
            app.state.services = services
            async with recording_key_uses(services.db, app.state.keys):
                yield

    app = BulletinAPI(
        title="Bulletin",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    #: Keys this process has found valid lately (see :class:`~bulletin.orgs.auth.KeyCache`).
    app.state.keys = KeyCache(settings.api_key_cache_seconds)
    problems.install(app)
    app.add_middleware(health.StartupGate)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(PageHeaders)
    app.include_router(health.router)
    app.include_router(metrics_endpoint.router(database_families))
    app.include_router(recipients.router)
    app.include_router(messages.router)
    app.include_router(events.types_router)
    app.include_router(events.router)
    app.include_router(deliveries.message_router)
    app.include_router(deliveries.router)
    app.include_router(channels.router)
    app.include_router(webhooks.router)
    app.include_router(webhook_endpoints.router)
    app.include_router(sandbox.router)
    app.include_router(unsubscribe.router)
    app.include_router(organization.router)
    app.include_router(organization.keys_router)
    # Before the preference routes, so that /p/static/... is never read as a link.
    app.mount(STATIC_PATH, StaticFiles(packages=[("bulletin.web", "static")]), name="static")
    app.include_router(preferences.router)
    portal.install(app)
    # Outermost: per-address limits answer before anything else runs.
    ratelimits.install(app, settings)
    return app
