"""The FastAPI dependency that hands a route the process's :class:`~bulletin.services.Services`.

Who is calling is decided in :mod:`bulletin.orgs.auth`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from bulletin.services import Services


async def services(request: Request) -> Services:
    # A coroutine, so that FastAPI calls it in the event loop rather than in a worker thread.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services)]
