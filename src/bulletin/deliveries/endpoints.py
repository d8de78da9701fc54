"""HTTP routes for single deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from bulletin.api.deps import Reader, ServicesDep
from bulletin.api.problems import responses
from bulletin.deliveries import schemas, service

router = APIRouter(
    prefix="/v1/deliveries", tags=["deliveries"], responses=responses(401, 403, 422, 503)
)


@router.get("/{delivery_id}", response_model=schemas.DeliveryDetail, responses=responses(404))
async def get_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)], principal: Reader, svc: ServicesDep
) -> schemas.DeliveryDetail:
    """A delivery with every event in its history, oldest first."""
    async with svc.db.read() as session:
        return await service.get(session, principal.org_id, delivery_id)
