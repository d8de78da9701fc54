"""Signing in and out of the portal."""

from __future__ import annotations

import math
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from bulletin.errors import NotFound
from bulletin.ratelimits.middleware import client_address
from bulletin.services import Services
from bulletin.web.portal import accounts
from bulletin.web.portal.render import PortalRoute, page
from bulletin.web.portal.security import (
    SESSION_LIFETIME,
    CheckedPost,
    SignInFormUsed,
    check_sign_in_form,
    end_session,
    now,
    set_sign_in_cookie,
    sign_in_guard,
    sign_in_nonce,
    start_session,
)

log = structlog.get_logger("bulletin.portal")
router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)


def _next(value: str) -> str:
    # Only a path of the portal itself, so the form cannot send anyone elsewhere.
    return value if value.startswith("/portal/") and not value.startswith("//") else "/portal/"


async def _form(
    request: Request, next_: str, status: int = 200, error: str = "", email: str = ""
) -> Response:
    nonce, signed = await sign_in_nonce(request)
    response = page(
        "sign_in.html", status, viewer=None, next=next_, error=error, email=email, nonce=nonce
    )
    set_sign_in_cookie(request, response, signed)
    return response


@router.get("/sign-in")
async def sign_in_form(
    request: Request, next_: Annotated[str, Query(alias="next", max_length=500)] = "/portal/"
) -> Response:
    return await _form(request, _next(next_))


def _wait_words(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    try:
        form = await check_sign_in_form(request)
    except SignInFormUsed as exc:
        return await _form(request, "/portal/", 400, exc.detail)
    email = form.get("email")
    password = form.get("password")
    next_ = _next(str(form.get("next") or "/portal/"))
    if not isinstance(email, str) or not isinstance(password, str) or len(password) > 1000:
        return await _form(request, next_, 400, "Give an email and a password.")
    services: Services = request.app.state.services
    address = client_address(request.scope)
    account = accounts.account_name(email)
    guard = sign_in_guard(request)
    admission = await guard.admit(account, address, now(request))
    if not admission.allowed:
        log.warning("portal.sign_in_throttled", email=account, client=address)
        wait = _wait_words(admission.retry_after)
        response = await _form(
            request,
            next_,
            429,
            f"Too many failed sign-ins for this account or from this address. "
            f"Wait {wait}, then try again.",
            email,
        )
        response.headers["Retry-After"] = str(admission.retry_after)
        return response
    async with services.db.transaction() as session:
        signed_in = await accounts.sign_in(session, email, password, SESSION_LIFETIME)
    if signed_in is None:
        # Never the password: the email and the address say who is trying, and from where.
        log.warning(
            "portal.sign_in_failed", email=account, client=address, failures=admission.failures
        )
        return await _form(request, next_, 401, "The email or the password is wrong.", email)
    await guard.succeeded(account, address, now(request))
    log.info("portal.signed_in", user_id=str(signed_in.user.id), org_id=str(signed_in.user.org_id))
    response = RedirectResponse(next_, status_code=303)
    await start_session(request, response, signed_in)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, posted: CheckedPost) -> Response:
    response = RedirectResponse("/portal/sign-in", status_code=303)
    await end_session(request, response)
    log.info("portal.signed_out", user_id=str(posted.viewer.user_id))
    return response


async def not_found(rest: str) -> Response:
    raise NotFound("There is no such page in the portal.")
