"""Portal sign-in against an attacker: single-use nonces, growing delays per account and per
address, failures logged with the email and the address (never the password), and a new
sign-in ending the person's other sessions. The clock is injected: nothing sleeps."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog
from fastapi import FastAPI
from structlog.testing import capture_logs

from bulletin.app import create_app
from bulletin.ratelimits.service import RateLimits
from bulletin.web.portal import accounts
from conftest import Api, make_settings

PASSWORD = "correct horse battery"
WRONG = "Tr0ub4dor&3-guess"
EMAIL = "ops@example.com"
_NONCE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    def __init__(self) -> None:
        self.now = 1_796_126_400.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def portal(database_url: str, **overrides: Any) -> AsyncIterator[tuple[FastAPI, Clock]]:
    app = create_app(make_settings(database_url, **overrides))
    clock = Clock()
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        limits: RateLimits = app.state.rate_limits
        limits.clock = clock
        api = Api(httpx.AsyncClient(), app.state.services)
        await api.new_org("Acme")
        async with app.state.services.db.transaction() as session:
            await accounts.create_user(session, api.org_id, EMAIL, "Ops", PASSWORD)
            await accounts.create_user(session, api.org_id, "other@example.com", "O", PASSWORD)
        yield app, clock


@contextlib.asynccontextmanager
async def browser(app: FastAPI, address: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as client:
        yield client


async def nonce_of(client: httpx.AsyncClient) -> str:
    found = _NONCE.search((await client.get("/portal/sign-in")).text)
    assert found is not None
    return found.group(1)


async def post(
    client: httpx.AsyncClient, nonce: str, password: str, email: str = EMAIL
) -> httpx.Response:
    return await client.post(
        "/portal/sign-in", data={"email": email, "password": password, "csrf_token": nonce}
    )


async def replay(
    client: httpx.AsyncClient, cookie: str, nonce: str, password: str
) -> httpx.Response:
    """A post of a form kept by an attacker, who keeps its cookie and ignores new ones."""
    client.cookies.clear()
    return await client.post(
        "/portal/sign-in",
        data={"email": EMAIL, "password": password, "csrf_token": nonce},
        headers={"Cookie": f"bulletin_sign_in={cookie}"},
    )


async def attempt(client: httpx.AsyncClient, password: str, email: str = EMAIL) -> httpx.Response:
    return await post(client, await nonce_of(client), password, email)


async def signed_in(client: httpx.AsyncClient) -> bool:
    answer = await client.get("/portal/announcements")
    return answer.status_code == 200


async def test_a_sign_in_nonce_is_used_once(database_url: str) -> None:
    # The per-address limit (30 posts a minute by default) is raised: this is about the nonce.
    async with (
        portal(database_url, rate_limit_sign_in="100/minute") as (app, _clock),
        browser(app) as client,
    ):
        nonce = await nonce_of(client)
        cookie = client.cookies["bulletin_sign_in"]
        answers = [await replay(client, cookie, nonce, WRONG) for _ in range(30)]
        assert answers[0].status_code == 401
        assert [a.status_code for a in answers[1:]] == [400] * 29
        assert "already sent" in answers[1].text
        right = await replay(client, cookie, nonce, PASSWORD)
        assert right.status_code == 400
        assert "bulletin_session" not in right.cookies
        assert not await signed_in(client)
        # A fresh form still works: the replays counted as nothing.
        assert (await attempt(client, PASSWORD)).status_code == 303
        assert await signed_in(client)


async def test_failures_make_the_account_wait_longer_and_longer(database_url: str) -> None:
    async with portal(database_url) as (app, clock), browser(app) as client:
        for _ in range(5):
            assert (await attempt(client, WRONG)).status_code == 401
        refused = await attempt(client, PASSWORD)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "Too many failed sign-ins" in refused.text
        assert "Wait 1 second" in refused.text
        assert not await signed_in(client)
        # From another address the account waits too.
        async with browser(app, "198.51.100.9") as elsewhere:
            assert (await attempt(elsewhere, PASSWORD)).status_code == 429
            # Another account from that address is not held up.
            assert (await attempt(elsewhere, PASSWORD, "other@example.com")).status_code == 303

        clock.now += 1
        assert (await attempt(client, WRONG)).status_code == 401  # the 6th: 2 s now
        clock.now += 1
        assert (await attempt(client, PASSWORD)).headers["retry-after"] == "1"
        clock.now += 1
        assert (await attempt(client, WRONG)).status_code == 401  # the 7th: 4 s now
        waiting = await attempt(client, PASSWORD)
        assert (waiting.status_code, waiting.headers["retry-after"]) == (429, "4")
        clock.now += 4
        assert (await attempt(client, PASSWORD)).status_code == 303
        assert await signed_in(client)
        # A success starts the count again.
        assert (await attempt(client, WRONG)).status_code == 401
        assert (await attempt(client, PASSWORD)).status_code == 303


async def test_one_address_trying_many_accounts_is_slowed(database_url: str) -> None:
    async with portal(database_url) as (app, clock), browser(app) as client:
        for n in range(20):  # four times an account's allowance, over many accounts
            answer = await attempt(client, WRONG, f"guess{n}@example.com")
            assert answer.status_code == 401
        assert (await attempt(client, PASSWORD)).status_code == 429
        async with browser(app, "198.51.100.9") as elsewhere:
            assert (await attempt(elsewhere, PASSWORD)).status_code == 303
        clock.now += 1
        assert (await attempt(client, PASSWORD)).status_code == 303


async def test_sign_in_posts_are_limited_per_address(database_url: str) -> None:
    async with portal(database_url, rate_limit_sign_in="3/minute") as (app, _), browser(app) as c:
        for _ in range(3):
            assert (await attempt(c, WRONG, "nobody@example.com")).status_code == 401
        refused = await attempt(c, PASSWORD)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1


async def test_failures_are_logged_with_email_and_address_never_the_password(
    database_url: str,
) -> None:
    async with portal(database_url) as (app, _clock), browser(app) as client:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            assert (await attempt(client, WRONG, "OPS@Example.com")).status_code == 401
        failed = [e for e in logs if e["event"] == "portal.sign_in_failed"]
        assert len(failed) == 1
        assert failed[0]["email"] == EMAIL
        assert failed[0]["client"] == "203.0.113.7"
        assert WRONG not in repr(logs)


async def test_a_new_sign_in_ends_the_other_sessions(database_url: str) -> None:
    async with (
        portal(database_url) as (app, _clock),
        browser(app) as laptop,
        browser(app, "198.51.100.9") as phone,
    ):
        assert (await attempt(laptop, PASSWORD)).status_code == 303
        assert await signed_in(laptop)
        assert (await attempt(phone, PASSWORD)).status_code == 303
        assert await signed_in(phone)
        first = await laptop.get("/portal/announcements")
        assert first.status_code == 303
        assert first.headers["location"].startswith("/portal/sign-in")
