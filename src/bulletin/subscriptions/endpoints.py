"""HTTP routes for webhook endpoints: where the organization is told about status changes.

Every route needs an admin key. An endpoint's secret appears in the answers to its creation
and to a rotation only.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.common import Cursor, IdempotencyKey, Limit, create_idempotently
from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.idempotency import service as idempotency
from bulletin.idempotency.service import StoredAnswer
from bulletin.orgs.auth import Admin
from bulletin.subscriptions import schemas, service

router = APIRouter(
    prefix="/v1/webhook-endpoints",
    tags=["webhook endpoints"],
    responses=responses(401, 403, 422, 503),
)

EndpointId = Annotated[uuid.UUID, Path(description="The endpoint's id.")]
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The delivery's id.")]
StateFilter = Annotated[
    schemas.DeliveryState | None, Query(description="Only deliveries in this state.")
]


def _location(endpoint_id: uuid.UUID) -> str:
    return f"{router.prefix}/{endpoint_id}"


@router.post(
    "",
    status_code=201,
    response_model=schemas.EndpointWithSecret,
    responses=responses(409, 413),
)
async def create_endpoint(
    body: schemas.EndpointIn,
    request: Request,
    principal: Admin,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create an endpoint, told about the ``kinds`` of event it names.

    Each event is POSTed as JSON, signed the Standard Webhooks way (``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``) with the endpoint's ``secret``, which this
    answer is the only one to show. With an ``Idempotency-Key``, a retry gets the same endpoint
    back but without the secret, which is never stored with the key: rotate it to get one.

    The URL must be https at a public address (unless the server allows private ones); names
    are checked again, by what they resolve to, at every send.
    """
    allow_private = services.settings.allow_private_provider_addresses
    box = service.secret_box(services.settings)
    replayed = False
    async with services.db.transaction() as session:
        stored, fingerprint = None, ""
        if idempotency_key is not None:
            idempotency.check_key(idempotency_key)
            fingerprint = idempotency.fingerprint(
                request.method, request.url.path, await request.body()
            )
            stored = await idempotency.begin(
                session, principal.org_id, idempotency_key, fingerprint
            )
        if stored is None:
            created = await service.create_endpoint(
                session, box, principal.org_id, body, allow_private=allow_private
            )
            answer = StoredAnswer(201, created.model_dump(mode="json"), _location(created.id))
            if idempotency_key is not None:
                without_secret = StoredAnswer(201, {**answer.body, "secret": None}, answer.location)
                await idempotency.remember(
                    session, principal.org_id, idempotency_key, fingerprint, without_secret
                )
        else:
            answer, replayed = stored, True
    headers = {"Location": answer.location or ""}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


@router.get("", response_model=schemas.EndpointPage)
async def list_endpoints(
    principal: Admin, services: ServicesDep, limit: Limit = 50, cursor: Cursor = None
) -> schemas.EndpointPage:
    """The organization's endpoints, oldest first, without their secrets."""
    async with services.db.read() as session:
        return await service.list_endpoints(session, principal.org_id, cursor, limit)


@router.get("/{endpoint_id}", response_model=schemas.Endpoint, responses=responses(404))
async def get_endpoint(
    endpoint_id: EndpointId, principal: Admin, services: ServicesDep
) -> schemas.Endpoint:
    """One endpoint, without its secret."""
    async with services.db.read() as session:
        return await service.get_endpoint(session, principal.org_id, endpoint_id)


@router.patch("/{endpoint_id}", response_model=schemas.Endpoint, responses=responses(404, 413))
async def update_endpoint(
    endpoint_id: EndpointId,
    body: schemas.EndpointPatch,
    principal: Admin,
    services: ServicesDep,
) -> schemas.Endpoint:
    """Change an endpoint's URL, kinds or description, or enable or disable it.

    ``"enabled": true`` makes a failing endpoint active again: the events it has pending go
    out, and new ones are recorded for it again. Events that happen while an endpoint is
    disabled or failing are not recorded for it.
    """
    allow_private = services.settings.allow_private_provider_addresses
    async with services.db.transaction() as session:
        updated = await service.update_endpoint(
            session, principal.org_id, endpoint_id, body, allow_private=allow_private
        )
    if updated.state == "active":
        services.notifier.work_available()
    return updated


@router.delete("/{endpoint_id}", status_code=204, response_class=Response, responses=responses(404))
async def delete_endpoint(
    endpoint_id: EndpointId, principal: Admin, services: ServicesDep
) -> Response:
    """Delete an endpoint and what was recorded for it; nothing more is sent to it."""
    async with services.db.transaction() as session:
        await service.delete_endpoint(session, principal.org_id, endpoint_id)
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=schemas.EndpointWithSecret,
    responses=responses(404, 409, 413),
)
async def rotate_secret(
    endpoint_id: EndpointId,
    principal: Admin,
    services: ServicesDep,
    body: Annotated[schemas.RotateIn | None, Body()] = None,
) -> schemas.EndpointWithSecret:
    """Give the endpoint a new secret, shown in this answer only.

    The old secret goes on signing too for ``grace`` (by default the server's
    ``BULLETIN_WEBHOOK_SECRET_GRACE_SECONDS``, a day): requests carry both signatures, so a
    receiver verifies with either while it is moved to the new one. ``"grace": "0s"`` stops
    the old one at once. Rotating again during a grace period replaces the new secret and
    keeps the old one signing, so a retried rotation cuts off no receiver.
    """
    grace = services.settings.webhook_secret_grace_seconds
    if body is not None and body.grace is not None:
        grace = schemas.grace_seconds(body.grace)
    box = service.secret_box(services.settings)
    async with services.db.transaction() as session:
        return await service.rotate_secret(session, box, principal.org_id, endpoint_id, grace)


@router.post(
    "/{endpoint_id}/test",
    status_code=202,
    response_model=schemas.Delivery,
    responses=responses(404, 409),
)
async def send_test(
    endpoint_id: EndpointId,
    request: Request,
    principal: Admin,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Send the endpoint a ``webhook.test`` event, signed and retried like any other; follow
    it in the endpoint's deliveries. The endpoint must be active (409 otherwise)."""

    async def create(session: AsyncSession) -> StoredAnswer:
        delivery = await service.send_test(session, principal.org_id, endpoint_id)
        return StoredAnswer(202, delivery.model_dump(mode="json"), None)

    return await create_idempotently(
        request, services, principal.org_id, idempotency_key, create, wakes_worker=True
    )


@router.get(
    "/{endpoint_id}/deliveries", response_model=schemas.DeliveryPage, responses=responses(404)
)
async def list_deliveries(
    endpoint_id: EndpointId,
    principal: Admin,
    services: ServicesDep,
    state: StateFilter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.DeliveryPage:
    """The events sent (or to be sent) to the endpoint, newest first, each with its attempts
    (status codes and times) and, while pending, when it is tried next."""
    async with services.db.read() as session:
        return await service.list_deliveries(
            session, principal.org_id, endpoint_id, cursor, limit, state
        )


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=schemas.Delivery,
    responses=responses(404, 409),
)
async def retry_delivery(
    endpoint_id: EndpointId, delivery_id: DeliveryId, principal: Admin, services: ServicesDep
) -> schemas.Delivery:
    """Send a delivered or failed event again, now, with the same ``webhook-id``. It goes out
    once the endpoint is active; a pending one is already on its way (409)."""
    async with services.db.transaction() as session:
        retried = await service.retry_delivery(session, principal.org_id, endpoint_id, delivery_id)
    services.notifier.work_available()
    return retried
