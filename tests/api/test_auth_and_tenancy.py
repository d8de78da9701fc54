"""Who may call what: API keys and scopes, and G7 (one organization never sees another's)."""

from __future__ import annotations

from typing import Any

from api_helpers import (
    add_people,
    announce,
    body_of,
    deliveries_of,
    every,
    in_future,
    notify,
    person,
    problem,
    sandbox_of,
    wait_for_state,
)
from bulletin.orgs.keys import Scope
from conftest import Api

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
    await add_people(api, person(1))
    message_id = await announce(api, send_at=in_future(3600))
    read = Scope.READ
    for response in [
        await api.post("/v1/announcements", ANNOUNCEMENT, scope=read),
        await api.post(
            "/v1/notifications", {"title": "t", "body": "b", "recipient": "p1"}, scope=read
        ),
        await api.post(f"/v1/announcements/{message_id}/cancel", scope=read),
        await api.post("/v1/recipients/batch", {"recipients": [person(2)]}, scope=read),
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
    await add_people(api, person(1, name="Mine"))
    delivered = await announce(api)
    notification = await notify(api, "p1")
    await wait_for_state(api, f"/v1/announcements/{delivered}", "completed")
    await wait_for_state(api, f"/v1/notifications/{notification}", "completed")
    [delivery] = await deliveries_of(api, delivered)
    waiting = await announce(api, send_at=in_future(3600))
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
    await add_people(api, person(1), person(2))
    await add_people(other, person(3), person(4, groups=["staff"]))
    mine = await announce(api)
    theirs = await announce(other)
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
    assert sorted(d["recipient"] for d in await deliveries_of(api, mine)) == ["p1", "p2"]
    assert sorted(d["recipient"] for d in await deliveries_of(other, theirs)) == ["p3", "p4"]
