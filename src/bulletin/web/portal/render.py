"""Rendering portal pages, and turning every error into a page that says what went wrong."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Path, Request, Response
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from bulletin import errors
from bulletin.web.headers import PORTAL_HEADERS
from bulletin.web.portal.security import CSRF_FIELD, CsrfRejected, SignInRequired

#: A numeric id in a portal path: any other value (not digits, beyond the database's 64-bit ids)
#: names nothing, and the page is a 404 like that of an id that does not exist.
PathId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bulletin.web", "templates"),
        autoescape=True,
    )
    env.filters["when"] = _when
    env.globals["csrf_field"] = CSRF_FIELD
    return env


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if value else ""


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The named template under ``portal/``, rendered."""
    html = environment().get_template(f"portal/{template}").render(**context)
    return HTMLResponse(html, status_code=status, headers=PORTAL_HEADERS)


def error_page(status: int, title: str, detail: str, problems: list[str] | None = None) -> Response:
    return page(
        "error.html", status, title=title, detail=detail, problems=problems or [], viewer=None
    )


_STATUS: list[tuple[type[errors.BulletinError], int, str]] = [
    (CsrfRejected, 403, "Not allowed"),
    (errors.PermissionDenied, 403, "Not allowed"),
    (errors.NotFound, 404, "Not found"),
    (errors.Conflict, 409, "Not possible now"),
    (errors.InvalidRequest, 422, "Not valid"),
]


class PortalRoute(APIRoute):
    """A route whose errors are HTML pages rather than the API's problem documents."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            try:
                return await handle(request)
            except SignInRequired:
                wanted = quote(request.url.path, safe="/")
                return RedirectResponse(f"/portal/sign-in?next={wanted}", status_code=303)
            except RequestValidationError as exc:
                if all(e.get("loc", ("",))[0] == "path" for e in exc.errors()):
                    # A path that names nothing that can exist: the same page as a missing one.
                    return error_page(404, "Not found", "There is no such page in the portal.")
                listed = [
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                    for e in exc.errors()
                ]
                return error_page(422, "Not valid", "The request is not valid.", listed)
            except errors.BulletinError as exc:
                for kind, status, title in _STATUS:
                    if isinstance(exc, kind):
                        listed = []
                        if isinstance(exc, errors.InvalidRequest):
                            listed = [f"{e.loc[-1]}: {e.message}" for e in exc.errors]
                        return error_page(status, title, exc.detail, listed)
                raise
            except HTTPException as exc:
                return error_page(exc.status_code, "Error", str(exc.detail))

        return portal_handler
