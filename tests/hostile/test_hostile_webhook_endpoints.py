"""Webhook endpoints against a hostile caller: another organization's ids, keys of a lower
scope, URLs that lead into the server's own network, oversized and deeply nested bodies,
unknown kinds, and the signing secret, which must appear in no answer but the two that show
it, and in no log line."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import select

from bulletin import logs
from bulletin.app import create_app
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.orgs.keys import Scope
from bulletin.subscriptions.models import WebhookEndpoint, WebhookMessage
from conftest import Api, make_settings
from support.http import body_of, error_locs, problem

PATH = "/v1/webhook-endpoints"
URL = "https://hooks.example.com/in"


async def serve(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as c:
            api = Api(c, app.state.services)
            await api.new_org()
            yield api


async def call(
    api: Api, method: str, path: str, scope: Scope = Scope.ADMIN, body: Any = None
) -> httpx.Response:
    extra: dict[str, Any] = {} if body is None else {"json": body}
    return await api.client.request(method, path, headers=api.headers(scope), **extra)


async def create(api: Api, url: str = URL) -> dict[str, Any]:
    return body_of(
        await call(api, "POST", PATH, body={"url": url, "kinds": ["delivery.sent"]}), 201
    )


def every_route(endpoint_id: str, delivery_id: int) -> list[tuple[str, str, Any]]:
    base = f"{PATH}/{endpoint_id}"
    return [
        ("GET", base, None),
        ("PATCH", base, {"description": "taken over"}),
        ("PATCH", base, {"enabled": False}),
        ("POST", f"{base}/rotate-secret", None),
        ("POST", f"{base}/test", None),
        ("GET", f"{base}/deliveries", None),
        ("POST", f"{base}/deliveries/{delivery_id}/retry", None),
        ("DELETE", base, None),
    ]


async def failed_delivery(api: Api, endpoint_id: str) -> int:
    """A failed outbox row of the endpoint, as the sender leaves one."""
    made = body_of(await call(api, "POST", f"{PATH}/{endpoint_id}/test"), 202)
    async with api.services.db.transaction() as session:
        row = await session.get(WebhookMessage, made["id"])
        assert row is not None
        row.state = "failed"
    return int(made["id"])


async def test_another_organizations_endpoints_answer_404_everywhere(api: Api) -> None:
    victim = await api.other_org("Victim")
    theirs = await create(victim)
    their_delivery = await failed_delivery(victim, theirs["id"])
    before = body_of(await call(victim, "GET", f"{PATH}/{theirs['id']}"), 200)
    mine = await create(api)

    for method, path, body in every_route(theirs["id"], their_delivery):
        answer = problem(await call(api, method, path, body=body), 404)
        assert theirs["id"] in answer["detail"] or "delivery" in answer["detail"]
    # Their delivery id under my own endpoint is not found either.
    problem(await call(api, "POST", f"{PATH}/{mine['id']}/deliveries/{their_delivery}/retry"), 404)
    mine_listed = body_of(await call(api, "GET", f"{PATH}/{mine['id']}/deliveries"), 200)
    assert mine_listed["items"] == []
    assert [e["id"] for e in body_of(await call(api, "GET", PATH), 200)["items"]] == [mine["id"]]

    # Nothing of theirs changed: same endpoint, secret, delivery.
    assert body_of(await call(victim, "GET", f"{PATH}/{theirs['id']}"), 200) == before
    async with victim.services.db.read() as session:
        row = await session.get(WebhookEndpoint, uuid.UUID(theirs["id"]))
        assert row is not None
        assert row.secret == theirs["secret"]
        assert row.previous_secret is None
        delivery = await session.get(WebhookMessage, their_delivery)
        assert delivery is not None
        assert delivery.state == "failed"
        count = await session.execute(
            select(WebhookMessage.id).where(WebhookMessage.endpoint_id == row.id)
        )
        assert len(list(count)) == 1


@pytest.mark.parametrize("scope", [Scope.READ, Scope.SEND])
async def test_reader_and_sender_keys_are_refused(api: Api, scope: Scope) -> None:
    made = await create(api)
    delivery = await failed_delivery(api, made["id"])
    routes = [("GET", PATH, None), ("POST", PATH, {"url": URL, "kinds": ["delivery.sent"]})]
    for method, path, body in routes + every_route(made["id"], delivery):
        answer = problem(await call(api, method, path, scope, body), 403)
        assert "admin" in answer["detail"]
        assert made["secret"] not in json.dumps(answer)
    unauthenticated = await api.client.get(PATH)
    problem(unauthenticated, 401)
    # Nothing changed, nothing was made.
    listed = body_of(await call(api, "GET", PATH), 200)["items"]
    assert [e["id"] for e in listed] == [made["id"]]
    assert listed[0]["state"] == "active"
    async with api.services.db.read() as session:
        row = await session.get(WebhookEndpoint, uuid.UUID(made["id"]))
        assert row is not None
        assert row.secret == made["secret"]


INTERNAL_URLS = [
    "https://127.0.0.1/hook",
    "https://127.1/hook",
    "https://2130706433/hook",
    "https://0x7f.0.0.1/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[fe80::1]/hook",
    "https://10.0.0.8/hook",
    "https://10.1.2.3:8443/hook",
    "https://192.168.1.1/hook",
    "https://172.16.0.1/hook",
    "https://100.64.0.1/hook",
    "https://0.0.0.0/hook",
    "https://localhost/hook",
    "https://LOCALHOST./hook",
    "https://db.internal/hook",
    "https://printer.local/hook",
    "https://router.home.arpa/hook",
    "https://intranet/hook",
    "http://hooks.example.com/plain",
]
NOT_URLS = [
    "ftp://hooks.example.com/x",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "hooks.example.com/no-scheme",
    "https://",
    "https://user:pass@hooks.example.com/x",
    "https://hooks.example.com/" + "a" * 2000,
    "",
]


@pytest.mark.parametrize("url", INTERNAL_URLS + NOT_URLS)
async def test_internal_and_malformed_urls_are_refused(api: Api, url: str) -> None:
    made = await create(api)
    refused = problem(
        await call(api, "POST", PATH, body={"url": url, "kinds": ["delivery.sent"]}), 422
    )
    assert error_locs(refused) == [["body", "url"]]
    if "user:pass" in url:
        assert "pass@" not in json.dumps(refused)
    changed = problem(await call(api, "PATCH", f"{PATH}/{made['id']}", body={"url": url}), 422)
    assert error_locs(changed) == [["body", "url"]]
    listed = body_of(await call(api, "GET", PATH), 200)["items"]
    assert [(e["id"], e["url"]) for e in listed] == [(made["id"], URL)]


@pytest.fixture
async def private_api(database_url: str) -> AsyncIterator[Api]:
    settings = make_settings(database_url, allow_private_provider_addresses=True)
    async for api in serve(settings):
        yield api


@pytest.mark.parametrize("url", INTERNAL_URLS)
async def test_internal_urls_are_allowed_when_the_server_allows_them(
    private_api: Api, url: str
) -> None:
    made = await create(private_api, url)
    assert made["state"] == "active"


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "https://u:p@10.0.0.1/"])
async def test_allowing_private_addresses_allows_no_other_scheme_nor_credentials(
    private_api: Api, url: str
) -> None:
    body = {"url": url, "kinds": ["delivery.sent"]}
    problem(await call(private_api, "POST", PATH, body=body), 422)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"url": URL, "kinds": ["delivery.lost"]}, ["body", "kinds", 0]),
        ({"url": URL, "kinds": ["webhook.test"]}, ["body", "kinds", 0]),
        ({"url": URL, "kinds": ["DELIVERY.SENT"]}, ["body", "kinds", 0]),
        ({"url": URL, "kinds": []}, ["body", "kinds"]),
        ({"url": URL, "kinds": "delivery.sent"}, ["body", "kinds"]),
        ({"url": URL, "kinds": ["delivery.sent"] * 9}, ["body", "kinds"]),
        ({"url": URL}, ["body", "kinds"]),
        ({"kinds": ["delivery.sent"]}, ["body", "url"]),
        ({"url": URL, "kinds": ["delivery.sent"], "secret": "whsec_mine"}, ["body", "secret"]),
        ({"url": URL, "kinds": ["delivery.sent"], "description": "a\nb"}, ["body", "description"]),
        (
            {"url": URL, "kinds": ["delivery.sent"], "description": "x" * 501},
            ["body", "description"],
        ),
        ({"url": URL + "\x00", "kinds": ["delivery.sent"]}, ["body"]),
        ({"url": 12, "kinds": ["delivery.sent"]}, ["body", "url"]),
    ],
)
async def test_bad_bodies_are_refused_naming_the_field(
    api: Api, body: dict[str, Any], loc: list[str | int]
) -> None:
    refused = problem(await call(api, "POST", PATH, body=body), 422)
    assert loc in [e[: len(loc)] for e in error_locs(refused)], refused
    assert body_of(await call(api, "GET", PATH), 200)["items"] == []


@pytest.mark.parametrize("grace", ["8d", "-1s", "1w", "1.5h", "", 60, None, "169h"])
async def test_a_rotation_refuses_a_bad_grace_period(api: Api, grace: Any) -> None:
    made = await create(api)
    answer = await call(api, "POST", f"{PATH}/{made['id']}/rotate-secret", body={"grace": grace})
    if grace is None:  # left to the server's setting
        body_of(answer, 200)
        return
    refused = problem(answer, 422)
    assert error_locs(refused)[0][:2] == ["body", "grace"]
    row_secret = (await _stored(api, made["id"])).secret
    assert row_secret == made["secret"]


async def _stored(api: Api, endpoint_id: str) -> WebhookEndpoint:
    async with api.services.db.read() as session:
        row = await session.get(WebhookEndpoint, uuid.UUID(endpoint_id))
        assert row is not None
        return row


async def test_huge_and_deep_bodies_are_refused_without_a_500(api: Api) -> None:
    made = await create(api)
    headers = {**api.headers(Scope.ADMIN), "Content-Type": "application/json"}
    limit = api.services.settings.max_body_bytes
    huge = json.dumps({"url": URL, "kinds": ["delivery.sent"], "description": "x" * limit})
    deep = f'{{"url": "{URL}", "kinds": {"[" * 100_000 + "]" * 100_000}}}'
    deep_patch = '{"description": ' + "{" + '"a":' * 50_000 + "1" + "}" * 50_000 + "}"
    for method, path, raw in [
        ("POST", PATH, huge),
        ("POST", PATH, deep),
        ("PATCH", f"{PATH}/{made['id']}", huge),
        ("PATCH", f"{PATH}/{made['id']}", deep_patch),
        (
            "POST",
            f"{PATH}/{made['id']}/rotate-secret",
            '{"grace": %s}' % ("[" * 50_000 + "]" * 50_000),
        ),
    ]:
        answer = await api.client.request(method, path, content=raw.encode(), headers=headers)
        assert 400 <= answer.status_code < 500, (method, path, answer.status_code)
        assert answer.status_code in (400, 413, 422)
    listed = body_of(await call(api, "GET", PATH), 200)["items"]
    assert [e["id"] for e in listed] == [made["id"]]
    assert listed[0]["description"] is None
    assert (await _stored(api, made["id"])).secret == made["secret"]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The test process's logging, restored after a test that configures its own."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers = handlers
    root.setLevel(level)


def configure_logs() -> None:
    """``bulletin.logs`` configured as ``bulletin serve`` does by default (info, here JSON),
    writing to the stderr that the test's ``capsys`` captures now."""
    logs.configure("info", "json")
    structlog.configure(cache_logger_on_first_use=False)


@pytest.fixture(params=["sealed", "in clear"])
async def either_api(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """A server with BULLETIN_SECRET_KEY (secrets sealed), or without (stored as they are)."""
    key = generate_key() if request.param == "sealed" else None
    async for api in serve(make_settings(database_url, secret_key=key)):
        yield api


async def test_the_secret_is_shown_only_on_creation_and_rotation_and_never_logged(
    restored_logging: None, either_api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logs()
    api = either_api
    answers: list[httpx.Response] = []

    async def logged(
        method: str, path: str, body: Any = None, scope: Scope = Scope.ADMIN
    ) -> httpx.Response:
        answer = await call(api, method, path, scope, body)
        answers.append(answer)
        return answer

    made = body_of(await logged("POST", PATH, {"url": URL, "kinds": ["delivery.sent"]}), 201)
    rotated = body_of(await logged("POST", f"{PATH}/{made['id']}/rotate-secret"), 200)
    secrets = [made["secret"], rotated["secret"]]
    shown_in = {answers[0].request.url.path + " POST", answers[1].request.url.path}
    base = f"{PATH}/{made['id']}"
    delivery = body_of(await logged("POST", f"{base}/test"), 202)
    await logged("GET", PATH)
    await logged("GET", base)
    await logged("PATCH", base, {"description": "d", "kinds": ["delivery.read"]})
    await logged("PATCH", base, {"url": "https://127.0.0.1/x"})  # a refusal
    await logged("PATCH", base, {"enabled": False})
    await logged("POST", f"{base}/test")  # 409: disabled
    await logged("PATCH", base, {"enabled": True})
    await logged("GET", f"{base}/deliveries")
    await logged("POST", f"{base}/deliveries/{delivery['id']}/retry")  # 409: pending
    await logged("POST", f"{base}/rotate-secret", {"grace": "8d"})  # a refusal
    await logged("GET", base, scope=Scope.READ)  # a refusal
    await logged("POST", PATH, {"url": URL, "kinds": ["nope"], "secret": secrets[0]})
    await logged("GET", "/openapi.json")

    statuses = [a.status_code for a in answers]
    assert statuses[:2] == [201, 200]
    assert {422, 409, 403} <= set(statuses)
    for answer in answers[2:]:
        text = answer.text + json.dumps(dict(answer.headers))
        assert "whsec_" not in text or answer.request.url.path == "/openapi.json"
        for secret in secrets:
            assert secret not in text, answer.request.url.path
            assert secret[6:] not in text, answer.request.url.path
    assert shown_in  # the two answers above are the only ones that held a secret

    out = capsys.readouterr()
    written = out.out + out.err
    assert "webhooks.endpoint_created" in written  # the logs were captured
    assert "webhooks.secret_rotated" in written
    for secret in secrets:
        assert secret[6:] not in written
