"""The employer portal, served under ``/portal`` by the same app as the API.

Pages call the service layer directly, in the API's transaction style (the route owns the
transaction), never the HTTP API. Modules: :mod:`.security` (cookies, CSRF), :mod:`.accounts`
(users and sessions), :mod:`.signin`, :mod:`.announcements`, :mod:`.people` (recipients),
:mod:`.webhooks` (the organization's webhook endpoints).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from bulletin.web.portal import announcements, people, signin, webhooks
from bulletin.web.portal.render import PortalRoute


def install(app: FastAPI) -> None:
    """Add the portal's pages and static files to ``app``."""
    static = files("bulletin.web") / "static"
    app.mount("/portal/static", StaticFiles(directory=str(static)), name="portal-static")
    app.include_router(signin.router)
    app.include_router(announcements.router)
    app.include_router(people.router)
    app.include_router(webhooks.router)
    # Last: any other path under /portal is a page that does not exist (an HTML 404).
    fallback = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)
    fallback.add_api_route("/{rest:path}", signin.not_found, methods=["GET", "POST"])
    app.include_router(fallback)
