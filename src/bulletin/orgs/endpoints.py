"""HTTP routes for the calling key's organization, its settings and its API keys."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bulletin.api.common import Cursor, IdempotencyKey, Limit
from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.idempotency import service as idempotency
from bulletin.idempotency.service import StoredAnswer
from bulletin.orgs import schemas, service
from bulletin.orgs.auth import Admin, KeyCache

router = APIRouter(
    prefix="/v1/organization", tags=["organization"], responses=responses(401, 403, 503)
)
keys_router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=responses(401, 403, 422, 503))


@router.get("", response_model=schemas.Organization)
async def get_organization(principal: Admin, services: ServicesDep) -> schemas.Organization:
    """The organization of the calling key, with its settings. Needs an admin key."""
    async with services.db.read() as session:
        return await service.get_organization(session, principal.org_id)


@router.patch("", response_model=schemas.Organization, responses=responses(413, 422))
async def update_organization(
    body: schemas.OrganizationPatch, principal: Admin, services: ServicesDep
) -> schemas.Organization:
    """Change some of the organization's settings; fields left out stay as they are."""
    async with services.db.transaction() as session:
        return await service.update_organization(session, principal.org_id, body)


@keys_router.get("", response_model=schemas.KeyPage)
async def list_keys(
    principal: Admin, services: ServicesDep, limit: Limit = 50, cursor: Cursor = None
) -> schemas.KeyPage:
    """The organization's API keys, revoked ones included, oldest first. Needs an admin key.

    Secrets are never shown, only each key's first characters (``prefix``).
    """
    async with services.db.read() as session:
        return await service.page_keys(session, principal.org_id, cursor, limit)


@keys_router.post(
    "",
    status_code=201,
    response_model=schemas.NewKey,
    responses=responses(409, 413),
)
async def create_key(
    body: schemas.KeyIn,
    request: Request,
    principal: Admin,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create a key for the organization. Needs an admin key.

    The answer is the only place the key's secret (``api_key``) ever appears. With an
    ``Idempotency-Key``, a retry gets the same key back, but without the secret, which is
    stored nowhere.
    """
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
            issued = await service.create_key(session, principal.org_id, body.scope, name=body.name)
            key = await service.get_key(session, principal.org_id, issued.key_id)
            shown = schemas.NewKey(**key.model_dump(), api_key=issued.secret)
            answer = StoredAnswer(201, shown.model_dump(mode="json"), f"/v1/keys/{key.id}")
            if idempotency_key is not None:
                without_secret = StoredAnswer(
                    201, {**answer.body, "api_key": None}, answer.location
                )
                await idempotency.remember(
                    session, principal.org_id, idempotency_key, fingerprint, without_secret
                )
        else:
            answer, replayed = stored, True
    headers = {"Location": answer.location or ""}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


@keys_router.get("/{key_id}", response_model=schemas.Key, responses=responses(404))
async def get_key(key_id: uuid.UUID, principal: Admin, services: ServicesDep) -> schemas.Key:
    """One of the organization's keys. Needs an admin key."""
    async with services.db.read() as session:
        return await service.get_key(session, principal.org_id, key_id)


@keys_router.delete(
    "/{key_id}", status_code=204, response_class=Response, responses=responses(404, 409)
)
async def revoke_key(
    key_id: uuid.UUID, request: Request, principal: Admin, services: ServicesDep
) -> Response:
    """Revoke a key of the organization. Needs an admin key.

    This process refuses the key from the next request on; every other process within
    ``BULLETIN_API_KEY_CACHE_SECONDS``. The calling key may revoke itself (it is refused
    afterwards), but the organization's last active admin key cannot be revoked (409):
    create another first. Revoking a revoked key answers 204 and changes nothing.
    """
    async with services.db.transaction() as session:
        await service.revoke_key(session, key_id, org_id=principal.org_id)
    keys: KeyCache = request.app.state.keys
    keys.forget(key_id)
    return Response(status_code=204)
