"""Organizations and API keys: create them, read and change an organization's settings, list
and revoke keys, and turn a presented key into a principal."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import utcnow
from bulletin.errors import AuthenticationFailed, Conflict, NotFound
from bulletin.ids import decode_uuid_cursor, encode_cursor
from bulletin.orgs import repository, schemas
from bulletin.orgs.keys import Scope, digest, display_prefix, new_secret
from bulletin.orgs.models import ApiKey, Organization

log = structlog.get_logger("bulletin.orgs")


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


async def authenticate(session: AsyncSession, secret: str) -> Principal:
    """The principal behind a presented key; unknown or revoked keys fail the same way."""
    found = await repository.find_by_hash(session, digest(secret))
    if found is None or found[3] is not None:
        raise AuthenticationFailed("The API key is not valid.")
    key_id, org_id, scope, _ = found
    return Principal(org_id=org_id, scope=Scope(scope), key_id=key_id)


class KeyCache:
    """Principals of keys this process has recently found valid, each kept for ``seconds``,
    and the times keys were last used, until they are written.

    Every API request is authenticated, and reading the key's row would otherwise cost each
    one a database transaction of its own. Only valid keys are kept (an unknown key is looked
    up every time), so the price is that a key revoked in the database may go on working for
    up to ``seconds`` in a process that has it. ``seconds`` 0 keeps nothing. A key revoked
    through this process is dropped at once (:meth:`forget`).

    Uses are noted in memory too (:meth:`used`): writing ``last_used_at`` on every request
    would turn every read into a write. :func:`bulletin.orgs.tasks.recording_key_uses` takes
    them now and then (:meth:`take_uses`) and writes them all in one statement.
    """

    def __init__(
        self,
        seconds: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self._clock = clock
        self._now = now
        #: By the key's digest (as stored), so that no secret is kept in memory.
        self._kept: dict[str, tuple[float, Principal]] = {}
        #: Keys revoked through this process: never kept again, whatever a request that read
        #: the key just before the revocation committed tries to put back.
        self._revoked: set[uuid.UUID] = set()
        #: When each key was last used, since the last :meth:`take_uses`.
        self._uses: dict[uuid.UUID, dt.datetime] = {}

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
        if self.seconds <= 0 or principal.key_id in self._revoked:
            return
        if len(self._kept) >= self.max_keys:
            self._kept.clear()  # that many keys in use at once is rare; they are read again
        self._kept[digest(secret)] = (self._clock() + self.seconds, principal)

    def forget(self, key_id: uuid.UUID) -> None:
        """Stop trusting the key ``key_id`` in this process, now: it was just revoked."""
        if len(self._revoked) >= self.max_keys:
            self._revoked.clear()  # long revoked: no request that read it is still running
        self._revoked.add(key_id)
        for key_hash in [h for h, (_, p) in self._kept.items() if p.key_id == key_id]:
            del self._kept[key_hash]

    def used(self, key_id: uuid.UUID) -> None:
        """Note that the key ``key_id`` authenticated a request just now. No I/O."""
        self._uses[key_id] = self._now()

    def take_uses(self) -> dict[uuid.UUID, dt.datetime]:
        """The uses noted since the last call, each key's latest; forgotten here."""
        uses, self._uses = self._uses, {}
        return uses

    def give_back(self, uses: dict[uuid.UUID, dt.datetime]) -> None:
        """Uses that could not be written, to be taken again with the newer ones."""
        for key_id, at in uses.items():
            self._uses[key_id] = max(at, self._uses.get(key_id, at))


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
