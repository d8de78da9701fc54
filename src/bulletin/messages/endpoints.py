"""HTTP routes that accept announcements and notifications, and list announcements.

Reading one with its deliveries, and cancelling one, are routes of
:mod:`bulletin.deliveries.endpoints`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.common import Cursor, IdempotencyKey, Limit, create_idempotently
from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.idempotency.service import StoredAnswer
from bulletin.messages import schemas, service
from bulletin.orgs.auth import Reader, Sender

router = APIRouter(prefix="/v1", responses=responses(401, 403, 422, 503))


@router.post(
    "/announcements",
    status_code=202,
    response_model=schemas.Announcement,
    responses=responses(409, 413),
    tags=["announcements"],
)
async def create_announcement(
    body: schemas.AnnouncementIn,
    request: Request,
    principal: Sender,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept an announcement for delivery to an audience, now or at ``send_at``.

    The answer (202) comes once the announcement is stored durably. Send an
    ``Idempotency-Key`` so that retrying after a timeout can never create a second one.
    """

    async def create(session: AsyncSession) -> StoredAnswer:
        message = await service.create_announcement(session, principal.org_id, body)
        shown = service.as_announcement(message)
        return StoredAnswer(202, shown.model_dump(mode="json"), f"/v1/announcements/{message.id}")

    return await create_idempotently(
        request, services, principal.org_id, idempotency_key, create, wakes_worker=True
    )


@router.get("/announcements", response_model=schemas.AnnouncementPage, tags=["announcements"])
async def list_announcements(
    principal: Reader, services: ServicesDep, limit: Limit = 50, cursor: Cursor = None
) -> schemas.AnnouncementPage:
    """Announcements, newest first."""
    async with services.db.read() as session:
        return await service.page_announcements(session, principal.org_id, cursor, limit)


@router.post(
    "/notifications",
    status_code=202,
    response_model=schemas.Notification,
    responses=responses(409, 413),
    tags=["notifications"],
)
async def create_notification(
    body: schemas.NotificationIn,
    request: Request,
    principal: Sender,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept a notification to one recipient, now or at ``send_at``."""

    async def create(session: AsyncSession) -> StoredAnswer:
        message = await service.create_notification(session, principal.org_id, body)
        shown = service.as_notification(message)
        return StoredAnswer(202, shown.model_dump(mode="json"), f"/v1/notifications/{message.id}")

    return await create_idempotently(
        request, services, principal.org_id, idempotency_key, create, wakes_worker=True
    )
