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

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


async def services(request: Request) -> Services:
    # A coroutine, so that FastAPI calls it in the event loop rather than in a worker thread.
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the request and checks the key's scope."""

    async def authenticated(
        request: Request,
        svc: ServicesDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> Principal:
        secret = bearer.credentials if bearer is not None else header
        if not secret:
            raise AuthenticationFailed(
                "Send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
            )
        keys: orgs.KeyCache = request.app.state.keys
        principal = keys.get(secret)
        if principal is None:
            async with svc.db.read() as session:
                principal = await orgs.authenticate(session, secret)
            keys.put(secret, principal)
        if not principal.scope.allows(scope):
            raise PermissionDenied(
                f"This needs a key with scope '{scope.value}' or higher; this key has "
                f"'{principal.scope.value}'."
            )
        return principal

    return authenticated


Reader = Annotated[Principal, Depends(require(Scope.READ))]
Sender = Annotated[Principal, Depends(require(Scope.SEND))]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
