"""HTTP routes for the calling key's organization and its settings."""

from __future__ import annotations

from fastapi import APIRouter

from bulletin.api.deps import Admin, ServicesDep
from bulletin.api.problems import responses
from bulletin.orgs import schemas, service

router = APIRouter(
    prefix="/v1/organization", tags=["organization"], responses=responses(401, 403, 503)
)


@router.get("", response_model=schemas.Organization)
async def get_organization(principal: Admin, svc: ServicesDep) -> schemas.Organization:
    """The organization of the calling key, with its settings. Needs an admin key."""
    async with svc.db.read() as session:
        return await service.get_organization(session, principal.org_id)


@router.patch("", response_model=schemas.Organization, responses=responses(413, 422))
async def update_organization(
    body: schemas.OrganizationPatch, principal: Admin, svc: ServicesDep
) -> schemas.Organization:
    """Change some of the organization's settings; fields left out stay as they are."""
    async with svc.db.transaction() as session:
        return await service.update_organization(session, principal.org_id, body)
