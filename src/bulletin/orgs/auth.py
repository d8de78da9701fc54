"""Who is calling: the principal behind an API key, the keys this process has lately found
valid, and the dependencies that let a route require a scope (:data:`Reader`, :data:`Sender`,
:data:`Admin`)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.deps import ServicesDep
from bulletin.db import utcnow
from bulletin.errors import AuthenticationFailed, PermissionDenied
from bulletin.orgs import repository
from bulletin.orgs.keys import Scope, digest
from bulletin.ratelimits.service import RateLimits, current, refused
from bulletin.services import Services

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the organization and scope of the key that authenticated the request."""

    org_id: uuid.UUID
    scope: Scope
    key_id: uuid.UUID


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


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the request, checks the key's scope and counts the
    request against the key's rate limit for that scope (429 beyond it)."""

    async def authenticated(
        request: Request,
        services: ServicesDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> Principal:
        secret = bearer.credentials if bearer is not None else header
        if not secret:
            raise AuthenticationFailed(
                # Worded so that the masking of secrets in answers leaves it whole.
                "Send an API key in the Authorization header with the Bearer scheme, or in "
                "the X-API-Key header."
            )
        keys: KeyCache = request.app.state.keys
        principal = keys.get(secret)
        if principal is None:
            async with services.db.read() as session:
                principal = await authenticate(session, secret)
            keys.put(secret, principal)
        keys.used(principal.key_id)  # in memory; written in batches (bulletin.orgs.tasks)
        if not principal.scope.allows(scope):
            raise PermissionDenied(
                f"This needs a key with scope '{scope.value}' or higher; this key has "
                f"'{principal.scope.value}'."
            )
        await _count(request, services, scope, principal)
        return principal

    return authenticated


async def _count(request: Request, services: Services, scope: Scope, principal: Principal) -> None:
    """One request of the key against the limit of the scope the route needs."""
    limits: RateLimits = request.app.state.rate_limits
    decision = await limits.hit(services.db, scope.value, str(principal.key_id))
    holder = current.get()
    if holder is not None:  # the middleware puts the RateLimit fields on the answer
        holder.append(decision)
    if not decision.allowed:
        raise refused(decision, "this API key")


Reader = Annotated[Principal, Depends(require(Scope.READ))]
Sender = Annotated[Principal, Depends(require(Scope.SEND))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
