"""An API process trusts a key it has found valid for ``api_key_cache_seconds``.

The unit tests of ``KeyCache`` show the expiry; these show what a client sees when a key is
revoked in the database.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from bulletin.config import Settings
from bulletin.db import utcnow
from bulletin.orgs.keys import Scope, digest
from bulletin.orgs.models import ApiKey
from conftest import Api, make_settings
from support.http import problem


@pytest.fixture
def settings(database_url: str, request: pytest.FixtureRequest) -> Settings:
    seconds = getattr(request, "param", 60.0)
    return make_settings(database_url, api_key_cache_seconds=seconds)


async def revoke(api: Api, scope: Scope) -> None:
    async with api.services.db.transaction() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == digest(api.keys[scope]))
            .values(revoked_at=utcnow())
        )


@pytest.mark.parametrize("settings", [0.0], indirect=True)
async def test_without_the_cache_a_revoked_key_is_refused_at_once(api: Api) -> None:
    assert (await api.get("/v1/recipients")).status_code == 200
    await revoke(api, Scope.READ)
    problem(await api.get("/v1/recipients"), 401)


async def test_a_key_not_used_before_it_was_revoked_is_refused_at_once(api: Api) -> None:
    await revoke(api, Scope.READ)
    problem(await api.get("/v1/recipients"), 401)
    # A refused key is not remembered either: it is refused again, and others still work.
    problem(await api.get("/v1/recipients"), 401)
    assert (await api.get("/v1/recipients", scope=Scope.SEND)).status_code == 200


async def test_a_key_used_before_it_was_revoked_works_until_its_time_is_up(api: Api) -> None:
    assert (await api.get("/v1/recipients")).status_code == 200
    await revoke(api, Scope.READ)
    # Within api_key_cache_seconds (60 s here) of being found valid, it is still trusted,
    # with its own scope: a read key still cannot write.
    assert (await api.get("/v1/recipients")).status_code == 200
    problem(await api.put("/v1/recipients/p1", {"name": "P"}, scope=Scope.READ), 403)
