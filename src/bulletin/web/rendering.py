"""Server-rendered pages for people who follow a link from a message (no account, no script).

One Jinja2 environment over the package's ``templates/``, with autoescaping on, made on first
use. Every page is sent with :data:`~bulletin.web.headers.LINK_PAGE_HEADERS`, which keep the
signed link in its URL to itself: no ``Referer`` at all, no caching, no framing, and a content
policy that allows only this site's stylesheet and forms posting back to it.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from bulletin.web.headers import LINK_PAGE_HEADERS

#: Where the pages' stylesheet is served (see :func:`bulletin.app.create_app`).
STATIC_PATH = "/p/static"


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
    return HTMLResponse(page, status_code=status, headers=LINK_PAGE_HEADERS)
