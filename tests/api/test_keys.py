"""Managing API keys through the API: list, create, revoke, and when each was last used."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, select

from bulletin.app import create_app
from bulletin.config import Settings
from bulletin.idempotency.models import IdempotencyRecord
from bulletin.orgs.auth import KeyCache
from bulletin.orgs.keys import Scope, digest
from bulletin.orgs.models import ApiKey
from bulletin.orgs.tasks import flush_key_uses, recording_key_uses
from conftest import Api
from support.http import body_of, cursor_after, every, problem, walk

KEY_FIELDS = {"id", "name", "scope", "prefix", "created_at", "last_used_at", "revoked_at"}


class Clock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def serving(settings: Settings, keys: KeyCache | None = None) -> AsyncIterator[Served]:
    """One app process (``keys`` replaces its key cache), with a client and no organization."""
    app = create_app(settings)
    if keys is not None:
        app.state.keys = keys
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as c:
            yield Served(app, Api(c, app.state.services))


class Served:
    def __init__(self, app: FastAPI, api: Api) -> None:
        self.app = app
        self.api = api

    @property
    def keys(self) -> KeyCache:
        cache: KeyCache = self.app.state.keys
        return cache

    def acting_for(self, other: Api) -> Api:
        """This process's client, holding ``other``'s organization and keys."""
        self.api.org_id, self.api.keys = other.org_id, other.keys
        return self.api


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serving(settings) as one:
        await one.api.new_org()
        yield one


async def key_id(api: Api, scope: Scope) -> str:
    async with api.services.db.read() as session:
        found = await session.execute(
            select(ApiKey.id).where(ApiKey.key_hash == digest(api.keys[scope]))
        )
        return str(found.scalar_one())


async def keys_of(api: Api) -> list[dict[str, Any]]:
    return await every(api, "/v1/keys", scope=Scope.ADMIN)


async def create(api: Api, name: str, scope: str, **headers: str) -> httpx.Response:
    return await api.post("/v1/keys", {"name": name, "scope": scope}, Scope.ADMIN, **headers)


async def test_an_admin_lists_the_keys_of_its_organization_without_secrets(api: Api) -> None:
    listed = await keys_of(api)
    assert [key["scope"] for key in listed] == ["admin", "send", "read"]  # oldest first
    assert all(set(key) == KEY_FIELDS for key in listed)
    created = [dt.datetime.fromisoformat(key["created_at"]) for key in listed]
    assert created == sorted(created)
    assert created[-1] <= dt.datetime.now(dt.UTC)  # made when the organization was
    for key, secret in zip(listed, api.keys.values(), strict=True):
        assert key["id"] == await key_id(api, Scope(key["scope"]))
        assert secret.startswith(key["prefix"])
        assert len(key["prefix"]) < len(secret) // 3
        assert key["revoked_at"] is None
    text = (await api.get("/v1/keys", Scope.ADMIN)).text
    for secret in api.keys.values():
        assert secret not in text
        assert digest(secret) not in text


async def test_the_list_is_paged_like_every_other(api: Api) -> None:
    for n in range(4):
        body_of(await create(api, f"k{n}", "read"), 201)
    pages = await walk(api, "/v1/keys", 2, scope=Scope.ADMIN)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    ids = [key["id"] for page in pages for key in page]
    assert ids == sorted(ids, key=uuid.UUID)
    assert len(set(ids)) == 7
    for cursor in ["%%%", cursor_after(12), cursor_after("not-a-uuid")]:
        problem(await api.get("/v1/keys", Scope.ADMIN, params={"cursor": cursor}), 422)


async def test_a_new_key_is_shown_once_and_works_with_its_scope(api: Api) -> None:
    response = await create(api, "reporting", "read")
    made = body_of(response, 201)
    assert set(made) == KEY_FIELDS | {"api_key"}
    assert (made["name"], made["scope"], made["last_used_at"]) == ("reporting", "read", None)
    assert response.headers["location"] == f"/v1/keys/{made['id']}"
    secret = made["api_key"]
    assert secret.startswith(made["prefix"])
    shown = body_of(await api.get(response.headers["location"], Scope.ADMIN), 200)
    assert set(shown) == KEY_FIELDS
    assert shown["id"] == made["id"]
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.client.get("/v1/recipients", headers=headers)).status_code == 200
    denied = await api.client.put("/v1/recipients/p1", json={"name": "P"}, headers=headers)
    problem(denied, 403)


async def test_a_retried_create_makes_one_key_and_never_stores_its_secret(api: Api) -> None:
    first = body_of(await create(api, "ci", "send", **{"Idempotency-Key": "k-1"}), 201)
    again = await create(api, "ci", "send", **{"Idempotency-Key": "k-1"})
    replayed = body_of(again, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert replayed == {**first, "api_key": None}
    assert again.headers["location"] == f"/v1/keys/{first['id']}"
    assert [key["name"] for key in await keys_of(api)].count("ci") == 1
    async with api.services.db.read() as session:
        stored = (await session.execute(select(IdempotencyRecord.body))).scalars().all()
    assert stored
    assert first["api_key"] not in repr(stored)
    problem(await create(api, "other", "send", **{"Idempotency-Key": "k-1"}), 422)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x"},
        {"scope": "read"},
        {"name": "x", "scope": "root"},
        {"name": "", "scope": "read"},
        {"name": "x" * 201, "scope": "read"},
        {"name": "a\nb", "scope": "read"},
        {"name": "x", "scope": "read", "org_id": str(uuid.uuid4())},
    ],
)
async def test_a_bad_create_is_a_422(api: Api, body: dict[str, Any]) -> None:
    problem(await api.post("/v1/keys", body, Scope.ADMIN), 422)
    assert len(await keys_of(api)) == 3


async def test_a_revoked_key_is_refused_at_once_by_the_process_that_revoked_it(
    api: Api,
) -> None:
    # The key was found valid, so it sits in this process's cache (60 s by default).
    assert (await api.get("/v1/recipients", Scope.SEND)).status_code == 200
    send_id = await key_id(api, Scope.SEND)
    before = dt.datetime.now(dt.UTC)
    revoked = await api.delete(f"/v1/keys/{send_id}", Scope.ADMIN)
    after = dt.datetime.now(dt.UTC)
    assert revoked.status_code == 204
    assert not revoked.content
    problem(await api.get("/v1/recipients", Scope.SEND), 401)
    shown = body_of(await api.get(f"/v1/keys/{send_id}", Scope.ADMIN), 200)
    assert before <= dt.datetime.fromisoformat(shown["revoked_at"]) <= after
    # Revoking it again is a 204 that changes nothing.
    assert (await api.delete(f"/v1/keys/{send_id}", Scope.ADMIN)).status_code == 204
    assert body_of(await api.get(f"/v1/keys/{send_id}", Scope.ADMIN), 200) == shown
    assert (await api.get("/v1/recipients", Scope.READ)).status_code == 200


async def test_a_key_may_revoke_itself_but_not_the_last_admin_key(api: Api) -> None:
    admin_id = await key_id(api, Scope.ADMIN)
    body = problem(await api.delete(f"/v1/keys/{admin_id}", Scope.ADMIN), 409)
    assert "last admin key" in body["detail"]
    assert (await api.get("/v1/keys", Scope.ADMIN)).status_code == 200

    second = body_of(await create(api, "second admin", "admin"), 201)
    assert (await api.delete(f"/v1/keys/{admin_id}", Scope.ADMIN)).status_code == 204
    problem(await api.get("/v1/keys", Scope.ADMIN), 401)  # the caller revoked itself
    api.keys[Scope.ADMIN] = second["api_key"]
    problem(await api.delete(f"/v1/keys/{second['id']}", Scope.ADMIN), 409)
    assert len(await keys_of(api)) == 4


async def test_uses_are_written_in_one_batch_not_one_write_per_request(served: Served) -> None:
    api = served.api
    updates: list[str] = []

    def seen(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS"):
            updates.append(statement)

    engine = api.services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        before = dt.datetime.now(dt.UTC)
        for _ in range(10):
            assert (await api.get("/v1/recipients", Scope.READ)).status_code == 200
            assert (await api.get("/v1/recipients", Scope.SEND)).status_code == 200
        assert updates == []  # twenty requests, no write
        listed = {key["scope"]: key for key in await keys_of(api)}
        assert listed["read"]["last_used_at"] is None
        assert await flush_key_uses(api.services.db, served.keys) == 3  # read, send, admin
        assert len(updates) == 1
        assert await flush_key_uses(api.services.db, served.keys) == 0  # nothing new
        assert len(updates) == 1
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    listed = {key["scope"]: key for key in await keys_of(api)}
    for scope in ("read", "send", "admin"):
        used = dt.datetime.fromisoformat(listed[scope]["last_used_at"])
        assert before <= used <= dt.datetime.now(dt.UTC)


async def test_an_older_use_never_overwrites_a_newer_one(served: Served) -> None:
    api = served.api
    read_id = uuid.UUID(await key_id(api, Scope.READ))
    newer = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    served.keys.give_back({read_id: newer})
    await flush_key_uses(api.services.db, served.keys)
    served.keys.give_back({read_id: newer - dt.timedelta(minutes=5)})  # another process, late
    await flush_key_uses(api.services.db, served.keys)
    shown = body_of(await api.get(f"/v1/keys/{read_id}", Scope.ADMIN), 200)
    assert dt.datetime.fromisoformat(shown["last_used_at"]) == newer


async def test_uses_not_yet_written_are_written_when_the_process_stops(settings: Settings) -> None:
    async with serving(settings) as first:
        await first.api.new_org()
        org = first.api
        before = dt.datetime.now(dt.UTC)
        assert (await org.get("/v1/recipients", Scope.READ)).status_code == 200
        read_id = await key_id(org, Scope.READ)
    stopped = dt.datetime.now(dt.UTC)
    async with serving(settings) as second:
        api = second.acting_for(org)
        shown = body_of(await api.get(f"/v1/keys/{read_id}", Scope.ADMIN), 200)
    assert before <= dt.datetime.fromisoformat(shown["last_used_at"]) <= stopped


# --- revocation across processes --------------------------------------------------------


async def test_without_a_cache_another_process_refuses_a_revoked_key_at_once(
    settings: Settings, served: Served
) -> None:
    async with serving(settings, KeyCache(0.0)) as other:
        api = other.acting_for(served.api)
        assert (await api.get("/v1/recipients", Scope.SEND)).status_code == 200
        send_id = await key_id(served.api, Scope.SEND)
        assert (await served.api.delete(f"/v1/keys/{send_id}", Scope.ADMIN)).status_code == 204
        problem(await api.get("/v1/recipients", Scope.SEND), 401)
        assert (await api.get("/v1/recipients", Scope.READ)).status_code == 200


async def test_another_process_refuses_a_revoked_key_once_its_cache_time_is_up(
    settings: Settings, served: Served
) -> None:
    clock = Clock()
    async with serving(settings, KeyCache(30.0, clock=clock)) as other:
        api = other.acting_for(served.api)
        assert (await api.get("/v1/recipients", Scope.SEND)).status_code == 200
        send_id = await key_id(served.api, Scope.SEND)
        assert (await served.api.delete(f"/v1/keys/{send_id}", Scope.ADMIN)).status_code == 204
        problem(await served.api.get("/v1/recipients", Scope.SEND), 401)
        # The other process found the key valid 29.9 s ago: it still trusts it (documented).
        clock.now += 29.9
        assert (await api.get("/v1/recipients", Scope.SEND)).status_code == 200
        clock.now += 0.1
        problem(await api.get("/v1/recipients", Scope.SEND), 401)
        problem(await api.get("/v1/recipients", Scope.SEND), 401)


async def test_the_background_task_writes_uses_while_the_process_runs(served: Served) -> None:
    api = served.api
    read_id = await key_id(api, Scope.READ)
    keys = KeyCache(60.0)
    keys.used(uuid.UUID(read_id))
    async with recording_key_uses(api.services.db, keys, every=0.05):
        deadline = asyncio.get_running_loop().time() + 10
        while (
            body_of(await api.get(f"/v1/keys/{read_id}", Scope.ADMIN), 200)["last_used_at"] is None
        ):
            assert asyncio.get_running_loop().time() < deadline, "never written"
            await asyncio.sleep(0.05)
