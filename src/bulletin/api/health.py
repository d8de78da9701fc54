"""Liveness and readiness, for load balancers and orchestrators. No key needed.

``/health`` answers 200 from the moment the process listens, including while it waits for the
database: the process is alive, and restarting it would not bring the database. It answers 503
only when start-up failed for a reason waiting does not cure (a broken migration), so that an
orchestrator replaces the process. ``/ready`` answers 200 only once the process has started
(see :mod:`bulletin.bootstrap`) and the database answers now; until then, and while the
database is away, it answers 503 with what it is waiting for.

:class:`StartupGate` answers every other request with a 503 problem while the process starts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from bulletin import migrate
from bulletin.api import problems
from bulletin.api.deps import ServicesDep
from bulletin.services import Phase, Services

router = APIRouter(tags=["health"])

#: Paths answered while the process starts (``/metrics`` says when the database is away).
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})


def _not_ready(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        body, status_code=503, headers={"Retry-After": str(problems.RETRY_AFTER_SECONDS)}
    )


@router.get("/health", responses={503: {"description": "Start-up failed; replace the process"}})
async def health(request: Request) -> JSONResponse:
    """The process is alive (also while it waits for the database)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is not None and services.startup.phase is Phase.FAILED:
        return _not_ready({"status": "failed", "detail": "start-up failed; see the logs"})
    return JSONResponse({"status": "ok"})


@router.get("/ready", responses={503: {"description": "Not ready"}})
async def ready(services: ServicesDep) -> JSONResponse:
    """The process has started, the database answers, and its schema is the newest."""
    phase = services.startup.phase
    if phase is Phase.FAILED:
        return _not_ready({"status": "failed", "detail": "start-up failed; see the logs"})
    if phase is not Phase.READY:
        database = "ok" if phase is Phase.STARTING else phase.value
        return _not_ready({"status": "starting", "database": database})
    try:
        async with services.db.read() as session:
            await session.execute(text("SELECT 1"))
        current = await migrate.is_current(services.db)
    except (SQLAlchemyError, OSError) as exc:
        return _not_ready(
            {"status": "unavailable", "database": "unreachable", "detail": type(exc).__name__}
        )
    if not current:
        return _not_ready({"status": "unavailable", "database": "migrations pending"})
    return JSONResponse({"status": "ready", "database": "ok"})


class StartupGate:
    """Answers 503 (a problem, with ``Retry-After``) to everything but :data:`OPEN_PATHS` until
    the process has started, so that no request reaches a database that is not there yet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            services: Services | None = getattr(scope["app"].state, "services", None)
            if services is None or not services.startup.ready:
                phase = services.startup.phase.value if services is not None else "starting"
                response = problems.unavailable(
                    f"Bulletin is starting ({phase}); retry after Retry-After seconds.",
                    slug="starting",
                    instance=scope["path"],
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
