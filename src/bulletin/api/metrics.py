"""``GET /metrics``: Prometheus text exposition, for scrapers. No key needed, like /health.

The route serves this process's figures (:mod:`bulletin.metrics`) and the families a
:data:`DatabaseFamilies` reads for each scrape; the application names which
(:mod:`bulletin.app`), so that this kit knows nothing of what the database holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import Metric

from bulletin import metrics
from bulletin.api.deps import ServicesDep
from bulletin.db import Database

#: Reads the families that describe the whole installation, once per scrape.
DatabaseFamilies = Callable[[Database], Awaitable[list[Metric]]]


def router(database_families: DatabaseFamilies) -> APIRouter:
    """The ``/metrics`` route, serving this process's figures and ``database_families``."""
    routes = APIRouter()

    @routes.get("/metrics", include_in_schema=False)
    async def scrape(services: ServicesDep) -> Response:
        """This process's counters and the database's gauges."""
        families = await database_families(services.db)
        return Response(metrics.exposition(families), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return routes
