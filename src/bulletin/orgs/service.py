"""Organizations and API keys: create them, read and change an organization's settings, list
and revoke keys (a presented key becomes a principal in :mod:`bulletin.orgs.auth`)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import utcnow
from bulletin.errors import Conflict, NotFound
from bulletin.ids import decode_uuid_cursor, encode_cursor
from bulletin.orgs import repository, schemas
from bulletin.orgs.keys import Scope, digest, display_prefix, new_secret
from bulletin.orgs.models import ApiKey, Organization

log = structlog.get_logger("bulletin.orgs")


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
    await repository.add_organization(session, org)
    key = await create_key(session, org.id, Scope.ADMIN, name="initial admin key")
    return org, key


async def create_key(
    session: AsyncSession, org_id: uuid.UUID, scope: Scope, *, name: str | None = None
) -> IssuedKey:
    if not await repository.organization_exists(session, org_id):
        raise NotFound(f"There is no organization {org_id}.")
    secret = new_secret()
    key = ApiKey(
        org_id=org_id,
        scope=scope.value,
        name=name,
        prefix=display_prefix(secret),
        key_hash=digest(secret),
    )
    await repository.add_key(session, key)
    log.info("orgs.key_created", org_id=str(org_id), key_id=str(key.id), scope=scope.value)
    return IssuedKey(org_id=org_id, key_id=key.id, scope=scope, secret=secret)


def as_key(key: ApiKey) -> schemas.Key:
    return schemas.Key(
        id=key.id,
        name=key.name,
        scope=Scope(key.scope),
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


def _key_not_found(key_id: uuid.UUID) -> NotFound:
    return NotFound(f"There is no API key {key_id}.")


async def get_key(session: AsyncSession, org_id: uuid.UUID, key_id: uuid.UUID) -> schemas.Key:
    """A key of the organization; another organization's key is not found, as an unknown one."""
    key = await repository.get_key(session, key_id)
    if key is None or key.org_id != org_id:
        raise _key_not_found(key_id)
    return as_key(key)


async def page_keys(
    session: AsyncSession, org_id: uuid.UUID, cursor: str | None, limit: int
) -> schemas.KeyPage:
    """The organization's keys, revoked ones included, oldest first."""
    after = decode_uuid_cursor(cursor)
    found = await repository.page_keys(session, org_id, after, limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return schemas.KeyPage(
        items=[as_key(k) for k in found],
        next_cursor=encode_cursor(str(found[-1].id)) if more else None,
    )


async def revoke_key(
    session: AsyncSession, key_id: uuid.UUID, *, org_id: uuid.UUID | None = None
) -> schemas.Key:
    """Revoke a key (of ``org_id`` only, when given). Revoking a revoked key changes nothing.

    The organization's last active admin key cannot be revoked (:class:`Conflict`): no one
    could then manage its keys or settings through the API. Make another admin key first.
    """
    key = await repository.get_key(session, key_id)
    if key is None or (org_id is not None and key.org_id != org_id):
        raise _key_not_found(key_id)
    await repository.lock_organization(session, key.org_id)
    key = await repository.get_key(session, key_id)  # as it is now that no one else revokes
    assert key is not None  # keys are deleted only with their organization, which is locked
    if key.revoked_at is not None:
        return as_key(key)
    if key.scope == Scope.ADMIN and (
        await repository.count_active_keys(session, key.org_id, Scope.ADMIN) <= 1
    ):
        raise Conflict(
            "This is the organization's last admin key; revoking it would leave no one able "
            "to manage the organization. Create another admin key first."
        )
    key.revoked_at = utcnow()
    await session.flush()
    log.info("orgs.key_revoked", org_id=str(key.org_id), key_id=str(key.id), scope=key.scope)
    return as_key(key)


async def record_key_uses(session: AsyncSession, uses: dict[uuid.UUID, dt.datetime]) -> None:
    """Write the last-use times gathered by a :class:`KeyCache`."""
    if uses:
        await repository.record_uses(session, uses)


async def list_organizations(session: AsyncSession) -> list[Organization]:
    return await repository.list_organizations(session)


async def create_default_if_empty(session: AsyncSession) -> IssuedKey | None:
    """On an empty database, a default organization and its admin key; otherwise nothing."""
    await repository.lock_first_organization(session)
    if await repository.count_organizations(session):
        return None
    _, key = await create_organization(session, "Default organization")
    return key


def _out(org: Organization) -> schemas.Organization:
    return schemas.Organization(
        id=org.id,
        name=org.name,
        preference_links_in_texts=org.preference_links_in_texts,
        created_at=org.created_at,
    )


async def _require(session: AsyncSession, org_id: uuid.UUID) -> Organization:
    org = await repository.get_organization(session, org_id)
    if org is None:
        raise NotFound(f"There is no organization {org_id}.")
    return org


async def get_organization(session: AsyncSession, org_id: uuid.UUID) -> schemas.Organization:
    return _out(await _require(session, org_id))


async def update_organization(
    session: AsyncSession, org_id: uuid.UUID, body: schemas.OrganizationPatch
) -> schemas.Organization:
    """Change the settings given in ``body``; the others stay as they are."""
    org = await _require(session, org_id)
    if body.name is not None:
        org.name = body.name
    if body.preference_links_in_texts is not None:
        org.preference_links_in_texts = body.preference_links_in_texts
    await session.flush()
    return _out(org)
