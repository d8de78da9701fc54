"""HTTP route to read what the sandbox provider accepted."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from bulletin.api.common import Cursor, Limit
from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.orgs.auth import Reader
from bulletin.orgs.keys import Scope
from bulletin.sandbox import repository, schemas

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox"], responses=responses(401, 403, 422, 503))


@router.get("/messages", response_model=schemas.SandboxPage)
async def list_sandbox_messages(
    principal: Reader,
    services: ServicesDep,
    message_id: uuid.UUID | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> schemas.SandboxPage:
    """What the sandbox provider accepted for this organization, oldest first.

    People's preference links are shown to keys that can send; a ``read`` key gets
    ``preference_url: null`` and every ``/p/<token>`` in the content as ``/p/[redacted]``."""
    async with services.db.read() as session:
        found = await repository.page(
            session, principal.org_id, message_id=message_id, cursor=cursor, limit=limit
        )
    return found if principal.scope.allows(Scope.SEND) else found.without_preference_links()
