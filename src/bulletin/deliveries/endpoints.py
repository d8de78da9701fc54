"""HTTP routes for deliveries: one with its history, and a message as its deliveries show it
(an announcement with its counts and its deliveries page by page, a notification with its
deliveries, cancelling either).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path

from bulletin.api.common import Cursor, Limit
from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.deliveries import progress, schemas, service
from bulletin.deliveries.states import DeliveryState
from bulletin.messages import schemas as message_schemas
from bulletin.messages import service as messages
from bulletin.orgs.auth import Reader, Sender

router = APIRouter(
    prefix="/v1/deliveries", tags=["deliveries"], responses=responses(401, 403, 422, 503)
)
message_router = APIRouter(prefix="/v1", responses=responses(401, 403, 422, 503))


@router.get("/{delivery_id}", response_model=schemas.DeliveryDetail, responses=responses(404))
async def get_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)], principal: Reader, services: ServicesDep
) -> schemas.DeliveryDetail:
    """A delivery with every event in its history, oldest first."""
    async with services.db.read() as session:
        return await service.get(session, principal.org_id, delivery_id)


@message_router.get(
    "/announcements/{message_id}",
    response_model=message_schemas.Announcement,
    responses=responses(404),
    tags=["announcements"],
)
async def get_announcement(
    message_id: uuid.UUID, principal: Reader, services: ServicesDep
) -> message_schemas.Announcement:
    """An announcement with the number of its deliveries in each state."""
    async with services.db.read() as session:
        return await progress.announcement(session, principal.org_id, message_id)


@message_router.get(
    "/announcements/{message_id}/deliveries",
    response_model=schemas.DeliveryPage,
    responses=responses(404),
    tags=["announcements"],
)
async def list_announcement_deliveries(
    message_id: uuid.UUID,
    principal: Reader,
    services: ServicesDep,
    state: DeliveryState | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> schemas.DeliveryPage:
    async with services.db.read() as session:
        await messages.require(session, principal.org_id, message_id, messages.ANNOUNCEMENT)
        return await service.page_for_message(
            session, message_id, state=state, cursor=cursor, limit=limit
        )


async def _cancel(
    services: ServicesDep, principal: Reader, message_id: uuid.UUID, kind: str
) -> message_schemas.CancelResult:
    async with services.db.transaction() as session:
        message, cancelled = await progress.cancel(session, principal.org_id, message_id, kind)
    in_flight = await progress.wait_for_in_flight(
        services.db, message_id, services.settings.cancel_wait_seconds
    )
    shown = (
        messages.as_announcement(message)
        if kind == messages.ANNOUNCEMENT
        else messages.as_notification(message)
    )
    return message_schemas.CancelResult(message=shown, cancelled=cancelled, in_flight=in_flight)


@message_router.post(
    "/announcements/{message_id}/cancel",
    response_model=message_schemas.CancelResult,
    responses=responses(404, 409),
    tags=["announcements"],
)
async def cancel_announcement(
    message_id: uuid.UUID, principal: Sender, services: ServicesDep
) -> message_schemas.CancelResult:
    """Cancel: once this answers, no delivery of the announcement starts (G5).

    Sends already under way when the cancel arrived are waited for, briefly; ``in_flight``
    says how many were still running when it answered.
    """
    return await _cancel(services, principal, message_id, messages.ANNOUNCEMENT)


@message_router.get(
    "/notifications/{message_id}",
    response_model=message_schemas.Notification,
    responses=responses(404),
    tags=["notifications"],
)
async def get_notification(
    message_id: uuid.UUID, principal: Reader, services: ServicesDep
) -> message_schemas.Notification:
    """A notification with its deliveries."""
    async with services.db.read() as session:
        return await progress.notification(session, principal.org_id, message_id)


@message_router.post(
    "/notifications/{message_id}/cancel",
    response_model=message_schemas.CancelResult,
    responses=responses(404, 409),
    tags=["notifications"],
)
async def cancel_notification(
    message_id: uuid.UUID, principal: Sender, services: ServicesDep
) -> message_schemas.CancelResult:
    return await _cancel(services, principal, message_id, messages.NOTIFICATION)
