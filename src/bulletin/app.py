"""The ASGI application. ``create_app(settings)`` is the only way to make one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from bulletin import __version__
from bulletin.api import health, problems
from bulletin.bootstrap import running
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.deliveries import endpoints as deliveries
from bulletin.messages import endpoints as messages
from bulletin.providers import endpoints as channels
from bulletin.recipients import endpoints as recipients
from bulletin.sandbox import endpoints as sandbox
from bulletin.web import unsubscribe
from bulletin.webhooks import endpoints as webhooks

DESCRIPTION = """
Bulletin delivers announcements and notifications over WhatsApp, SMS and email, now or at
a scheduled time, honouring each person's preferences, and reaches each person once.

Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. Errors are RFC 9457
problem details. Lists are cursor-paginated (`?limit=&cursor=`). Every creating POST accepts
an `Idempotency-Key` header.
"""


def create_app(
    settings: Settings,
    *,
    run_worker: bool = False,
    registry: ChannelRegistry | None = None,
) -> FastAPI:
    """The API; with ``run_worker`` the same process also runs the delivery engine."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(
            settings, dispatch=run_worker, schedule=run_worker, registry=registry
        ) as svc:
            app.state.services = svc
            yield

    app = FastAPI(
        title="Bulletin",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(health.router)
    app.include_router(recipients.router)
    app.include_router(messages.router)
    app.include_router(deliveries.router)
    app.include_router(channels.router)
    app.include_router(webhooks.router)
    app.include_router(sandbox.router)
    app.include_router(unsubscribe.router)
    return app
