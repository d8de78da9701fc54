"""The portal's webhook pages through HTTP, on SQLite and PostgreSQL built by the real migrations:
the secret shown once, every action, tenancy (404), sign-in, CSRF and escaping."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from bulletin.orgs.keys import Scope
from bulletin.subscriptions import kinds, service
from bulletin.subscriptions.models import WebhookEndpoint, WebhookMessage
from bulletin.web.portal import accounts
from bulletin.web.portal.models import PortalUser
from conftest import Api
from support.http import body_of

PASSWORD = "correct horse battery"
URL = "https://hooks.example.com/bulletin"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_ONCE = re.compile(r'name="submission_key" value="([^"]+)"')
_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")


async def signed_in(api: Api, email: str = "ops@example.com") -> str:
    """Sign a new portal user of ``api``'s organization in; returns the session's CSRF token."""
    async with api.services.db.transaction() as session:
        await accounts.create_user(session, api.org_id, email, "Ops", PASSWORD)
    api.client.cookies.clear()
    form = await api.client.get("/portal/sign-in")
    nonce = _CSRF.search(form.text)
    assert nonce is not None
    answer = await api.client.post(
        "/portal/sign-in", data={"email": email, "password": PASSWORD, "csrf_token": nonce[1]}
    )
    assert answer.status_code == 303, answer.text
    page = await api.client.get("/portal/webhooks")
    token = _CSRF.search(page.text)
    assert token is not None
    return token[1]


async def add_form(api: Api, csrf: str, **fields: Any) -> dict[str, Any]:
    """The creation form as the list page gives it (with its one-time key), filled in."""
    page = await api.client.get("/portal/webhooks")
    assert page.status_code == 200, page.text
    once = _ONCE.search(page.text)
    assert once is not None
    form: dict[str, Any] = {
        "csrf_token": csrf,
        "submission_key": once[1],
        "url": URL,
        "description": "Orders system",
        "kinds": ["delivery.failed", "message.completed"],
    }
    form.update(fields)
    return form


async def create(api: Api, csrf: str, **fields: Any) -> tuple[str, str]:
    """An endpoint made through the portal: its id and the secret its page showed."""
    answer = await api.client.post("/portal/webhooks", data=await add_form(api, csrf, **fields))
    assert answer.status_code == 201, answer.text
    secrets = _SECRET.findall(answer.text)
    assert len(set(secrets)) == 1, secrets
    found = re.search(r'action="/portal/webhooks/([0-9a-f-]{36})/rotate"', answer.text)
    assert found is not None
    return found[1], secrets[0]


async def endpoints_of(api: Api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = body_of(await api.get("/v1/webhook-endpoints", Scope.ADMIN), 200)[
        "items"
    ]
    return items


async def stored(api: Api, endpoint_id: str) -> WebhookEndpoint | None:
    async with api.services.db.read() as session:
        return (
            await session.execute(
                select(WebhookEndpoint).where(WebhookEndpoint.id == uuid.UUID(endpoint_id))
            )
        ).scalar_one_or_none()


async def signs_with(api: Api, endpoint_id: str) -> list[str]:
    """The secrets that sign requests to the endpoint now, as the sender reads them."""
    row = await stored(api, endpoint_id)
    assert row is not None
    box = service.secret_box(api.services.settings)
    return service.signing_secrets(row, box, dt.datetime.now(dt.UTC))


async def settle(api: Api, endpoint_id: str, state: str, error: str | None = None) -> None:
    """Mark the endpoint's deliveries as finished, as the sender would."""
    async with api.services.db.transaction() as session:
        await session.execute(
            update(WebhookMessage)
            .where(WebhookMessage.endpoint_id == uuid.UUID(endpoint_id))
            .values(state=state, attempts=1, last_status=500, last_error=error)
        )


async def test_a_new_endpoint_s_secret_is_shown_once(api: Api) -> None:
    csrf = await signed_in(api)
    form = await add_form(api, csrf)
    answer = await api.client.post("/portal/webhooks", data=form)
    assert answer.status_code == 201, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    assert "shown this once" in answer.text
    secret = _SECRET.findall(answer.text)[0]
    [listed] = await endpoints_of(api)
    assert listed["url"] == URL
    assert listed["kinds"] == ["delivery.failed", "message.completed"]
    assert listed["description"] == "Orders system"
    assert listed["state"] == "active"
    # The secret shown is the one that signs.
    assert await signs_with(api, listed["id"]) == [secret]
    # No later page shows it.
    for path in ("/portal/webhooks", f"/portal/webhooks/{listed['id']}"):
        later = await api.client.get(path)
        assert later.status_code == 200
        assert URL in later.text
        assert not _SECRET.search(later.text), path
    # The same form sent again (a double click) makes nothing, and shows no secret.
    again = await api.client.post("/portal/webhooks", data=form)
    assert again.status_code == 303
    assert again.headers["location"] == f"/portal/webhooks/{listed['id']}?notice=again"
    assert not _SECRET.search(again.text)
    shown = await api.client.get(again.headers["location"])
    assert "already sent" in shown.text
    assert not _SECRET.search(shown.text)
    assert [e["id"] for e in await endpoints_of(api)] == [listed["id"]]
    # A new form makes a new one.
    await create(api, csrf, url="https://other.example.com/in")
    assert len(await endpoints_of(api)) == 2


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"url": "http://hooks.example.com/in"}, "must be an https URL"),
        ({"url": "https://127.0.0.1/in"}, "non-public address"),
        ({"url": "https://metadata.internal/in"}, "local name"),
        ({"url": "not a url"}, "not a valid http(s) URL"),
        ({"url": ""}, "url"),
        ({"kinds": []}, "kinds"),
        ({"kinds": ["delivery.sent", "everything"]}, "kinds"),
        ({"description": "x" * 501}, "description"),
    ],
)
async def test_bad_input_is_refused_with_its_reason(
    api: Api, fields: dict[str, Any], says: str
) -> None:
    csrf = await signed_in(api)
    answer = await api.client.post("/portal/webhooks", data=await add_form(api, csrf, **fields))
    assert answer.status_code == 422, answer.text
    assert "was not added" in answer.text
    assert says in answer.text
    assert not _SECRET.search(answer.text)
    assert await endpoints_of(api) == []


async def test_every_action_of_the_endpoint_page(api: Api) -> None:
    csrf = await signed_in(api)
    endpoint_id, first = await create(api, csrf)
    base = f"/portal/webhooks/{endpoint_id}"

    async def post(action: str, **extra: str) -> Any:
        return await api.client.post(f"{base}/{action}", data={"csrf_token": csrf, **extra})

    async def state() -> str:
        shown = body_of(await api.get(f"/v1/webhook-endpoints/{endpoint_id}", Scope.ADMIN), 200)
        return str(shown["state"])

    disabled = await post("disable")
    assert disabled.status_code == 303
    assert disabled.headers["location"] == f"{base}?notice=disabled"
    assert await state() == "disabled"
    page = await api.client.get(disabled.headers["location"])
    assert "is disabled" in page.text
    assert "Send a test event" not in page.text
    # Nothing is sent to a disabled endpoint: a test is refused with the reason.
    refused = await post("test")
    assert refused.status_code == 409
    assert "Enable it first" in refused.text

    assert (await post("enable")).headers["location"] == f"{base}?notice=enabled"
    assert await state() == "active"

    tested = await post("test")
    assert tested.status_code == 303
    page = await api.client.get(tested.headers["location"])
    assert "is on its way" in page.text
    [delivery] = body_of(
        await api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", Scope.ADMIN), 200
    )["items"]
    assert delivery["kind"] == kinds.TEST
    assert delivery["webhook_id"] in page.text
    assert "Retry" not in page.text  # pending: already on its way

    await settle(api, endpoint_id, "failed", "connection refused")
    page = await api.client.get(base)
    assert "connection refused" in page.text
    retry_path = f"{base}/deliveries/{delivery['id']}/retry"
    assert f'action="{retry_path}"' in page.text
    retried = await api.client.post(retry_path, data={"csrf_token": csrf})
    assert retried.headers["location"] == f"{base}?notice=retried"
    [again] = body_of(
        await api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", Scope.ADMIN), 200
    )["items"]
    assert again["state"] == "pending"
    assert again["webhook_id"] == delivery["webhook_id"]
    assert (await api.client.post(retry_path, data={"csrf_token": csrf})).status_code == 409

    rotated = await post("rotate")
    assert rotated.status_code == 200
    [second] = set(_SECRET.findall(rotated.text))
    assert second != first
    assert "Previous secret" in rotated.text
    assert await signs_with(api, endpoint_id) == [second, first]  # both sign for a while
    at_once = await post("rotate", at_once="on")
    [third] = set(_SECRET.findall(at_once.text))
    assert await signs_with(api, endpoint_id) == [third]  # the old ones stop now
    assert not _SECRET.search((await api.client.get(base)).text)

    deleted = await post("delete")
    assert deleted.headers["location"] == "/portal/webhooks?notice=deleted"
    assert "was deleted" in (await api.client.get(deleted.headers["location"])).text
    assert await endpoints_of(api) == []
    assert (await api.client.get(base)).status_code == 404


async def test_another_organization_s_endpoint_is_404_and_untouched(api: Api) -> None:
    other = await api.other_org()
    made = body_of(
        await other.post(
            "/v1/webhook-endpoints",
            {"url": "https://theirs.example.com/in", "kinds": ["delivery.sent"]},
            Scope.ADMIN,
        ),
        201,
    )
    theirs = made["id"]
    body_of(await other.post(f"/v1/webhook-endpoints/{theirs}/test", None, Scope.ADMIN), 202)
    await settle(other, theirs, "failed")
    [delivery] = body_of(
        await other.get(f"/v1/webhook-endpoints/{theirs}/deliveries", Scope.ADMIN), 200
    )["items"]
    before = await stored(api, theirs)
    csrf = await signed_in(api)
    listing = await api.client.get("/portal/webhooks")
    assert "theirs.example.com" not in listing.text
    base = f"/portal/webhooks/{theirs}"
    assert (await api.client.get(base)).status_code == 404
    for action in (
        "disable",
        "enable",
        "test",
        "rotate",
        "delete",
        f"deliveries/{delivery['id']}/retry",
    ):
        answer = await api.client.post(f"{base}/{action}", data={"csrf_token": csrf})
        assert answer.status_code == 404, (action, answer.text)
        assert not _SECRET.search(answer.text)
    # An own endpoint's page cannot reach the other's delivery either.
    own, _ = await create(api, csrf)
    answer = await api.client.post(
        f"/portal/webhooks/{own}/deliveries/{delivery['id']}/retry", data={"csrf_token": csrf}
    )
    assert answer.status_code == 404
    after = await stored(api, theirs)
    assert before is not None
    assert after is not None
    assert (after.state, after.secret, after.updated_at) == (
        before.state,
        before.secret,
        before.updated_at,
    )
    [still] = body_of(
        await other.get(f"/v1/webhook-endpoints/{theirs}/deliveries", Scope.ADMIN), 200
    )["items"]
    assert still["state"] == "failed"


@pytest.mark.parametrize("path", ["/portal/webhooks/x", f"/portal/webhooks/{uuid.uuid4()}"])
async def test_an_endpoint_that_cannot_exist_is_a_404_page(api: Api, path: str) -> None:
    csrf = await signed_in(api)
    assert (await api.client.get(path)).status_code == 404
    own, _ = await create(api, csrf)
    answer = await api.client.post(
        f"/portal/webhooks/{own}/deliveries/{2**64}/retry", data={"csrf_token": csrf}
    )
    assert answer.status_code == 404
    assert "text/html" in answer.headers["content-type"]


async def test_only_a_signed_in_user_of_an_enabled_account_gets_in(api: Api) -> None:
    csrf = await signed_in(api)
    endpoint_id, _ = await create(api, csrf)
    base = f"/portal/webhooks/{endpoint_id}"
    async with api.services.db.transaction() as session:
        await session.execute(update(PortalUser).values(disabled_at=dt.datetime.now(dt.UTC)))
    strangers = [{}, {"bulletin_session": "forged"}]
    for cookies in [dict(api.client.cookies), *strangers]:
        api.client.cookies.clear()
        for name, value in cookies.items():
            api.client.cookies.set(name, value, path="/portal")
        for path in ("/portal/webhooks", base):
            answer = await api.client.get(path)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/portal/sign-in?next=/portal/webhooks")
        for action in ("disable", "rotate", "delete", "test"):
            answer = await api.client.post(f"{base}/{action}", data={"csrf_token": csrf})
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/portal/sign-in")
            assert not _SECRET.search(answer.text)
        refused = await api.client.post("/portal/webhooks", data={"csrf_token": csrf, "url": URL})
        assert refused.status_code == 303
    [endpoint] = await endpoints_of(api)
    assert endpoint["state"] == "active"


POSTS = [
    "/portal/webhooks",
    "/portal/webhooks/{id}/enable",
    "/portal/webhooks/{id}/disable",
    "/portal/webhooks/{id}/rotate",
    "/portal/webhooks/{id}/test",
    "/portal/webhooks/{id}/delete",
    "/portal/webhooks/{id}/deliveries/1/retry",
]


@pytest.mark.parametrize("route", POSTS)
async def test_every_post_checks_the_csrf_token_and_origin(api: Api, route: str) -> None:
    csrf = await signed_in(api)
    endpoint_id, secret = await create(api, csrf)
    path = route.format(id=endpoint_id)
    filled = await add_form(api, csrf, url="https://second.example.com/in")
    for token in (None, "forged"):
        data = {k: v for k, v in filled.items() if k != "csrf_token"}
        if token is not None:
            data["csrf_token"] = token
        answer = await api.client.post(path, data=data)
        assert answer.status_code == 403, (path, token, answer.text)
        assert "security token" in answer.text
    foreign = await api.client.post(path, data=filled, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert "another site" in foreign.text
    # The refusals changed nothing.
    [endpoint] = await endpoints_of(api)
    assert endpoint["state"] == "active"
    assert await signs_with(api, endpoint_id) == [secret]
    deliveries = body_of(
        await api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", Scope.ADMIN), 200
    )
    assert deliveries["items"] == []


MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def test_what_people_and_receivers_wrote_is_escaped(api: Api) -> None:
    csrf = await signed_in(api)
    endpoint_id, _ = await create(api, csrf, description=MARKUP)
    for path in ("/portal/webhooks", f"/portal/webhooks/{endpoint_id}"):
        page = await api.client.get(path)
        assert MARKUP not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    # A receiver's words, recorded with a failed try, are shown as text.
    await api.client.post(f"/portal/webhooks/{endpoint_id}/test", data={"csrf_token": csrf})
    await settle(api, endpoint_id, "failed", MARKUP)
    page = await api.client.get(f"/portal/webhooks/{endpoint_id}")
    assert MARKUP not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    # A refused form shows what was typed, as text.
    typed = 'javascript:"><b>bold</b>'
    refused = await api.client.post("/portal/webhooks", data=await add_form(api, csrf, url=typed))
    assert refused.status_code == 422
    assert "<b>bold</b>" not in refused.text
    assert 'value="javascript:&#34;&gt;&lt;b&gt;bold&lt;/b&gt;"' in refused.text
