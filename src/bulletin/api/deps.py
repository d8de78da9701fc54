"""FastAPI dependencies: the process's services, and who is calling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from bulletin.bootstrap import Services
from bulletin.errors import AuthenticationFailed, PermissionDenied
from bulletin.orgs import service as orgs
from bulletin.orgs.keys import Scope
from bulletin.orgs.service import Principal
from bulletin.ratelimits.service import RateLimits, current, refused

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


async def services(request: Request) -> Services:
    # A coroutine, so that FastAPI calls it in the event loop rather than in a worker thread.
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the request, checks the key's scope and counts the
    request against the key's rate limit for that scope (429 beyond it)."""

    async def authenticated(
        request: Request,
        svc: ServicesDep,
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
        keys: orgs.KeyCache = request.app.state.keys
        principal = keys.get(secret)
        if principal is None:
            async with svc.db.read() as session:
                principal = await orgs.authenticate(session, secret)
            keys.put(secret, principal)
        keys.used(principal.key_id)  # in memory; written in batches (bulletin.orgs.tasks)
        if not principal.scope.allows(scope):
            raise PermissionDenied(
                f"This needs a key with scope '{scope.value}' or higher; this key has "
                f"'{principal.scope.value}'."
            )
        await _count(request, svc, scope, principal)
        return principal

    return authenticated


async def _count(request: Request, svc: Services, scope: Scope, principal: Principal) -> None:
    """One request of the key against the limit of the scope the route needs."""
    limits: RateLimits = request.app.state.rate_limits
    decision = await limits.hit(svc.db, scope.value, str(principal.key_id))
    holder = current.get()
    if holder is not None:  # the middleware puts the RateLimit fields on the answer
        holder.append(decision)
    if not decision.allowed:
        raise refused(decision, "this API key")


Reader = Annotated[Principal, Depends(require(Scope.READ))]
Sender = Annotated[Principal, Depends(require(Scope.SEND))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
