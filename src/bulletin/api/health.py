"""Liveness and readiness, for load balancers and orchestrators. No key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bulletin import migrate
from bulletin.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "Not ready"}})
async def ready(svc: ServicesDep) -> JSONResponse:
    """The database answers and its schema is at the newest migration."""
    try:
        async with svc.db.read() as session:
            await session.execute(text("SELECT 1"))
        current = await migrate.is_current(svc.db)
    except (SQLAlchemyError, OSError) as exc:
        return JSONResponse(
            {"status": "unavailable", "database": "unreachable", "detail": type(exc).__name__},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    if not current:
        return JSONResponse(
            {"status": "unavailable", "database": "migrations pending"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ready", "database": "ok"})
