"""HTTP routes for recipients and their preferences."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.common import Cursor, IdempotencyKey, Limit, create_idempotently
from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.idempotency.service import StoredAnswer
from bulletin.orgs.auth import Reader, Sender
from bulletin.recipients import schemas, service
from bulletin.schemas import NO_CONTROL_CHARACTERS

router = APIRouter(
    prefix="/v1/recipients", tags=["recipients"], responses=responses(401, 403, 422, 503)
)

ExternalIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=NO_CONTROL_CHARACTERS,
        description="The organization's id for the person.",
    ),
]


@router.put(
    "/{external_id}",
    response_model=schemas.Recipient,
    responses={201: {"model": schemas.Recipient, "description": "Created"}, **responses(413)},
)
async def put_recipient(
    external_id: ExternalIdPath,
    body: schemas.RecipientPut,
    principal: Sender,
    services: ServicesDep,
    response: Response,
) -> schemas.Recipient:
    """Create or replace a recipient. Preferences are kept; a deactivated one is reactivated."""
    async with services.db.transaction() as session:
        recipient, created = await service.put(
            session, principal.org_id, external_id, body, services.settings.default_phone_region
        )
    response.status_code = 201 if created else 200
    return recipient


@router.get("/{external_id}", response_model=schemas.Recipient, responses=responses(404))
async def get_recipient(
    external_id: ExternalIdPath, principal: Reader, services: ServicesDep
) -> schemas.Recipient:
    async with services.db.read() as session:
        return await service.get(session, principal.org_id, external_id)


@router.delete("/{external_id}", status_code=204, responses=responses(404))
async def delete_recipient(
    external_id: ExternalIdPath, principal: Sender, services: ServicesDep
) -> Response:
    """Deactivate a recipient: nothing more is delivered to them (pending ones are suppressed)."""
    async with services.db.transaction() as session:
        await service.deactivate(session, principal.org_id, external_id)
    return Response(status_code=204)


@router.get("", response_model=schemas.RecipientPage)
async def list_recipients(
    principal: Reader,
    services: ServicesDep,
    group: Annotated[
        str | None,
        Query(max_length=100, pattern=NO_CONTROL_CHARACTERS, description="Only this group."),
    ] = None,
    include_inactive: Annotated[bool, Query(description="Also deactivated ones.")] = False,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> schemas.RecipientPage:
    async with services.db.read() as session:
        return await service.page(
            session,
            principal.org_id,
            group=group,
            cursor=cursor,
            limit=limit,
            include_inactive=include_inactive,
        )


@router.post(
    "/batch",
    status_code=200,
    response_model=schemas.BatchResult,
    responses=responses(409, 413),
)
async def import_recipients(
    body: schemas.RecipientBatch,
    request: Request,
    principal: Sender,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create or replace up to 10,000 recipients atomically.

    If any row is invalid nothing is written, and the answer lists every bad row's reasons
    (``errors[].loc`` is ``["body", "recipients", <row>, <field>]``).
    """

    async def create(session: AsyncSession) -> StoredAnswer:
        result = await service.import_batch(
            session,
            principal.org_id,
            body.recipients,
            services.settings.default_phone_region,
        )
        return StoredAnswer(200, result.model_dump(mode="json"), None)

    return await create_idempotently(request, services, principal.org_id, idempotency_key, create)


@router.get(
    "/{external_id}/preferences", response_model=schemas.Preferences, responses=responses(404)
)
async def get_preferences(
    external_id: ExternalIdPath, principal: Reader, services: ServicesDep
) -> schemas.Preferences:
    async with services.db.read() as session:
        return await service.get_preferences(session, principal.org_id, external_id)


@router.put(
    "/{external_id}/preferences",
    response_model=schemas.Preferences,
    responses=responses(404, 413),
)
async def put_preferences(
    external_id: ExternalIdPath,
    body: schemas.PreferencesIn,
    principal: Sender,
    services: ServicesDep,
) -> schemas.Preferences:
    """Replace a recipient's preferences. They apply to every delivery not yet sent."""
    async with services.db.transaction() as session:
        return await service.put_preferences(session, principal.org_id, external_id, body)
