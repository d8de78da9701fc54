"""Organizations and API keys: create them, and turn a presented key into a principal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.errors import AuthenticationFailed, NotFound
from bulletin.orgs.keys import Scope, digest, display_prefix, new_secret
from bulletin.orgs.models import ApiKey, Organization


@dataclass(frozen=True)
class Principal:
    """Who is calling: the organization and scope of the key that authenticated the request."""

    org_id: uuid.UUID
    scope: Scope
    key_id: uuid.UUID


@dataclass(frozen=True)
class IssuedKey:
    """A freshly made key. ``secret`` exists only here; it is never stored or shown again."""

    org_id: uuid.UUID
    key_id: uuid.UUID
    scope: Scope
    secret: str


async def create_organization(session: AsyncSession, name: str) -> tuple[Organization, IssuedKey]:
    """A new organization with one admin key."""
    org = Organization(name=name)
    session.add(org)
    await session.flush()
    key = await create_key(session, org.id, Scope.ADMIN, name="initial admin key")
    return org, key


async def create_key(
    session: AsyncSession, org_id: uuid.UUID, scope: Scope, *, name: str | None = None
) -> IssuedKey:
    if await session.get(Organization, org_id) is None:
        raise NotFound(f"There is no organization {org_id}.")
    secret = new_secret()
    key = ApiKey(
        org_id=org_id,
        scope=scope.value,
        name=name,
        prefix=display_prefix(secret),
        key_hash=digest(secret),
    )
    session.add(key)
    await session.flush()
    return IssuedKey(org_id=org_id, key_id=key.id, scope=scope, secret=secret)


async def authenticate(session: AsyncSession, secret: str) -> Principal:
    """The principal behind a presented key; unknown or revoked keys fail the same way."""
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.org_id, ApiKey.scope, ApiKey.revoked_at).where(
                ApiKey.key_hash == digest(secret)
            )
        )
    ).one_or_none()
    if row is None or row.revoked_at is not None:
        raise AuthenticationFailed("The API key is not valid.")
    return Principal(org_id=row.org_id, scope=Scope(row.scope), key_id=row.id)


async def count_organizations(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(Organization))).scalar_one()


async def list_organizations(session: AsyncSession) -> list[Organization]:
    return list((await session.execute(select(Organization).order_by(Organization.id))).scalars())


_BOOTSTRAP_LOCK = 0x42554C4C45544F52


async def create_default_if_empty(session: AsyncSession) -> IssuedKey | None:
    """On an empty database, a default organization and its admin key; otherwise nothing."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(_BOOTSTRAP_LOCK)))
    if await count_organizations(session):
        return None
    _, key = await create_organization(session, "Default organization")
    return key
