"""Webhook endpoints through the API: create, list, change, delete, rotate the secret (both
secrets sign during the grace period, as a receiver using the Standard Webhooks package sees),
send a test event, and follow and retry deliveries."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bulletin.app import create_app
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.orgs.keys import Scope
from bulletin.subscriptions import repository, service, signing
from bulletin.subscriptions.models import (
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
    WebhookSubscription,
)
from conftest import Api, make_settings
from support.http import body_of, cursor_after, error_locs, problem, walk

PATH = "/v1/webhook-endpoints"
URL = "https://hooks.example.com/bulletin"
ENDPOINT_FIELDS = {
    "id",
    "url",
    "description",
    "kinds",
    "state",
    "failing_since",
    "previous_secret_expires_at",
    "created_at",
    "updated_at",
}
BODY = b'{"type":"delivery.sent","timestamp":"2026-12-03T20:00:00Z","data":{}}'


async def create(api: Api, **fields: Any) -> dict[str, Any]:
    payload = {"url": URL, "kinds": ["delivery.sent"], **fields}
    return body_of(await api.post(PATH, payload, Scope.ADMIN), 201)


async def patch(api: Api, endpoint_id: str, body: dict[str, Any]) -> httpx.Response:
    return await api.client.patch(
        f"{PATH}/{endpoint_id}", json=body, headers=api.headers(Scope.ADMIN)
    )


async def stored(api: Api, endpoint_id: str) -> WebhookEndpoint:
    async with api.services.db.read() as session:
        row = await session.get(WebhookEndpoint, uuid.UUID(endpoint_id))
        assert row is not None
        return row


async def subscribed(api: Api, endpoint_id: str) -> list[str]:
    async with api.services.db.read() as session:
        rows = await session.execute(
            select(WebhookSubscription.kind, WebhookSubscription.org_id).where(
                WebhookSubscription.endpoint_id == uuid.UUID(endpoint_id)
            )
        )
        found = list(rows)
    assert all(org == api.org_id for _, org in found)
    return sorted(kind for kind, _ in found)


def verifies(secret: str, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(BODY, headers)
    except WebhookVerificationError:
        return False
    return True


async def signed_now(api: Api, endpoint_id: str, at: dt.datetime | None = None) -> dict[str, str]:
    """Headers the sender would put on a request to the endpoint sent at ``at``."""
    row = await stored(api, endpoint_id)
    box = service.secret_box(api.services.settings)
    secrets = service.signing_secrets(row, box, at or dt.datetime.now(dt.UTC))
    return signing.headers(secrets, "msg_1", int(time.time()), BODY)


@pytest.fixture
async def sealed_api(database_url: str) -> AsyncIterator[Api]:
    """The API of a server that has BULLETIN_SECRET_KEY: endpoint secrets are sealed."""
    settings = make_settings(database_url, secret_key=generate_key())
    async for api in _serve(settings):
        yield api


async def _serve(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as c:
            api = Api(c, app.state.services)
            await api.new_org()
            yield api


# --- Create, read, list ---------------------------------------------------------------------


async def test_creating_shows_the_secret_once_and_subscribes_the_kinds(api: Api) -> None:
    answer = await api.post(
        PATH,
        {
            "url": URL,
            "kinds": ["message.completed", "delivery.failed", "delivery.sent", "delivery.failed"],
            "description": "CRM",
        },
        Scope.ADMIN,
    )
    made = body_of(answer, 201)
    assert set(made) == ENDPOINT_FIELDS | {"secret"}
    assert answer.headers["Location"] == f"{PATH}/{made['id']}"
    assert made["secret"].startswith("whsec_")
    assert made["url"] == URL
    assert made["description"] == "CRM"
    assert made["state"] == "active"
    assert made["failing_since"] is None
    assert made["previous_secret_expires_at"] is None
    # Once each, in the documented order.
    assert made["kinds"] == ["delivery.sent", "delivery.failed", "message.completed"]
    assert await subscribed(api, made["id"]) == sorted(made["kinds"])

    shown = body_of(await api.get(f"{PATH}/{made['id']}", Scope.ADMIN), 200)
    assert set(shown) == ENDPOINT_FIELDS
    assert shown == {k: v for k, v in made.items() if k != "secret"}
    # The secret that was shown signs: a receiver holding it verifies.
    assert verifies(made["secret"], await signed_now(api, made["id"]))


async def test_without_a_secret_key_the_secret_is_stored_as_it_is(api: Api) -> None:
    made = await create(api)
    assert (await stored(api, made["id"])).secret == made["secret"]


async def test_with_a_secret_key_the_secret_is_stored_sealed(sealed_api: Api) -> None:
    made = await create(sealed_api)
    row = await stored(sealed_api, made["id"])
    assert made["secret"] not in row.secret
    assert made["secret"][6:] not in row.secret
    assert verifies(made["secret"], await signed_now(sealed_api, made["id"]))


async def test_a_sealed_secret_is_not_read_without_the_key(sealed_api: Api) -> None:
    made = await create(sealed_api)
    row = await stored(sealed_api, made["id"])
    with pytest.raises(Exception, match="BULLETIN_SECRET_KEY") as caught:
        service.signing_secrets(row, None, dt.datetime.now(dt.UTC))
    assert made["secret"] not in str(caught.value)


async def test_the_list_is_paged_oldest_first_without_secrets(api: Api) -> None:
    made = [await create(api, description=f"e{n}") for n in range(5)]
    pages = await walk(api, PATH, 2, scope=Scope.ADMIN)
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [item for page in pages for item in page]
    assert [e["id"] for e in listed] == [e["id"] for e in made]
    assert all(set(e) == ENDPOINT_FIELDS for e in listed)
    text = (await api.get(PATH, Scope.ADMIN)).text
    assert all(e["secret"] not in text for e in made)
    for cursor in ["%%%", cursor_after(12), cursor_after("not-a-uuid")]:
        problem(await api.get(PATH, Scope.ADMIN, params={"cursor": cursor}), 422)


async def test_a_retried_creation_with_an_idempotency_key_makes_one_endpoint(api: Api) -> None:
    payload = {"url": URL, "kinds": ["delivery.read"]}
    headers = {"Idempotency-Key": "create-1"}
    first = body_of(await api.post(PATH, payload, Scope.ADMIN, **headers), 201)
    again = await api.post(PATH, payload, Scope.ADMIN, **headers)
    replayed = body_of(again, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert replayed["id"] == first["id"]
    assert replayed["secret"] is None  # shown once; never kept with the key
    assert len((body_of(await api.get(PATH, Scope.ADMIN), 200))["items"]) == 1
    other = await api.post(PATH, {**payload, "url": URL + "/2"}, Scope.ADMIN, **headers)
    problem(other, 422)


async def test_an_organization_has_at_most_so_many_endpoints(api: Api) -> None:
    for _ in range(service.MAX_ENDPOINTS):
        await create(api)
    refused = problem(
        await api.post(PATH, {"url": URL, "kinds": ["delivery.sent"]}, Scope.ADMIN), 409
    )
    assert str(service.MAX_ENDPOINTS) in refused["detail"]


# --- Change, enable, disable, delete -------------------------------------------------------


async def test_patch_changes_only_what_is_given(api: Api) -> None:
    made = await create(api, description="first")
    changed = body_of(
        await patch(api, made["id"], {"kinds": ["delivery.read", "message.cancelled"]}), 200
    )
    assert changed["kinds"] == ["delivery.read", "message.cancelled"]
    assert changed["url"] == URL
    assert changed["description"] == "first"
    assert changed["updated_at"] >= made["updated_at"]
    assert await subscribed(api, made["id"]) == ["delivery.read", "message.cancelled"]

    moved = body_of(await patch(api, made["id"], {"url": "https://new.example.org/h"}), 200)
    assert moved["url"] == "https://new.example.org/h"
    cleared = body_of(await patch(api, made["id"], {"description": None}), 200)
    assert cleared["description"] is None
    assert cleared["kinds"] == ["delivery.read", "message.cancelled"]
    for field in ("url", "kinds", "enabled"):
        refused = problem(await patch(api, made["id"], {field: None}), 422)
        assert ["body", field] in [loc[:2] for loc in error_locs(refused)]
    # The secret did not change.
    assert verifies(made["secret"], await signed_now(api, made["id"]))


async def test_only_an_active_endpoint_has_subscriptions(api: Api) -> None:
    made = await create(api, kinds=["delivery.sent", "delivery.failed"])
    off = body_of(await patch(api, made["id"], {"enabled": False}), 200)
    assert off["state"] == "disabled"
    assert await subscribed(api, made["id"]) == []
    # A change of kinds while disabled is kept, but subscribes nothing.
    body_of(await patch(api, made["id"], {"kinds": ["delivery.read"]}), 200)
    assert await subscribed(api, made["id"]) == []
    on = body_of(await patch(api, made["id"], {"enabled": True}), 200)
    assert on["state"] == "active"
    assert on["kinds"] == ["delivery.read"]
    assert await subscribed(api, made["id"]) == ["delivery.read"]


async def test_enabling_a_failing_endpoint_makes_it_active_again(api: Api) -> None:
    made = await create(api, kinds=["delivery.failed"])
    # What the sender does once an event exhausted its retries.
    async with api.services.db.transaction() as session:
        row = await session.get(WebhookEndpoint, uuid.UUID(made["id"]))
        assert row is not None
        row.state, row.failing_since = "failing", dt.datetime.now(dt.UTC)
        await session.flush()
        await repository.set_subscriptions(session, row.id, row.org_id, [])
    failing = body_of(await api.get(f"{PATH}/{made['id']}", Scope.ADMIN), 200)
    assert failing["state"] == "failing"
    assert failing["failing_since"] is not None
    # A PATCH that does not enable it leaves it failing, with no subscriptions.
    body_of(await patch(api, made["id"], {"description": "x"}), 200)
    assert await subscribed(api, made["id"]) == []
    on = body_of(await patch(api, made["id"], {"enabled": True}), 200)
    assert on["state"] == "active"
    assert on["failing_since"] is None
    assert await subscribed(api, made["id"]) == ["delivery.failed"]


async def test_deleting_removes_the_endpoint_and_what_was_recorded_for_it(api: Api) -> None:
    made = await create(api)
    body_of(await api.post(f"{PATH}/{made['id']}/test", None, Scope.ADMIN), 202)
    assert (await api.delete(f"{PATH}/{made['id']}", Scope.ADMIN)).status_code == 204
    problem(await api.get(f"{PATH}/{made['id']}", Scope.ADMIN), 404)
    problem(await api.delete(f"{PATH}/{made['id']}", Scope.ADMIN), 404)
    assert await subscribed(api, made["id"]) == []
    async with api.services.db.read() as session:
        left = await session.execute(
            select(WebhookMessage.id).where(WebhookMessage.endpoint_id == uuid.UUID(made["id"]))
        )
        assert list(left) == []


# --- Rotation --------------------------------------------------------------------------------


async def rotate(api: Api, endpoint_id: str, body: Any = None) -> dict[str, Any]:
    answer = await api.client.post(
        f"{PATH}/{endpoint_id}/rotate-secret",
        headers=api.headers(Scope.ADMIN),
        **({} if body is None else {"json": body}),
    )
    return body_of(answer, 200)


@pytest.mark.parametrize("sealed", [False, True])
async def test_after_a_rotation_both_secrets_sign_until_the_grace_period_ends(
    api: Api, sealed_api: Api, sealed: bool
) -> None:
    client = sealed_api if sealed else api
    made = await create(client)
    old = made["secret"]
    before = dt.datetime.now(dt.UTC)
    rotated = await rotate(client, made["id"])
    after = dt.datetime.now(dt.UTC)
    new = rotated["secret"]
    assert new.startswith("whsec_")
    assert new != old
    assert rotated["id"] == made["id"]
    grace = dt.timedelta(seconds=client.services.settings.webhook_secret_grace_seconds)
    until = dt.datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert before + grace <= until <= after + grace
    shown = body_of(await client.get(f"{PATH}/{made['id']}", Scope.ADMIN), 200)
    assert shown["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]
    assert "secret" not in shown

    during = await signed_now(client, made["id"])
    assert len(during["webhook-signature"].split(" ")) == 2
    assert verifies(old, during)  # a receiver not moved yet
    assert verifies(new, during)  # a receiver already moved
    assert not verifies(signing.new_secret(), during)

    ended = await signed_now(client, made["id"], until + dt.timedelta(seconds=1))
    assert verifies(new, ended)
    assert not verifies(old, ended)


async def test_a_rotation_can_name_its_grace_period_or_none(api: Api) -> None:
    made = await create(api)
    rotated = await rotate(api, made["id"], {"grace": "2h"})
    until = dt.datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert abs(until - dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)) < dt.timedelta(minutes=1)
    assert verifies(made["secret"], await signed_now(api, made["id"]))

    cut = await rotate(api, made["id"], {"grace": "0s"})
    assert cut["previous_secret_expires_at"] is None
    now = await signed_now(api, made["id"])
    assert verifies(cut["secret"], now)
    assert not verifies(rotated["secret"], now)
    assert not verifies(made["secret"], now)


async def test_a_rotation_repeated_during_the_grace_period_keeps_the_first_secret(
    api: Api,
) -> None:
    made = await create(api)
    first = await rotate(api, made["id"])  # its answer lost, say
    second = await rotate(api, made["id"])  # the retry
    headers = await signed_now(api, made["id"])
    assert verifies(made["secret"], headers)  # receivers never moved still verify
    assert verifies(second["secret"], headers)
    assert not verifies(first["secret"], headers)
    assert second["previous_secret_expires_at"] >= first["previous_secret_expires_at"]


async def test_the_default_grace_period_is_the_servers_setting(database_url: str) -> None:
    settings = make_settings(database_url, webhook_secret_grace_seconds=60)
    async for api in _serve(settings):
        made = await create(api)
        rotated = await rotate(api, made["id"])
        until = dt.datetime.fromisoformat(rotated["previous_secret_expires_at"])
        left = until - dt.datetime.now(dt.UTC)
        assert dt.timedelta(seconds=0) < left <= dt.timedelta(seconds=60)


# --- Test events and deliveries --------------------------------------------------------------


async def test_a_test_event_is_recorded_due_now_and_listed(api: Api) -> None:
    made = await create(api)
    sent = body_of(await api.post(f"{PATH}/{made['id']}/test", None, Scope.ADMIN), 202)
    assert sent["kind"] == "webhook.test"
    assert sent["state"] == "pending"
    assert sent["attempts"] == 0
    assert sent["webhook_id"] == f"msg_{sent['id']}"
    assert sent["history"] == []
    due = dt.datetime.fromisoformat(sent["next_attempt_at"])
    assert due <= dt.datetime.now(dt.UTC)
    listed = body_of(await api.get(f"{PATH}/{made['id']}/deliveries", Scope.ADMIN), 200)
    assert listed["items"] == [sent]
    async with api.services.db.read() as session:
        row = await session.get(WebhookMessage, sent["id"])
        assert row is not None
        assert row.org_id == api.org_id
        assert row.data == {"endpoint_id": made["id"], "test": True}


async def test_no_test_event_for_an_endpoint_that_is_not_active(api: Api) -> None:
    made = await create(api)
    body_of(await patch(api, made["id"], {"enabled": False}), 200)
    refused = problem(await api.post(f"{PATH}/{made['id']}/test", None, Scope.ADMIN), 409)
    assert "enable" in refused["detail"].lower()
    listed = body_of(await api.get(f"{PATH}/{made['id']}/deliveries", Scope.ADMIN), 200)
    assert listed["items"] == []


async def record_history(api: Api, endpoint_id: str, count: int) -> list[int]:
    """``count`` outbox rows for the endpoint as the sender leaves them: every third failed
    after two attempts, the others delivered after one; ids oldest first."""
    now = dt.datetime.now(dt.UTC)
    ids = []
    async with api.services.db.transaction() as session:
        for n in range(count):
            failed = n % 3 == 0
            row = WebhookMessage(
                endpoint_id=uuid.UUID(endpoint_id),
                org_id=api.org_id,
                kind="delivery.sent",
                occurred_at=now,
                delivery_id=n + 1,
                state="failed" if failed else "delivered",
                attempts=2 if failed else 1,
                next_attempt_at=now,
                last_status=500 if failed else 204,
                last_error="HTTP 500" if failed else None,
                created_at=now,
                finished_at=now,
            )
            session.add(row)
            await session.flush()
            codes = [503, 500] if failed else [204]
            for code in codes:
                session.add(
                    WebhookAttempt(
                        webhook_message_id=row.id,
                        endpoint_id=row.endpoint_id,
                        at=now,
                        status_code=code,
                        error=None if code < 300 else f"HTTP {code}",
                        duration_ms=12,
                    )
                )
            ids.append(row.id)
    return ids


async def test_deliveries_are_listed_newest_first_with_their_attempts(api: Api) -> None:
    made = await create(api)
    ids = await record_history(api, made["id"], 7)
    path = f"{PATH}/{made['id']}/deliveries"
    pages = await walk(api, path, 3, scope=Scope.ADMIN)
    assert [len(p) for p in pages] == [3, 3, 1]
    listed = [d for page in pages for d in page]
    assert [d["id"] for d in listed] == list(reversed(ids))
    first = listed[-1]
    assert first["state"] == "failed"
    assert first["attempts"] == 2
    assert first["last_status"] == 500
    assert first["next_attempt_at"] is None
    assert [a["status_code"] for a in first["history"]] == [503, 500]
    assert [a["status_code"] for a in listed[-2]["history"]] == [204]
    failed = body_of(await api.get(path, Scope.ADMIN, params={"state": "failed"}), 200)
    assert [d["id"] for d in failed["items"]] == [ids[6], ids[3], ids[0]]
    problem(await api.get(path, Scope.ADMIN, params={"state": "lost"}), 422)
    for cursor in ["%%%", cursor_after("x"), cursor_after(2**70)]:
        problem(await api.get(path, Scope.ADMIN, params={"cursor": cursor}), 422)


async def test_a_failed_or_delivered_event_can_be_sent_again(api: Api) -> None:
    made = await create(api)
    failed_id, delivered_id = await record_history(api, made["id"], 2)
    base = f"{PATH}/{made['id']}/deliveries"
    again = body_of(await api.post(f"{base}/{failed_id}/retry", None, Scope.ADMIN), 202)
    assert again["id"] == failed_id
    assert again["webhook_id"] == f"msg_{failed_id}"
    assert again["state"] == "pending"
    assert again["attempts"] == 2  # the sender's fencing token never goes back
    assert dt.datetime.fromisoformat(again["next_attempt_at"]) <= dt.datetime.now(dt.UTC)
    assert [a["status_code"] for a in again["history"]] == [503, 500]  # kept
    async with api.services.db.read() as session:
        row = await session.get(WebhookMessage, failed_id)
        assert row is not None
        assert row.finished_at is None
        assert row.lease_expires_at is None
    # Pending already: on its way.
    problem(await api.post(f"{base}/{failed_id}/retry", None, Scope.ADMIN), 409)
    body_of(await api.post(f"{base}/{delivered_id}/retry", None, Scope.ADMIN), 202)
    problem(await api.post(f"{base}/999999/retry", None, Scope.ADMIN), 404)
    problem(await api.post(f"{base}/0/retry", None, Scope.ADMIN), 422)
    problem(await api.post(f"{base}/{2**64}/retry", None, Scope.ADMIN), 422)


async def test_the_openapi_document_describes_the_routes(api: Api) -> None:
    spec = json.loads((await api.client.get("/openapi.json")).text)
    paths = spec["paths"]
    assert set(paths[PATH]) == {"get", "post"}
    assert set(paths[PATH + "/{endpoint_id}"]) == {"get", "patch", "delete"}
    for tail in ("/rotate-secret", "/test", "/deliveries/{delivery_id}/retry"):
        assert "post" in paths[PATH + "/{endpoint_id}" + tail]
    assert "get" in paths[PATH + "/{endpoint_id}/deliveries"]
