"""Organizations and API keys: create them, read and change an organization's settings, and
turn a presented key into a principal."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.errors import AuthenticationFailed, NotFound
from bulletin.orgs import schemas
from bulletin.orgs.keys import Scope, digest, display_prefix, new_secret
from bulletin.orgs.models import ApiKey, Organization

_KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
#: Every request is authenticated: a plain statement on the table, built once.
_KEY_BY_HASH = select(_KEYS.c.id, _KEYS.c.org_id, _KEYS.c.scope, _KEYS.c.revoked_at).where(
    _KEYS.c.key_hash == bindparam("key_hash")
)


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
    row = (await session.execute(_KEY_BY_HASH, {"key_hash": digest(secret)})).one_or_none()
    if row is None or row.revoked_at is not None:
        raise AuthenticationFailed("The API key is not valid.")
    return Principal(org_id=row.org_id, scope=Scope(row.scope), key_id=row.id)


class KeyCache:
    """Principals of keys this process has recently found valid, each kept for ``seconds``.

    Every API request is authenticated, and reading the key's row would otherwise cost each
    one a database transaction of its own. Only valid keys are kept (an unknown key is looked
    up every time), so the price is that a key revoked in the database may go on working for
    up to ``seconds`` in a process that has it. ``seconds`` 0 keeps nothing.
    """

    def __init__(
        self,
        seconds: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self._clock = clock
        #: By the key's digest (as stored), so that no secret is kept in memory.
        self._kept: dict[str, tuple[float, Principal]] = {}

    def get(self, secret: str) -> Principal | None:
        """The principal of ``secret`` if it was found valid less than ``seconds`` ago."""
        key_hash = digest(secret)
        kept = self._kept.get(key_hash)
        if kept is None:
            return None
        if kept[0] <= self._clock():
            del self._kept[key_hash]
            return None
        return kept[1]

    def put(self, secret: str, principal: Principal) -> None:
        """Remember that ``secret`` was just found valid, as ``principal``."""
        if self.seconds <= 0:
            return
        if len(self._kept) >= self.max_keys:
            self._kept.clear()  # that many keys in use at once is rare; they are read again
        self._kept[digest(secret)] = (self._clock() + self.seconds, principal)


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


def _out(org: Organization) -> schemas.Organization:
    return schemas.Organization(
        id=org.id,
        name=org.name,
        preference_links_in_texts=org.preference_links_in_texts,
        created_at=org.created_at,
    )


async def _require(session: AsyncSession, org_id: uuid.UUID) -> Organization:
    org = await session.get(Organization, org_id)
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


async def with_text_links(session: AsyncSession, org_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``org_ids`` whose texts carry the preference link."""
    rows = await session.execute(
        select(Organization.id).where(
            Organization.id.in_(org_ids), Organization.preference_links_in_texts.is_(True)
        )
    )
    return set(rows.scalars())
