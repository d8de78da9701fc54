"""Portal accounts: create users, sign in, find the session of a cookie, sign out.

Like every service, these flush and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import utcnow
from bulletin.errors import Conflict, FieldError, InvalidRequest, NotFound
from bulletin.orgs import repository as orgs
from bulletin.web.portal import repository
from bulletin.web.portal.models import PortalSession, PortalUser
from bulletin.web.portal.passwords import MIN_LENGTH, decoy_hash, hash_password, verify_password


@dataclass(frozen=True)
class SignedIn:
    """A new session: ``token`` goes into the cookie and is never stored."""

    token: str
    csrf_token: str
    user: PortalUser


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a portal page: the user, their organization, the session's CSRF token."""

    user_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    email: str
    csrf_token: str


def session_id(token: str) -> str:
    """The stored id of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_email(email: str) -> str:
    """The form an email is stored and looked up in. Only the shape is checked: it is a name
    to sign in with, not an address anything is sent to."""
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or len(email) > 320 or not email.isprintable():
        raise ValueError(f"{email!r} is not an email address")
    return email


def account_name(email: str) -> str:
    """The account an email given at sign-in names (normalized when it is one), for throttling
    and logs; bounded in length."""
    try:
        return normalize_email(email)
    except ValueError:
        return email.strip().lower()[:320]


async def create_user(
    session: AsyncSession, org_id: uuid.UUID, email: str, name: str, password: str
) -> PortalUser:
    """A new portal user of the organization. The email must be unused in the installation."""
    errors = []
    try:
        email = normalize_email(email)
    except ValueError as exc:
        errors.append(FieldError(("email",), str(exc)))
    if not name.strip():
        errors.append(FieldError(("name",), "a name is needed"))
    if len(password) < MIN_LENGTH:
        errors.append(FieldError(("password",), f"at least {MIN_LENGTH} characters"))
    if errors:
        raise InvalidRequest("The portal user is not valid.", errors)
    if not await orgs.organization_exists(session, org_id):
        raise NotFound(f"There is no organization {org_id}.")
    if await repository.email_taken(session, email):
        raise Conflict(f"There is already a portal user {email}.")
    user = PortalUser(
        org_id=org_id, email=email, name=name.strip(), password_hash=hash_password(password)
    )
    await repository.add_user(session, user)
    return user


async def sign_in(
    session: AsyncSession, email: str, password: str, lifetime: dt.timedelta
) -> SignedIn | None:
    """A new session for the user with these credentials, or ``None``.

    Unknown emails, wrong passwords and disabled users are refused alike, in about the same time.
    A success ends every other session of the user.
    """
    try:
        email = normalize_email(email)
    except ValueError:
        email = ""
    user = await repository.user_by_email(session, email)
    matches = verify_password(password, user.password_hash if user else decoy_hash())
    if user is None or not matches or user.disabled_at is not None:
        return None
    now = utcnow()
    token = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    # A new sign-in ends every other session of the person (one stolen or left open elsewhere
    # stops working), and so expired ones go too.
    await repository.replace_sessions(
        session,
        PortalSession(
            id=session_id(token),
            user_id=user.id,
            csrf_token=csrf_token,
            created_at=now,
            expires_at=now + lifetime,
        ),
    )
    return SignedIn(token=token, csrf_token=csrf_token, user=user)


async def viewer(session: AsyncSession, token: str) -> Viewer | None:
    """Who holds ``token``, if it is a live session of an enabled user."""
    row = await repository.session_with_user(session, session_id(token))
    if row is None:
        return None
    portal_session, user = row
    if portal_session.expires_at <= utcnow() or user.disabled_at is not None:
        return None
    return Viewer(
        user_id=user.id,
        org_id=user.org_id,
        name=user.name,
        email=user.email,
        csrf_token=portal_session.csrf_token,
    )


async def sign_out(session: AsyncSession, token: str) -> None:
    """End the session of ``token``: the cookie opens nothing from now on."""
    await repository.delete_session(session, session_id(token))
