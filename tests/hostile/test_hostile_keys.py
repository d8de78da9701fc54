"""Hostile callers of the key management API: lesser keys, another organization, bad ids.

Each attack is made with a real app on a real database; each test then checks that the
victim's keys are as they were and still work.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from bulletin.orgs.keys import Scope, digest
from bulletin.orgs.models import ApiKey
from conftest import Api
from support.http import body_of, cursor_after, every, problem

NOT_IDS = [
    "abc",
    "1",
    "12345678901234567890",
    "' OR 1=1 --",
    "%7B%22id%22%3A1%7D",
    "0" * 5000,
    "%00",
    "01a20890-763d-7f09-9b46-1dc1f15ad90",  # one digit short
]


async def keys_of(api: Api) -> list[dict[str, Any]]:
    """An organization's keys as its admin sees them, less the use time (written in batches)."""
    keys = await every(api, "/v1/keys", scope=Scope.ADMIN)
    return [{k: v for k, v in key.items() if k != "last_used_at"} for key in keys]


async def ids_of(api: Api) -> dict[Scope, str]:
    async with api.services.db.read() as session:
        rows = await session.execute(select(ApiKey.key_hash, ApiKey.id))
        by_hash = {key_hash: str(key_id) for key_hash, key_id in rows}
    return {scope: by_hash[digest(secret)] for scope, secret in api.keys.items()}


async def all_keys_work(api: Api) -> None:
    for scope in Scope:
        assert (await api.get("/v1/recipients", scope)).status_code == 200, scope


@pytest.mark.parametrize("scope", [Scope.SEND, Scope.READ])
async def test_a_send_or_read_key_cannot_manage_keys(api: Api, scope: Scope) -> None:
    before = await keys_of(api)
    ids = await ids_of(api)
    problem(await api.get("/v1/keys", scope), 403)
    problem(await api.get(f"/v1/keys/{ids[Scope.ADMIN]}", scope), 403)
    # Making itself an admin key, or one more key of its own kind.
    for wanted in ("admin", scope.value):
        problem(await api.post("/v1/keys", {"name": "mine now", "scope": wanted}, scope), 403)
    # Revoking the admin key, the other keys, itself.
    for victim in ids.values():
        problem(await api.delete(f"/v1/keys/{victim}", scope), 403)
    assert await keys_of(api) == before
    await all_keys_work(api)


async def test_another_organization_can_neither_see_nor_revoke_my_keys(api: Api) -> None:
    theirs = await api.other_org("Theirs")
    before = await keys_of(api)
    mine = await ids_of(api)
    listed = await keys_of(theirs)
    assert not {key["id"] for key in listed} & set(mine.values())
    for key_id in mine.values():
        problem(await theirs.get(f"/v1/keys/{key_id}", Scope.ADMIN), 404)
        problem(await theirs.delete(f"/v1/keys/{key_id}", Scope.ADMIN), 404)
    # A cursor naming my key only pages through their own keys.
    for key_id in mine.values():
        page = body_of(
            await theirs.get("/v1/keys", Scope.ADMIN, params={"cursor": cursor_after(key_id)}),
            200,
        )
        assert not {key["id"] for key in page["items"]} & set(mine.values())
    assert await keys_of(api) == before
    await all_keys_work(api)


@pytest.mark.parametrize("bad", NOT_IDS)
async def test_a_key_id_that_is_not_a_uuid_is_a_422(api: Api, bad: str) -> None:
    before = await keys_of(api)
    problem(await api.get(f"/v1/keys/{bad}", Scope.ADMIN), 422)
    problem(await api.delete(f"/v1/keys/{bad}", Scope.ADMIN), 422)
    assert await keys_of(api) == before


async def test_no_answer_about_keys_carries_a_secret_or_a_digest(api: Api) -> None:
    made = body_of(await api.post("/v1/keys", {"name": "new", "scope": "send"}, Scope.ADMIN), 201)
    secrets = [*api.keys.values(), made["api_key"]]
    answers = [
        await api.get("/v1/keys", Scope.ADMIN),
        await api.get("/v1/keys", Scope.ADMIN, params={"limit": 1}),
        await api.get(f"/v1/keys/{made['id']}", Scope.ADMIN),
    ]
    for key in await keys_of(api):
        answers.append(await api.get(f"/v1/keys/{key['id']}", Scope.ADMIN))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        for secret in secrets:
            assert secret not in answer.text
            assert digest(secret) not in answer.text
            assert secret[len(made["prefix"]) :] not in answer.text
