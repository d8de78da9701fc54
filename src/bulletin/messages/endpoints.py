"""HTTP routes for announcements and notifications."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.common import Cursor, IdempotencyKey, Limit, create_idempotently
from bulletin.api.deps import Reader, Sender, ServicesDep
from bulletin.api.problems import responses
from bulletin.deliveries import schemas as delivery_schemas
from bulletin.deliveries import service as deliveries
from bulletin.deliveries.states import DeliveryState
from bulletin.idempotency.service import StoredAnswer
from bulletin.messages import schemas, service

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
    svc: ServicesDep,
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
        request, svc, principal, idempotency_key, create, wakes_worker=True
    )


@router.get("/announcements", response_model=schemas.AnnouncementPage, tags=["announcements"])
async def list_announcements(
    principal: Reader, svc: ServicesDep, limit: Limit = 50, cursor: Cursor = None
) -> schemas.AnnouncementPage:
    """Announcements, newest first."""
    async with svc.db.read() as session:
        return await service.page_announcements(session, principal.org_id, cursor, limit)


@router.get(
    "/announcements/{message_id}",
    response_model=schemas.Announcement,
    responses=responses(404),
    tags=["announcements"],
)
async def get_announcement(
    message_id: uuid.UUID, principal: Reader, svc: ServicesDep
) -> schemas.Announcement:
    """An announcement with the number of its deliveries in each state."""
    async with svc.db.read() as session:
        return await service.announcement(session, principal.org_id, message_id)


@router.get(
    "/announcements/{message_id}/deliveries",
    response_model=delivery_schemas.DeliveryPage,
    responses=responses(404),
    tags=["announcements"],
)
async def list_announcement_deliveries(
    message_id: uuid.UUID,
    principal: Reader,
    svc: ServicesDep,
    state: DeliveryState | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> delivery_schemas.DeliveryPage:
    async with svc.db.read() as session:
        await service.require(session, principal.org_id, message_id, service.ANNOUNCEMENT)
        return await deliveries.page_for_message(
            session, message_id, state=state, cursor=cursor, limit=limit
        )


async def _cancel(
    svc: ServicesDep, principal: Reader, message_id: uuid.UUID, kind: str
) -> schemas.CancelResult:
    async with svc.db.transaction() as session:
        message, cancelled = await service.cancel(session, principal.org_id, message_id, kind)
    in_flight = await service.wait_for_in_flight(
        svc.db, message_id, svc.settings.cancel_wait_seconds
    )
    shown = (
        service.as_announcement(message)
        if kind == service.ANNOUNCEMENT
        else service.as_notification(message)
    )
    return schemas.CancelResult(message=shown, cancelled=cancelled, in_flight=in_flight)


@router.post(
    "/announcements/{message_id}/cancel",
    response_model=schemas.CancelResult,
    responses=responses(404, 409),
    tags=["announcements"],
)
async def cancel_announcement(
    message_id: uuid.UUID, principal: Sender, svc: ServicesDep
) -> schemas.CancelResult:
    """Cancel: once this answers, no delivery of the announcement starts (G5).

    Sends already under way when the cancel arrived are waited for, briefly; ``in_flight``
    says how many were still running when it answered.
    """
    return await _cancel(svc, principal, message_id, service.ANNOUNCEMENT)


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
    svc: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept a notification to one recipient, now or at ``send_at``."""

    async def create(session: AsyncSession) -> StoredAnswer:
        message = await service.create_notification(session, principal.org_id, body)
        shown = service.as_notification(message)
        return StoredAnswer(202, shown.model_dump(mode="json"), f"/v1/notifications/{message.id}")

    return await create_idempotently(
        request, svc, principal, idempotency_key, create, wakes_worker=True
    )


@router.get(
    "/notifications/{message_id}",
    response_model=schemas.Notification,
    responses=responses(404),
    tags=["notifications"],
)
async def get_notification(
    message_id: uuid.UUID, principal: Reader, svc: ServicesDep
) -> schemas.Notification:
    """A notification with its deliveries."""
    async with svc.db.read() as session:
        return await service.notification(session, principal.org_id, message_id)


@router.post(
    "/notifications/{message_id}/cancel",
    response_model=schemas.CancelResult,
    responses=responses(404, 409),
    tags=["notifications"],
)
async def cancel_notification(
    message_id: uuid.UUID, principal: Sender, svc: ServicesDep
) -> schemas.CancelResult:
    return await _cancel(svc, principal, message_id, service.NOTIFICATION)
