"""Abuse limits: per-key API rates, per-address limits of the routes without a key, and a key's
limit holding across two processes on one PostgreSQL database."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from bulletin.app import create_app
from bulletin.orgs.keys import Scope
from bulletin.ratelimits.service import RateLimits
from bulletin.ratelimits.storage import share_size
from conftest import Api, make_settings
from support.http import problem
from support.http_factories import person_json

#: A fixed time in the middle of an hour, so that no window ends during a test.
NOON = 1_796_126_400.0 + 1800


@contextlib.asynccontextmanager
async def running(
    database_url: str, address: str = "203.0.113.7", **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(make_settings(database_url, **overrides))
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as c:
            yield app, c


def from_address(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40001))
    return httpx.AsyncClient(transport=transport, base_url="http://bulletin.test")


async def new_api(app: FastAPI, client: httpx.AsyncClient, name: str) -> Api:
    api = Api(client, app.state.services)
    await api.new_org(name)
    return api


def fields(response: httpx.Response) -> tuple[int, int]:
    """The remaining units and the reset seconds of the ``RateLimit`` field."""
    found = re.fullmatch(r'"(\w+)";r=(\d+);t=(\d+)', response.headers["ratelimit"])
    assert found is not None, response.headers["ratelimit"]
    return int(found.group(2)), int(found.group(3))


async def test_a_key_over_its_limit_gets_429_and_other_keys_do_not(database_url: str) -> None:
    async with running(database_url, rate_limit_read="5/minute") as (app, client):
        attacker = await new_api(app, client, "Attacker")
        victim = await new_api(app, client, "Victim")
        remaining = []
        for _ in range(5):
            answer = await attacker.get("/v1/recipients")
            assert answer.status_code == 200, answer.text
            assert answer.headers["ratelimit-policy"] == '"read";q=5;w=60'
            remaining.append(fields(answer)[0])
        assert remaining == [4, 3, 2, 1, 0]

        refused = await attacker.get("/v1/recipients")
        body = problem(refused, 429)
        assert body["type"] == "urn:bulletin:problem:rate-limited"
        assert "this API key" in body["detail"]
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert fields(refused) == (0, retry_after)
        assert refused.headers["ratelimit-policy"] == '"read";q=5;w=60'

        # Another organization's key, and another scope of the same organization, go on.
        for _ in range(5):
            assert (await victim.get("/v1/recipients")).status_code == 200
        send = await attacker.post("/v1/recipients/batch", {"recipients": [person_json(1)]})
        assert send.status_code == 200, send.text
        assert send.headers["ratelimit-policy"].startswith('"send";')


async def test_preference_pages_and_unsubscribe_are_limited_per_address(
    database_url: str,
) -> None:
    async with running(database_url, rate_limit_pages="4/minute") as (app, client):
        for path in ("/p/not-a-link", "/v1/unsubscribe/not-a-link") * 2:
            assert (await client.get(path)).status_code != 429
        refused = await client.get("/p/not-a-link")
        body = problem(refused, 429)
        assert "this address" in body["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-policy"] == '"pages";q=4;w=60'
        assert (await client.post("/v1/unsubscribe/not-a-link")).status_code == 429
        async with from_address(app, "198.51.100.20") as neighbour:
            assert (await neighbour.get("/p/not-a-link")).status_code != 429
        # The API is another policy, counted per key: unaffected.
        assert (await client.get("/health")).status_code == 200


async def test_webhooks_are_limited_per_address(database_url: str) -> None:
    async with running(database_url, rate_limit_webhooks="3/minute") as (app, client):
        # Only answers are checked here, so the windows can be pinned: a test crossing the end
        # of a minute would see its count start again. The shared (PostgreSQL) storage reads
        # this clock; the in-memory one of `limits` (SQLite) keeps its own.
        limits: RateLimits = app.state.rate_limits
        limits.clock = lambda: NOON
        for _ in range(3):
            answer = await client.post("/v1/webhooks/twilio", data={"MessageSid": "SM1"})
            assert answer.status_code != 429
        assert (await client.post("/v1/webhooks/twilio", data={})).status_code == 429
        assert (await client.get("/v1/webhooks/whatsapp")).status_code == 429
        async with from_address(app, "198.51.100.30") as provider:
            answer = await provider.post("/v1/webhooks/twilio", data={"MessageSid": "SM1"})
            assert answer.status_code != 429


@pytest.fixture
def postgres_url(make_database_url: Callable[[str], str]) -> str:
    return make_database_url("postgresql")


@pytest.mark.postgres
@pytest.mark.parametrize("limit", [10, 100])
async def test_two_processes_share_a_keys_limit(postgres_url: str, limit: int) -> None:
    url = postgres_url
    statements: list[str] = []
    async with (
        running(url, rate_limit_read=f"{limit}/hour") as (one, client_one),
        running(url, rate_limit_read=f"{limit}/hour") as (two, client_two),
    ):
        for app in (one, two):
            limits: RateLimits = app.state.rate_limits
            limits.clock = lambda: NOON

            @event.listens_for(app.state.services.db.engine.sync_engine, "before_cursor_execute")
            def count(*args: Any) -> None:
                if "rate_limit_windows" in args[2]:
                    statements.append(args[2])

        api_one = await new_api(one, client_one, "Acme")
        api_two = Api(client_two, two.state.services)
        api_two.keys = api_one.keys
        admitted = 0
        for _ in range(limit):  # each process gets as many requests as the whole limit
            for api in (api_one, api_two):
                answer = await api.get("/v1/recipients", scope=Scope.READ)
                assert answer.status_code in (200, 429), answer.text
                admitted += answer.status_code == 200
        share = share_size(limit)
        # Never more than the limit; fewer by at most one unspent share per process.
        assert limit - 2 * share < admitted <= limit
        reservations = [s for s in statements if s.lstrip().startswith("WITH")]
        assert len(reservations) <= limit // share + 2 + 2 * 20  # shares, plus refused retries
        if share > 1:
            assert len(reservations) < admitted
