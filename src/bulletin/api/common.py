"""Pieces shared by the routers: paging parameters and idempotent creation."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.idempotency import service as idempotency
from bulletin.idempotency.service import StoredAnswer
from bulletin.services import Services

Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor of the last page."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Makes retries safe: the same key and body return the first answer.",
    ),
]


async def create_idempotently(
    request: Request,
    services: Services,
    org_id: uuid.UUID,
    key: str | None,
    create: Callable[[AsyncSession], Awaitable[StoredAnswer]],
    *,
    wakes_worker: bool = False,
) -> JSONResponse:
    """Run ``create`` in one transaction with the Idempotency-Key check and record (G3); keys
    are kept per organization (``org_id``).

    The answer is sent only after the commit, so a 2xx means the resource is durable (G4).
    """
    replayed = False
    async with services.db.transaction() as session:
        if key is None:
            answer = await create(session)
        else:
            idempotency.check_key(key)
            fingerprint = idempotency.fingerprint(
                request.method, request.url.path, await request.body()
            )
            answer, replayed = await idempotency.once(
                session, org_id, key, fingerprint, lambda: create(session)
            )
    if wakes_worker and not replayed:
        services.notifier.work_available()
    headers: dict[str, Any] = {}
    if answer.location:
        headers["Location"] = answer.location
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)
