"""How the portal knows who is asking, and that a form came from the portal itself.

* The session cookie holds a random 32-byte token signed with the installation's key
  (:func:`bulletin.crypto.sign`); the database keeps only the token's SHA-256, so signing out
  (deleting the row) really ends the session. HttpOnly, SameSite=Lax, Path=/portal, Secure when
  the public URL is https, and it lasts :data:`SESSION_LIFETIME`.
* Every form carries the session's CSRF token in a hidden field (scripts send it as the
  ``X-CSRF-Token`` header); every POST is checked, and one whose ``Origin`` names another
  host is refused outright.
* The sign-in form, before there is a session, carries a nonce whose signed copy is in a
  short-lived cookie (a double-submit token an attacker's page can neither read nor set). A
  nonce may be posted once, rightly or wrongly: the database keeps the used ones until the
  cookie expires, so a form cannot be replayed to try password after password, in any process.
* A new sign-in ends the person's other sessions.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from typing import Annotated
from urllib.parse import urlsplit

import structlog
from fastapi import Depends, Request, Response
from starlette.datastructures import FormData

from bulletin.crypto import sign, signing_key, unsign
from bulletin.errors import BulletinError
from bulletin.ratelimits.middleware import client_address
from bulletin.ratelimits.service import RateLimits
from bulletin.ratelimits.signin import SignInGuard
from bulletin.services import Services
from bulletin.web.portal import accounts
from bulletin.web.portal.accounts import Viewer

log = structlog.get_logger("bulletin.portal")

PATH = "/portal"
SESSION_COOKIE = "bulletin_session"
SIGN_IN_COOKIE = "bulletin_sign_in"
SESSION_LIFETIME = dt.timedelta(hours=12)
_SIGN_IN_LIFETIME = dt.timedelta(hours=1)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class SignInRequired(BulletinError):
    """The page needs a signed-in user; the browser is sent to the sign-in page."""


class CsrfRejected(BulletinError):
    """A POST without the right CSRF token, or from another site's page (403)."""


class SignInFormUsed(BulletinError):
    """A sign-in form posted a second time; the page asks to sign in again on a fresh form."""


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _key(request: Request) -> bytes:
    # Read once per process: the key never changes once made.
    key: bytes | None = getattr(request.app.state, "portal_key", None)
    if key is None:
        key = await signing_key(_services(request).db)
        request.app.state.portal_key = key
    return key


def _secure(request: Request) -> bool:
    return _services(request).settings.base_url.startswith("https://")


def _set_cookie(
    request: Request, response: Response, name: str, value: str, lifetime: dt.timedelta
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(lifetime.total_seconds()),
        path=PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )


def _same_origin(request: Request) -> bool:
    """False when the ``Origin`` header names a host other than the one asked; browsers send it
    on every cross-site POST. No header (an old browser, a script) is left to the token."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return bool(origin != "null" and urlsplit(origin).netloc == host)


async def _token_of(request: Request) -> str | None:
    signed = request.cookies.get(SESSION_COOKIE)
    if not signed:
        return None
    return unsign(await _key(request), signed)


async def current_viewer(request: Request) -> Viewer | None:
    """The signed-in user of the request, if any."""
    token = await _token_of(request)
    if token is None:
        return None
    async with _services(request).db.read() as session:
        return await accounts.viewer(session, token)


async def _viewer(request: Request) -> Viewer:
    viewer = await current_viewer(request)
    if viewer is None:
        raise SignInRequired("Sign in to see this page.")
    return viewer


async def checked_form(request: Request, expected: str) -> FormData:
    """The POSTed form, after the Origin and CSRF checks against ``expected``."""
    if not _same_origin(request):
        log.warning("portal.csrf_rejected", path=request.url.path, why="origin")
        raise CsrfRejected("This form was sent from another site's page.")
    form = await request.form()
    given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if not isinstance(given, str) or not hmac.compare_digest(given, expected):
        log.warning("portal.csrf_rejected", path=request.url.path, why="token")
        raise CsrfRejected(
            "The form's security token is missing or out of date. Go back, reload the page "
            "and try again."
        )
    return form


async def _posted(request: Request, viewer: Annotated[Viewer, Depends(_viewer)]) -> Posted:
    return Posted(viewer, await checked_form(request, viewer.csrf_token))


class Posted:
    """A checked POST: who sent it, and the form."""

    def __init__(self, viewer: Viewer, form: FormData) -> None:
        self.viewer = viewer
        self.form = form

    def text(self, name: str, default: str = "") -> str:
        """A text field, stripped; files and missing fields give ``default``."""
        value = self.form.get(name)
        return value.strip() if isinstance(value, str) else default

    def all(self, name: str) -> list[str]:
        return [v for v in self.form.getlist(name) if isinstance(v, str)]


#: A signed-in user (GET pages); without one the browser goes to the sign-in page.
SignedInUser = Annotated[Viewer, Depends(_viewer)]
#: A signed-in user's POST with a valid CSRF token and no foreign Origin.
CheckedPost = Annotated[Posted, Depends(_posted)]


async def sign_in_nonce(request: Request) -> tuple[str, str]:
    """A nonce for the sign-in form, and its signed copy for :func:`set_sign_in_cookie`."""
    nonce = secrets.token_urlsafe(24)
    return nonce, sign(await _key(request), nonce)


def set_sign_in_cookie(request: Request, response: Response, signed: str) -> None:
    _set_cookie(request, response, SIGN_IN_COOKIE, signed, _SIGN_IN_LIFETIME)


async def check_sign_in_form(request: Request) -> FormData:
    """The sign-in form, after the Origin check and the nonce-against-cookie check."""
    if not _same_origin(request):
        raise CsrfRejected("This form was sent from another site's page.")
    form = await request.form()
    signed = request.cookies.get(SIGN_IN_COOKIE, "")
    nonce = unsign(await _key(request), signed) if signed else None
    given = form.get(CSRF_FIELD)
    if nonce is None or not isinstance(given, str) or not hmac.compare_digest(given, nonce):
        raise CsrfRejected(
            "The sign-in form is out of date (or cookies are off). Reload the page and try again."
        )
    if not await sign_in_guard(request).use_nonce(nonce, now(request), _SIGN_IN_LIFETIME):
        log.warning("portal.sign_in_form_reused", client=client_address(request.scope))
        raise SignInFormUsed("This sign-in form was already sent. Sign in again here.")
    return form


def now(request: Request) -> dt.datetime:
    """The time, from the clock the abuse limits use (injectable in tests)."""
    limits: RateLimits = request.app.state.rate_limits
    return dt.datetime.fromtimestamp(limits.clock(), dt.UTC)


def sign_in_guard(request: Request) -> SignInGuard:
    settings = _services(request).settings
    return SignInGuard(
        _services(request).db, settings.sign_in_failures_allowed, settings.sign_in_max_delay_seconds
    )


async def start_session(request: Request, response: Response, signed_in: accounts.SignedIn) -> None:
    key = await _key(request)
    _set_cookie(request, response, SESSION_COOKIE, sign(key, signed_in.token), SESSION_LIFETIME)
    response.delete_cookie(SIGN_IN_COOKIE, path=PATH)


async def end_session(request: Request, response: Response) -> None:
    token = await _token_of(request)
    if token is not None:
        async with _services(request).db.transaction() as session:
            await accounts.sign_out(session, token)
    response.delete_cookie(SESSION_COOKIE, path=PATH, httponly=True, samesite="lax")
