"""Response headers of every page a browser shows: the portal and the pages behind links.

One middleware sets them on every answer under these paths, whatever made it (a page, a
redirect, an error page, a 404 of a path no route knows), so that no page can be forgotten:

* ``Cache-Control: no-store``: the pages show personal data (people, addresses, preferences);
  a shared computer's cache, or a proxy, must not keep them.
* ``Content-Security-Policy``: only this site's own scripts, styles, images and requests, no
  inline script, no plugin; forms post only back to this site; no other site may frame a page
  (``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for older browsers); no
  ``<base>`` that would redirect relative links. The portal needs its one script
  (``/portal/static/portal.js``); the link pages need none and allow only their stylesheet.
* ``X-Content-Type-Options: nosniff``.
* ``Referrer-Policy``: a link page's address is a bearer credential (``/p/<token>``), so those
  pages send no ``Referer`` at all (``no-referrer``), not even to this site. The portal's
  addresses carry no credential; its pages send a ``Referer`` to this site only
  (``same-origin``), because with ``no-referrer`` a browser sends ``Origin: null`` on the
  portal's own form posts, which the portal's CSRF check refuses as cross-site.

Static files under these paths get only ``nosniff``: they hold nothing personal and may be
cached.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_COMMON = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

#: Headers of the portal's pages (``/portal/...``).
PORTAL_HEADERS = {
    **_COMMON,
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
}

#: Headers of the pages people reach from a link in a message (``/p/...``, ``/v1/unsubscribe/...``).
LINK_PAGE_HEADERS = {
    **_COMMON,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}

_STATIC_HEADERS = {"X-Content-Type-Options": "nosniff"}

#: Path prefixes and their headers, first match wins.
_BY_PATH: tuple[tuple[str, dict[str, str]], ...] = (
    ("/portal/static/", _STATIC_HEADERS),
    ("/p/static/", _STATIC_HEADERS),
    ("/portal", PORTAL_HEADERS),
    ("/p/", LINK_PAGE_HEADERS),
    ("/v1/unsubscribe/", LINK_PAGE_HEADERS),
)


def headers_for(path: str) -> dict[str, str]:
    """The headers an answer to ``path`` must carry (none outside the pages)."""
    for prefix, headers in _BY_PATH:
        if path.startswith(prefix):
            return headers
    return {}


class PageHeaders:
    """ASGI middleware that puts :func:`headers_for` on every answer, replacing any the
    route set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = headers_for(scope["path"]) if scope["type"] == "http" else {}
        if not wanted:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in wanted.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
