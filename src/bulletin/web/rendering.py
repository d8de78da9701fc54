"""Server-rendered pages for people who follow a link from a message (no account, no script).

One Jinja2 environment over the package's ``templates/``, with autoescaping on, made on first
use. Every page is sent with headers that keep the signed link in its URL to this site: no
``Referer`` to any other site, no caching, no framing, and a content policy that allows only this
site's stylesheet and forms posting back to it.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

#: Where the pages' stylesheet is served (see :func:`bulletin.app.create_app`).
STATIC_PATH = "/p/static"

#: Every HTML page of Bulletin's (these and the portal's): no framing by other sites, no
#: guessing of content types, no ``Referer`` to other sites.
PAGE_HEADERS = {
    # Not "no-referrer": with it, browsers send "Origin: null" on the form's own POST, and
    # the origin check could no longer tell this site's form from another's.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}

_HEADERS = {
    **PAGE_HEADERS,
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("bulletin.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The page ``template`` filled with ``context``, with the headers above."""
    page = _environment().get_template(template).render(static=STATIC_PATH, **context)
    return HTMLResponse(page, status_code=status, headers=_HEADERS)
