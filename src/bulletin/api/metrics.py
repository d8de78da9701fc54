"""``GET /metrics``: Prometheus text exposition, for scrapers. No key needed, like /health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from bulletin import metrics
from bulletin.api.deps import ServicesDep

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def scrape(svc: ServicesDep) -> Response:
    """This process's counters and the database's gauges (see :mod:`bulletin.metrics`)."""
    return Response(await metrics.exposition(svc.db), media_type=CONTENT_TYPE_PLAIN_0_0_4)
