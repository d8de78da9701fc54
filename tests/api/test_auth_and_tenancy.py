"""Who may call what: API keys and scopes, and G7 (one organization never sees another's)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bulletin.channels import twilio
from bulletin.channels.whatsapp import SIGNATURE_HEADER, sign
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.devservers.whatsapp import status_payload, webhook_body
from bulletin.orgs.keys import Scope
from conftest import Api, make_settings
from support.http import body_of, error_locs, every, get_deliveries, problem, sandbox_of
from support.http_factories import in_future, notify, person_json, post_announcement, post_people
from support.settling import wait_for_state

ANNOUNCEMENT: dict[str, Any] = {"title": "Hello", "body": "Body", "audience": {"all": True}}


async def test_a_missing_or_unknown_key_is_a_401_with_a_challenge(api: Api) -> None:
    for method, path in [
        ("GET", "/v1/announcements"),
        ("POST", "/v1/announcements"),
        ("GET", "/v1/recipients/p1"),
        ("GET", "/v1/sandbox/messages"),
        ("GET", "/v1/deliveries/1"),
    ]:
        response = await api.client.request(method, path, json=ANNOUNCEMENT)
        problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), path
        # It says how to send a key, whole: the masking of secrets leaves this advice alone.
        detail = response.json()["detail"]
        assert "Authorization" in detail, detail
        assert "X-API-Key" in detail, detail
        assert "[redacted]" not in detail, detail
    # A scheme other than Bearer carries no key either.
    basic = await api.client.get("/v1/announcements", headers={"Authorization": "Basic YTpi"})
    problem(basic, 401)
    # Neither does a key that does not exist.
    for headers in [
        {"Authorization": "Bearer bk_not-a-real-key"},
        {"Authorization": "Bearer "},
        {"X-API-Key": "bk_not-a-real-key"},
    ]:
        response = await api.client.get("/v1/announcements", headers=headers)
        problem(response, 401)
        assert "WWW-Authenticate" in response.headers
    response = await api.client.post(
        "/v1/announcements", json=ANNOUNCEMENT, headers={"X-API-Key": "bk_not-a-real-key"}
    )
    problem(response, 401)
    assert body_of(await api.get("/v1/announcements"), 200)["items"] == []


async def test_the_x_api_key_header_works_like_bearer(api: Api) -> None:
    created = await api.client.post(
        "/v1/announcements", json=ANNOUNCEMENT, headers={"X-API-Key": api.keys[Scope.SEND]}
    )
    message_id = body_of(created, 202)["id"]
    listed = await api.client.get("/v1/announcements", headers={"X-API-Key": api.keys[Scope.READ]})
    assert [item["id"] for item in body_of(listed, 200)["items"]] == [message_id]


async def test_a_read_key_can_read_but_not_write(api: Api) -> None:
    await post_people(api, person_json(1))
    message_id = await post_announcement(api, send_at=in_future(3600))
    read = Scope.READ
    for response in [
        await api.post("/v1/announcements", ANNOUNCEMENT, scope=read),
        await api.post(
            "/v1/notifications", {"title": "t", "body": "b", "recipient": "p1"}, scope=read
        ),
        await api.post(f"/v1/announcements/{message_id}/cancel", scope=read),
        await api.post("/v1/recipients/batch", {"recipients": [person_json(2)]}, scope=read),
        await api.put("/v1/recipients/p2", {"name": "x"}, scope=read),
        await api.put("/v1/recipients/p1/preferences", {"categories": {"a": False}}, scope=read),
        await api.delete("/v1/recipients/p1", scope=read),
    ]:
        body = problem(response, 403)
        assert "read" in body["detail"]

    assert body_of(await api.get("/v1/recipients/p1", scope=read), 200)["active"] is True
    assert body_of(await api.get(f"/v1/announcements/{message_id}", scope=read), 200)["state"] == (
        "scheduled"
    )
    listed = await every(api, "/v1/announcements")
    assert [item["id"] for item in listed] == [message_id]
    problem(await api.get("/v1/recipients/p2", scope=read), 404)
    prefs = body_of(await api.get("/v1/recipients/p1/preferences", scope=read), 200)
    assert prefs["categories"] == {}


async def test_send_and_admin_keys_can_post(api: Api) -> None:
    for scope in (Scope.SEND, Scope.ADMIN):
        body_of(await api.post("/v1/announcements", ANNOUNCEMENT, scope=scope), 202)
        body_of(await api.put(f"/v1/recipients/{scope.value}", {"name": "x"}, scope=scope), 201)
    assert len(await every(api, "/v1/announcements")) == 2


async def test_another_organizations_ids_are_404(live_api: Api) -> None:
    api = live_api
    other = await api.other_org()
    await post_people(api, person_json(1, name="Mine"))
    delivered = await post_announcement(api)
    notification = await notify(api, "p1")
    await wait_for_state(api, f"/v1/announcements/{delivered}", "completed")
    await wait_for_state(api, f"/v1/notifications/{notification}", "completed")
    [delivery] = await get_deliveries(api, delivered)
    waiting = await post_announcement(api, send_at=in_future(3600))
    waiting_note = await notify(api, "p1", send_at=in_future(3600))

    for path in [
        f"/v1/announcements/{delivered}",
        f"/v1/announcements/{delivered}/deliveries",
        f"/v1/announcements/{waiting}",
        f"/v1/notifications/{notification}",
        f"/v1/notifications/{waiting_note}",
        f"/v1/deliveries/{delivery['id']}",
        "/v1/recipients/p1",
        "/v1/recipients/p1/preferences",
    ]:
        problem(await other.get(path), 404)
    for path in [
        f"/v1/announcements/{waiting}/cancel",
        f"/v1/notifications/{waiting_note}/cancel",
    ]:
        problem(await other.post(path), 404)
    problem(await other.put("/v1/recipients/p1/preferences", {"categories": {"x": False}}), 404)
    problem(await other.delete("/v1/recipients/p1"), 404)
    # Naming my recipient in their audience finds no such person in their organization.
    body = problem(
        await other.post("/v1/announcements", {**ANNOUNCEMENT, "audience": {"recipients": ["p1"]}}),
        422,
    )
    assert "p1" in body["errors"][0]["message"]

    # Nothing of mine changed.
    assert body_of(await api.get(f"/v1/announcements/{waiting}"), 200)["state"] == "scheduled"
    assert body_of(await api.get(f"/v1/notifications/{waiting_note}"), 200)["state"] == "scheduled"
    mine = body_of(await api.get("/v1/recipients/p1"), 200)
    assert (mine["name"], mine["active"]) == ("Mine", True)
    assert body_of(await api.get("/v1/recipients/p1/preferences"), 200)["categories"] == {}

    # The same external_id in their organization is their own, separate person.
    body_of(await other.put("/v1/recipients/p1", {"name": "Theirs"}), 201)
    assert body_of(await api.get("/v1/recipients/p1"), 200)["name"] == "Mine"
    assert body_of(await other.get("/v1/recipients/p1"), 200)["name"] == "Theirs"


async def test_lists_never_show_another_organizations_items(live_api: Api) -> None:
    api = live_api
    other = await api.other_org()
    await post_people(api, person_json(1), person_json(2))
    await post_people(other, person_json(3), person_json(4, groups=["staff"]))
    mine = await post_announcement(api)
    theirs = await post_announcement(other)
    await wait_for_state(api, f"/v1/announcements/{mine}", "completed")
    await wait_for_state(other, f"/v1/announcements/{theirs}", "completed")

    assert [a["id"] for a in await every(api, "/v1/announcements")] == [mine]
    assert [a["id"] for a in await every(other, "/v1/announcements")] == [theirs]
    assert [r["external_id"] for r in await every(api, "/v1/recipients")] == ["p1", "p2"]
    assert [r["external_id"] for r in await every(other, "/v1/recipients")] == ["p3", "p4"]
    assert await every(api, "/v1/recipients", {"group": "staff"}) == []

    my_sandbox = await every(api, "/v1/sandbox/messages")
    their_sandbox = await every(other, "/v1/sandbox/messages")
    assert sorted(r["recipient"] for r in my_sandbox) == ["p1", "p2"]
    assert sorted(r["recipient"] for r in their_sandbox) == ["p3", "p4"]
    assert {r["message_id"] for r in my_sandbox} == {mine}
    # Filtering by another organization's message finds nothing.
    assert await sandbox_of(other, mine) == []
    assert await sandbox_of(api, theirs) == []

    # "Everyone" means everyone in the sender's organization.
    assert sorted(d["recipient"] for d in await get_deliveries(api, mine)) == ["p1", "p2"]
    assert sorted(d["recipient"] for d in await get_deliveries(other, theirs)) == ["p3", "p4"]


# --- G7 for every operation of the OpenAPI document ------------------------------------------
#
# Every operation the API documents has an entry below: a probe that uses another
# organization's key on this organization's rows, or the reason the operation holds no
# organization's data. A new operation without an entry fails the tests.

PUBLIC_URL = "http://bulletin.test"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
MY_PEOPLE = ("p1", "p2", "p5")
THEIR_PEOPLE = ("p3", "p4")
MY_GROUP = "mine-only"


@pytest.fixture
def settings(database_url: str) -> Settings:
    # A secret key, so that organizations can store their own provider accounts.
    # Private addresses allowed: the accounts point at 127.0.0.1 (tests/hostile covers the limit).
    return make_settings(
        database_url,
        secret_key=generate_key(),
        public_url=PUBLIC_URL,
        allow_private_provider_addresses=True,
    )


@dataclass
class Tenants:
    """Two organizations on one app. ``mine`` has rows of every kind; ``theirs`` goes after
    them with its own admin key."""

    mine: Api
    theirs: Api
    announcement: str
    scheduled: str
    notification: str
    scheduled_note: str
    delivery: dict[str, Any]

    async def as_theirs(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = self.theirs.headers(Scope.ADMIN)
        return await self.theirs.client.request(method, path, json=body, headers=headers)

    async def my_rows(self) -> dict[str, Any]:
        """Everything of mine the API shows me."""
        me = self.mine
        notes = [self.notification, self.scheduled_note]
        return {
            "announcements": [
                body_of(await me.get(f"/v1/announcements/{a['id']}"), 200)
                for a in await every(me, "/v1/announcements")
            ],
            "notifications": [body_of(await me.get(f"/v1/notifications/{n}"), 200) for n in notes],
            "people": await every(me, "/v1/recipients", {"include_inactive": "true"}),
            "preferences": [
                body_of(await me.get(f"/v1/recipients/{p}/preferences"), 200) for p in MY_PEOPLE
            ],
            "delivery": body_of(await me.get(f"/v1/deliveries/{self.delivery['id']}"), 200),
            "channels": body_of(await me.get("/v1/channels"), 200),
            "sandbox": await every(me, "/v1/sandbox/messages"),
        }


async def tenants(api: Api) -> Tenants:
    theirs = await api.other_org("Theirs")
    await post_people(
        api, *(person_json(int(p[1:]), name="Mine", groups=[MY_GROUP]) for p in MY_PEOPLE)
    )
    await post_people(theirs, *(person_json(int(p[1:]), name="Theirs") for p in THEIR_PEOPLE))
    announcement = await post_announcement(api)
    notification = await notify(api, "p1")
    their_announcement = await post_announcement(theirs)
    for who, path in [
        (api, f"/v1/announcements/{announcement}"),
        (api, f"/v1/notifications/{notification}"),
        (theirs, f"/v1/announcements/{their_announcement}"),
    ]:
        await wait_for_state(who, path, "completed")
    [delivery, *_] = [
        d for d in await get_deliveries(api, announcement) if d["provider_message_id"]
    ]
    # Provider accounts of my own, configured once everything above was sent by the sandbox.
    for channel, config in [("whatsapp", whatsapp_account("100", "my-secret")), ("sms", MY_TWILIO)]:
        response = await api.put(f"/v1/channels/{channel}", config, Scope.ADMIN)
        assert response.status_code == 201, response.text
    return Tenants(
        mine=api,
        theirs=theirs,
        announcement=announcement,
        scheduled=await post_announcement(api, send_at=in_future(3600)),
        notification=notification,
        scheduled_note=await notify(api, "p1", send_at=in_future(3600)),
        delivery=delivery,
    )


def whatsapp_account(number_id: str, secret: str) -> dict[str, Any]:
    return {
        "provider": "whatsapp_cloud",
        "phone_number_id": number_id,
        "access_token": "EAAG-token",
        "app_secret": secret,
        "base_url": "http://127.0.0.1:9",
    }


def twilio_account(sid: str, token: str) -> dict[str, Any]:
    return {
        "provider": "twilio",
        "account_sid": sid,
        "auth_token": token,
        "from_number": "+14155550100",
        "base_url": "http://127.0.0.1:9",
    }


MY_TWILIO = twilio_account("AC" + "1" * 32, "my-token")
Probe = Callable[[Tenants], Awaitable[None]]


def not_found(method: str, path: Callable[[Tenants], str], body: Any = None) -> Probe:
    """Their key on my row is a 404, and nothing of mine changes."""

    async def probe(t: Tenants) -> None:
        before = await t.my_rows()
        problem(await t.as_theirs(method, path(t), body), 404)
        assert await t.my_rows() == before

    return probe


async def put_recipient(t: Tenants) -> None:
    # The same external_id in their organization is a new person of theirs, not mine.
    before = await t.my_rows()
    body_of(await t.as_theirs("PUT", "/v1/recipients/p2", {"name": "Theirs"}), 201)
    assert await t.my_rows() == before
    assert body_of(await t.theirs.get("/v1/recipients/p2"), 200)["name"] == "Theirs"


async def import_recipients(t: Tenants) -> None:
    before = await t.my_rows()
    batch = {"recipients": [person_json(5, name="Theirs")]}
    result = body_of(await t.as_theirs("POST", "/v1/recipients/batch", batch), 200)
    assert (result["created"], result["updated"]) == (1, 0)
    assert await t.my_rows() == before


async def list_recipients(t: Tenants) -> None:
    mine = await every(t.mine, "/v1/recipients", {"include_inactive": "true"})
    assert sorted(r["external_id"] for r in mine) == sorted(MY_PEOPLE)
    assert {r["name"] for r in mine} == {"Mine"}
    for params in ({}, {"include_inactive": "true"}, {"group": MY_GROUP}):
        theirs = await every(t.theirs, "/v1/recipients", params)
        assert {r["name"] for r in theirs} <= {"Theirs"}, params
        assert bool(theirs) == ("group" not in params), params


async def list_announcements(t: Tenants) -> None:
    mine = {a["id"] for a in await every(t.mine, "/v1/announcements")}
    theirs = {a["id"] for a in await every(t.theirs, "/v1/announcements")}
    assert {t.announcement, t.scheduled} <= mine
    assert theirs
    assert not mine & theirs


async def list_sandbox(t: Tenants) -> None:
    mine = await every(t.mine, "/v1/sandbox/messages")
    theirs = await every(t.theirs, "/v1/sandbox/messages")
    assert {r["recipient"] for r in mine} <= set(MY_PEOPLE)
    assert mine
    assert theirs
    assert {r["recipient"] for r in theirs} <= set(THEIR_PEOPLE)
    assert not {r["delivery_id"] for r in mine} & {r["delivery_id"] for r in theirs}
    for message_id in (t.announcement, t.notification):
        assert await sandbox_of(t.theirs, message_id) == []


async def create_announcement(t: Tenants) -> None:
    before = await t.my_rows()
    named = {**ANNOUNCEMENT, "audience": {"recipients": ["p1"]}, "channels": ["email"]}
    problem(await t.as_theirs("POST", "/v1/announcements", named), 422)
    # My group is nobody in their organization.
    grouped = {**ANNOUNCEMENT, "audience": {"groups": [MY_GROUP]}, "channels": ["email"]}
    theirs = body_of(await t.as_theirs("POST", "/v1/announcements", grouped), 202)
    await wait_for_state(t.theirs, f"/v1/announcements/{theirs['id']}", "completed")
    assert await get_deliveries(t.theirs, theirs["id"]) == []
    assert await t.my_rows() == before

    # Idempotency-Keys are per organization: the key and body I used are a new request from
    # them, not a replay of my answer.
    later = {**grouped, "send_at": in_future(3600)}
    key = {"Idempotency-Key": "shared-key"}
    mine = body_of(
        await t.mine.client.post(
            "/v1/announcements", json=later, headers=t.mine.headers(Scope.SEND, **key)
        ),
        202,
    )
    before = await t.my_rows()
    response = await t.theirs.client.post(
        "/v1/announcements", json=later, headers=t.theirs.headers(Scope.ADMIN, **key)
    )
    assert "Idempotent-Replayed" not in response.headers
    assert body_of(response, 202)["id"] != mine["id"]
    assert await t.my_rows() == before


async def create_notification(t: Tenants) -> None:
    before = await t.my_rows()
    note = {"title": "t", "body": "b", "recipient": "p1", "channels": ["email"]}
    body = problem(await t.as_theirs("POST", "/v1/notifications", note), 422)
    assert "p1" in str(body["errors"])
    assert await t.my_rows() == before


async def get_channel(t: Tenants) -> None:
    for channel in ("whatsapp", "sms"):
        mine = body_of(await t.mine.get(f"/v1/channels/{channel}"), 200)
        theirs = body_of(await t.theirs.get(f"/v1/channels/{channel}"), 200)
        assert mine["source"] == "organization"
        assert theirs["source"] != "organization"
        assert theirs["settings"] != mine["settings"]


async def list_channels(t: Tenants) -> None:
    theirs = body_of(await t.theirs.get("/v1/channels"), 200)["items"]
    assert theirs
    assert all(c["source"] != "organization" for c in theirs if c["channel"] != "email")


async def put_channel(t: Tenants) -> None:
    before = await t.my_rows()
    smtp = {
        "provider": "smtp",
        "host": "127.0.0.1",
        "port": 9,
        "security": "none",
        "from_address": "news@theirs.example",
    }
    body_of(await t.as_theirs("PUT", "/v1/channels/email", smtp), 201)
    assert await t.my_rows() == before


async def get_organization(t: Tenants) -> None:
    mine = body_of(await t.mine.get("/v1/organization", Scope.ADMIN), 200)
    theirs = body_of(await t.as_theirs("GET", "/v1/organization"), 200)
    assert mine["id"] == str(t.mine.org_id)
    assert theirs["id"] == str(t.theirs.org_id)
    assert theirs["name"] != mine["name"]


async def patch_organization(t: Tenants) -> None:
    before = await t.my_rows()
    mine = body_of(await t.mine.get("/v1/organization", Scope.ADMIN), 200)
    change = {"name": "Renamed by them", "preference_links_in_texts": True}
    changed = body_of(await t.as_theirs("PATCH", "/v1/organization", change), 200)
    assert changed["id"] == str(t.theirs.org_id)
    assert body_of(await t.mine.get("/v1/organization", Scope.ADMIN), 200) == mine
    assert await t.my_rows() == before


async def keys_of(api: Api) -> list[dict[str, Any]]:
    """An organization's keys as its admin sees them, less the use time (written in batches)."""
    keys = await every(api, "/v1/keys", scope=Scope.ADMIN)
    return [{k: v for k, v in key.items() if k != "last_used_at"} for key in keys]


async def list_keys(t: Tenants) -> None:
    mine = {key["id"] for key in await keys_of(t.mine)}
    theirs = {key["id"] for key in await keys_of(t.theirs)}
    assert len(mine) == len(theirs) == 3
    assert not mine & theirs


async def create_key(t: Tenants) -> None:
    before = await keys_of(t.mine)
    made = body_of(await t.as_theirs("POST", "/v1/keys", {"name": "x", "scope": "admin"}), 201)
    assert made["id"] in {key["id"] for key in await keys_of(t.theirs)}
    assert await keys_of(t.mine) == before


async def key_by_id(t: Tenants) -> None:
    before = await keys_of(t.mine)
    for key in before:
        problem(await t.as_theirs("GET", f"/v1/keys/{key['id']}"), 404)
        problem(await t.as_theirs("DELETE", f"/v1/keys/{key['id']}"), 404)
    assert await keys_of(t.mine) == before
    assert (await t.mine.get("/v1/recipients", Scope.READ)).status_code == 200


async def signed_by_another_account(t: Tenants) -> None:
    # A third organization's own provider accounts sign receipts about my delivery. At their
    # own URL they are verified, but speak only for that organization: they move nothing of
    # mine. At my URL, or the installation's, their signatures do not verify at all.
    intruder = await t.mine.other_org("Intruder")
    for channel, config in [
        ("whatsapp", whatsapp_account("200", "their-secret")),
        ("sms", twilio_account("AC" + "2" * 32, "their-token")),
    ]:
        body_of(await intruder.put(f"/v1/channels/{channel}", config, Scope.ADMIN), 201)
    delivery = t.delivery
    before = await t.my_rows()
    theirs, mine = str(intruder.org_id), str(t.mine.org_id)
    for account, status in [(theirs, 200), (mine, 401), (None, 401)]:
        for response in [
            await post_whatsapp_read(t, delivery, "200", "their-secret", account),
            await post_twilio_read(t, delivery, "AC" + "2" * 32, "their-token", account),
        ]:
            assert response.status_code == status, response.text
    assert await t.my_rows() == before
    # Even my own account cannot move it: the sandbox sent it, not that account. (That the
    # right account's receipt does move a delivery is shown in hostile/test_hostile_webhooks.)
    assert (await post_whatsapp_read(t, delivery, "100", "my-secret", mine)).status_code == 200
    assert await t.my_rows() == before


def _webhook(channel: str, account: str | None) -> str:
    return f"/v1/webhooks/{channel}" + (f"/{account}" if account is not None else "")


async def post_whatsapp_read(
    t: Tenants, delivery: dict[str, Any], number_id: str, secret: str, account: str | None
) -> httpx.Response:
    payload = status_payload(
        number_id, delivery["provider_message_id"], "read", "+27820000000", str(delivery["id"])
    )
    body = webhook_body(payload)
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    return await t.mine.client.post(_webhook("whatsapp", account), content=body, headers=headers)


async def post_twilio_read(
    t: Tenants, delivery: dict[str, Any], sid: str, token: str, account: str | None
) -> httpx.Response:
    path = f"{_webhook('twilio', account)}?delivery={delivery['id']}"
    params = {
        "AccountSid": sid,
        "MessageSid": delivery["provider_message_id"],
        "MessageStatus": "read",
    }
    signature = twilio.signature(token, PUBLIC_URL + path, params)
    return await t.mine.client.post(path, data=params, headers={"X-Twilio-Signature": signature})


# --- Webhook endpoints: each probe makes an endpoint of mine with one delivery (a test event).

_HOOKS = "/v1/webhook-endpoints"


async def _my_endpoint(t: Tenants) -> tuple[str, int]:
    body = {"url": "https://hooks.example.com/mine", "kinds": ["delivery.sent"]}
    made = body_of(await t.mine.post(_HOOKS, body, Scope.ADMIN), 201)
    sent = body_of(await t.mine.post(f"{_HOOKS}/{made['id']}/test", None, Scope.ADMIN), 202)
    return made["id"], int(sent["id"])


async def _my_hooks(t: Tenants, endpoint_id: str) -> list[Any]:
    me = t.mine
    return [
        await every(me, _HOOKS, scope=Scope.ADMIN),
        body_of(await me.get(f"{_HOOKS}/{endpoint_id}", Scope.ADMIN), 200),
        # The worker may be trying the test event meanwhile: which deliveries there are.
        [
            (d["id"], d["webhook_id"], d["kind"])
            for d in await every(me, f"{_HOOKS}/{endpoint_id}/deliveries", scope=Scope.ADMIN)
        ],
    ]


def hook_not_found(method: str, tail: str = "", body: Any = None) -> Probe:
    """Their key on my endpoint (``tail`` may name my delivery as {delivery}) is a 404, and
    nothing of mine changes."""

    async def probe(t: Tenants) -> None:
        endpoint_id, delivery_id = await _my_endpoint(t)
        before = await _my_hooks(t, endpoint_id)
        path = f"{_HOOKS}/{endpoint_id}{tail.format(delivery=delivery_id)}"
        problem(await t.as_theirs(method, path, body), 404)
        assert await _my_hooks(t, endpoint_id) == before

    return probe


async def hooks_listed_and_made(t: Tenants) -> None:
    endpoint_id, _ = await _my_endpoint(t)
    before = await _my_hooks(t, endpoint_id)
    body = {"url": "https://hooks.example.com/theirs", "kinds": ["delivery.read"]}
    theirs = body_of(await t.as_theirs("POST", _HOOKS, body), 201)
    listed = [e["id"] for e in body_of(await t.as_theirs("GET", _HOOKS), 200)["items"]]
    assert theirs["id"] in listed
    assert endpoint_id not in listed
    assert await _my_hooks(t, endpoint_id) == before


def _announcement(t: Tenants) -> str:
    return f"/v1/announcements/{t.announcement}"


EVENT_TYPE = {"title": "Hi {{ recipient.name }}", "body": "{{ data.text }}", "channels": ["email"]}


async def _define(api: Api, key: str, **fields: Any) -> dict[str, Any]:
    response = await api.client.put(
        f"/v1/event-types/{key}", json={**EVENT_TYPE, **fields}, headers=api.headers(Scope.ADMIN)
    )
    assert response.status_code in (200, 201), response.text
    return body_of(await api.get(f"/v1/event-types/{key}"), 200)


async def event_types(t: Tenants) -> None:
    mine = await _define(t.mine, "mine.only")
    # Their PUT of the same key defines their own type; their GET and DELETE reach only it.
    theirs = await t.as_theirs("PUT", "/v1/event-types/mine.only", {**EVENT_TYPE, "title": "T"})
    assert theirs.status_code in (200, 201), theirs.text
    assert body_of(await t.as_theirs("GET", "/v1/event-types/mine.only"), 200)["title"] == "T"
    listed = body_of(await t.as_theirs("GET", "/v1/event-types"), 200)["items"]
    assert mine not in listed
    assert (await t.as_theirs("DELETE", "/v1/event-types/mine.only")).status_code == 204
    problem(await t.as_theirs("GET", "/v1/event-types/mine.only"), 404)
    problem(await t.as_theirs("DELETE", "/v1/event-types/mine.only"), 404)
    assert body_of(await t.mine.get("/v1/event-types/mine.only"), 200) == mine


def _event(event_id: str, kind: str, recipient: str) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "recipient": recipient, "send_at": in_future(3600)}


async def post_events(t: Tenants) -> None:
    await _define(t.mine, "mine.events")
    mine = await t.mine.post("/v1/events", _event("evt-1", "mine.events", "p1"))
    assert mine.status_code in (200, 202), mine.text
    my_messages = mine.json()["messages"]
    await _define(t.theirs, "theirs.events")
    before = await t.my_rows()
    # My type, my people and my event ids mean nothing to them.
    unknown_type = await t.as_theirs("POST", "/v1/events", _event("evt-3", "mine.events", "p3"))
    assert error_locs(problem(unknown_type, 422)) == [["body", "type"]]
    my_person = await t.as_theirs("POST", "/v1/events", _event("evt-4", "theirs.events", "p1"))
    assert error_locs(problem(my_person, 422)) == [["body", "recipient"]]
    own = await t.as_theirs("POST", "/v1/events", _event("evt-1", "theirs.events", "p3"))
    assert own.status_code in (200, 202), own.text
    assert {m["id"] for m in own.json()["messages"]}.isdisjoint(m["id"] for m in my_messages)
    batch = {
        "events": [
            _event("evt-3", "mine.events", "p3"),
            _event("evt-4", "theirs.events", "p1"),
            _event("evt-1", "theirs.events", "p3"),
            {**_event("evt-2", "theirs.events", "p3"), "recipient": {"external_id": "p2"}},
        ]
    }
    results = body_of(await t.as_theirs("POST", "/v1/events/batch", batch), 200)["results"]
    assert [r["status"] for r in results][:3] == ["refused", "refused", "duplicate"]
    assert results[2]["messages"] == own.json()["messages"]
    assert await t.my_rows() == before
    again = body_of(await t.mine.post("/v1/events", _event("evt-1", "mine.events", "p1")), 200)
    assert again["messages"] == my_messages


#: For each operation: a probe, or why it holds no organization's data.
G7: dict[tuple[str, str], Probe | str] = {
    ("GET", "/health"): "liveness of the process; no organization's data",
    ("GET", "/ready"): "readiness of the process; no organization's data",
    ("GET", "/v1/webhooks/whatsapp"): "Meta's handshake: echoes a challenge, reads no rows",
    ("POST", "/v1/webhooks/whatsapp"): signed_by_another_account,
    ("POST", "/v1/webhooks/twilio"): signed_by_another_account,
    ("GET", "/v1/webhooks/whatsapp/{account}"): "Meta's handshake: echoes a challenge",
    ("POST", "/v1/webhooks/whatsapp/{account}"): signed_by_another_account,
    ("POST", "/v1/webhooks/twilio/{account}"): signed_by_another_account,
    ("GET", "/v1/recipients"): list_recipients,
    ("POST", "/v1/recipients/batch"): import_recipients,
    ("PUT", "/v1/recipients/{external_id}"): put_recipient,
    ("GET", "/v1/recipients/{external_id}"): not_found("GET", lambda t: "/v1/recipients/p1"),
    ("DELETE", "/v1/recipients/{external_id}"): not_found("DELETE", lambda t: "/v1/recipients/p1"),
    ("GET", "/v1/recipients/{external_id}/preferences"): not_found(
        "GET", lambda t: "/v1/recipients/p1/preferences"
    ),
    ("PUT", "/v1/recipients/{external_id}/preferences"): not_found(
        "PUT", lambda t: "/v1/recipients/p1/preferences", {"channels": {"email": False}}
    ),
    ("GET", "/v1/announcements"): list_announcements,
    ("POST", "/v1/announcements"): create_announcement,
    ("GET", "/v1/announcements/{message_id}"): not_found("GET", _announcement),
    ("GET", "/v1/announcements/{message_id}/deliveries"): not_found(
        "GET", lambda t: f"{_announcement(t)}/deliveries"
    ),
    ("POST", "/v1/announcements/{message_id}/cancel"): not_found(
        "POST", lambda t: f"/v1/announcements/{t.scheduled}/cancel"
    ),
    ("POST", "/v1/notifications"): create_notification,
    ("GET", "/v1/notifications/{message_id}"): not_found(
        "GET", lambda t: f"/v1/notifications/{t.notification}"
    ),
    ("POST", "/v1/notifications/{message_id}/cancel"): not_found(
        "POST", lambda t: f"/v1/notifications/{t.scheduled_note}/cancel"
    ),
    ("GET", "/v1/deliveries/{delivery_id}"): not_found(
        "GET", lambda t: f"/v1/deliveries/{t.delivery['id']}"
    ),
    ("GET", "/v1/sandbox/messages"): list_sandbox,
    ("GET", "/v1/channels"): list_channels,
    ("GET", "/v1/channels/{channel}"): get_channel,
    ("PUT", "/v1/channels/{channel}"): put_channel,
    ("DELETE", "/v1/channels/{channel}"): not_found("DELETE", lambda t: "/v1/channels/sms"),
    ("GET", "/v1/organization"): get_organization,
    ("PATCH", "/v1/organization"): patch_organization,
    ("GET", "/v1/keys"): list_keys,
    ("POST", "/v1/keys"): create_key,
    ("GET", "/v1/keys/{key_id}"): key_by_id,
    ("DELETE", "/v1/keys/{key_id}"): key_by_id,
    ("GET", "/v1/event-types"): event_types,
    ("PUT", "/v1/event-types/{key}"): event_types,
    ("GET", "/v1/event-types/{key}"): event_types,
    ("DELETE", "/v1/event-types/{key}"): event_types,
    ("POST", "/v1/events"): post_events,
    ("POST", "/v1/events/batch"): post_events,
    ("GET", "/v1/webhook-endpoints"): hooks_listed_and_made,
    ("POST", "/v1/webhook-endpoints"): hooks_listed_and_made,
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): hook_not_found("GET"),
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}"): hook_not_found(
        "PATCH", "", {"enabled": False}
    ),
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): hook_not_found("DELETE"),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): hook_not_found(
        "POST", "/rotate-secret"
    ),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/test"): hook_not_found("POST", "/test"),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries"): hook_not_found("GET", "/deliveries"),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry"): (
        hook_not_found("POST", "/deliveries/{delivery}/retry")
    ),
}


async def documented_operations(api: Api) -> list[tuple[str, str]]:
    spec = body_of(await api.client.get("/openapi.json"), 200)
    return [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


async def test_every_documented_operation_has_a_tenancy_check(api: Api) -> None:
    documented = await documented_operations(api)
    missing = sorted(set(documented) - set(G7))
    assert not missing, f"operations without a G7 check (add them to G7): {missing}"
    stale = sorted(set(G7) - set(documented))
    assert not stale, f"G7 checks for operations the API no longer has: {stale}"


async def test_no_operation_reaches_another_organizations_rows(live_api: Api) -> None:
    t = await tenants(live_api)
    probed = 0
    for method, path in await documented_operations(live_api):
        check = G7[(method, path)]
        if isinstance(check, str):
            continue
        try:
            await check(t)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}: {exc}") from exc
        probed += 1
    assert probed >= 20
