"""Event types through HTTP: define, replace (versions), read, list, delete, template checks."""

from __future__ import annotations

from typing import Any

from bulletin.orgs.keys import Scope
from conftest import Api
from support.http import body_of, error_locs, problem, walk


def order_shipped(**fields: Any) -> dict[str, Any]:
    return {
        "title": "Order {{ data.order.id }} shipped",
        "body": "Hello {{ recipient.name }}, it arrives on {{ data.order.eta }}.",
        **fields,
    }


async def test_put_creates_then_replaces_with_a_new_version(api: Api) -> None:
    created = await api.client.put(
        "/v1/event-types/order.shipped",
        json=order_shipped(
            description="When a parcel leaves the warehouse",
            channels=["sms", "email"],
            category="orders",
            delay="10m",
            fallback_after="1h",
            overrides={"sms": {"body": "Order {{ data.order.id }} is on its way"}},
        ),
        headers=api.headers(Scope.ADMIN),
    )
    first = body_of(created, 201)
    assert first["key"] == "order.shipped"
    assert first["version"] == 1
    assert first["channels"] == ["sms", "email"]
    assert first["routing"] == "first"
    assert first["category"] == "orders"
    assert (first["delay"], first["fallback_after"]) == ("10m", "1h")
    assert first["overrides"] == {"sms": {"body": "Order {{ data.order.id }} is on its way"}}
    assert first["description"] == "When a parcel leaves the warehouse"

    replaced = await api.client.put(
        "/v1/event-types/order.shipped",
        json=order_shipped(title="Shipped: {{ data.order.id }}", urgent=True),
        headers=api.headers(Scope.ADMIN),
    )
    second = body_of(replaced, 200)
    assert second["version"] == 2
    assert second["title"] == "Shipped: {{ data.order.id }}"
    assert second["urgent"] is True
    # A replacement is whole: what it leaves out goes back to the defaults.
    assert second["delay"] is None
    assert second["overrides"] == {}
    assert second["channels"] == ["whatsapp", "email", "sms"]
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] >= first["updated_at"]

    shown = body_of(await api.get("/v1/event-types/order.shipped"), 200)
    assert shown == second


async def test_list_by_key_across_pages_and_delete(api: Api) -> None:
    for key in ("c", "a.b", "b-1", "a_z", "d"):
        response = await api.client.put(
            f"/v1/event-types/{key}", json=order_shipped(), headers=api.headers(Scope.ADMIN)
        )
        body_of(response, 201)
    pages = await walk(api, "/v1/event-types", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [item["key"] for page in pages for item in page] == ["a.b", "a_z", "b-1", "c", "d"]

    deleted = await api.client.delete("/v1/event-types/c", headers=api.headers(Scope.ADMIN))
    assert deleted.status_code == 204
    problem(await api.get("/v1/event-types/c"), 404)
    again = await api.client.delete("/v1/event-types/c", headers=api.headers(Scope.ADMIN))
    problem(again, 404)
    listed = await walk(api, "/v1/event-types", limit=50)
    assert [item["key"] for page in listed for item in page] == ["a.b", "a_z", "b-1", "d"]
    # Defined again, it starts over at version 1.
    redefined = await api.client.put(
        "/v1/event-types/c", json=order_shipped(), headers=api.headers(Scope.ADMIN)
    )
    assert body_of(redefined, 201)["version"] == 1


async def test_scopes_admin_defines_reader_reads(api: Api) -> None:
    for scope in (Scope.SEND, Scope.READ):
        refused = await api.client.put(
            "/v1/event-types/x", json=order_shipped(), headers=api.headers(scope)
        )
        problem(refused, 403)
    body_of(
        await api.client.put(
            "/v1/event-types/x", json=order_shipped(), headers=api.headers(Scope.ADMIN)
        ),
        201,
    )
    body_of(await api.get("/v1/event-types/x", Scope.READ), 200)
    body_of(await api.get("/v1/event-types", Scope.READ), 200)
    for scope in (Scope.SEND, Scope.READ):
        problem(await api.client.delete("/v1/event-types/x", headers=api.headers(scope)), 403)
    problem(await api.client.get("/v1/event-types"), 401)


async def test_templates_are_checked_when_defined(api: Api) -> None:
    async def put(payload: dict[str, Any], key: str = "t") -> dict[str, Any]:
        response = await api.client.put(
            f"/v1/event-types/{key}", json=payload, headers=api.headers(Scope.ADMIN)
        )
        return problem(response, 422)

    broken = await put(order_shipped(body="{% if data.x %}never closed"))
    assert error_locs(broken) == [["body", "body"]]
    assert "syntax" in broken["errors"][0]["message"]

    typo = await put(order_shipped(title="Hi {{ recipient.nmae }}"))
    assert error_locs(typo) == [["body", "title"]]
    assert "nmae" in typo["errors"][0]["message"]

    override = await put(order_shipped(overrides={"email": {"html": "<p>{{ nope }}</p>"}}))
    assert error_locs(override) == [["body", "overrides", "email", "html"]]

    heavy = await put(order_shipped(body="{% for i in range(10**6) %}x{% endfor %}"))
    assert "budget" in heavy["errors"][0]["message"]

    # A calculation with data that only an event can bring is accepted now.
    fine = await api.client.put(
        "/v1/event-types/t",
        json=order_shipped(body="Total: {{ data.total + 1 }}"),
        headers=api.headers(Scope.ADMIN),
    )
    body_of(fine, 201)


async def test_bad_definitions_are_422(api: Api) -> None:
    cases: list[tuple[str, dict[str, Any], list[str | int]]] = [
        ("Upper", order_shipped(), ["path", "key"]),
        ("-dash-first", order_shipped(), ["path", "key"]),
        ("k" * 65, order_shipped(), ["path", "key"]),
        ("ok", order_shipped(delay="31d"), ["body", "delay"]),
        ("ok", order_shipped(delay="0m"), ["body", "delay"]),
        ("ok", order_shipped(channels=[]), ["body", "channels"]),
        ("ok", order_shipped(routing="all", fallback_after="5m"), ["body"]),
        ("ok", order_shipped(send_at="2030-01-01T00:00:00Z"), ["body", "send_at"]),
        ("ok", {"title": "no body"}, ["body", "body"]),
    ]
    for key, payload, loc in cases:
        response = await api.client.put(
            f"/v1/event-types/{key}", json=payload, headers=api.headers(Scope.ADMIN)
        )
        assert loc in error_locs(problem(response, 422)), (key, payload)
    problem(await api.get("/v1/event-types/ok"), 404)


async def test_another_organizations_types_are_invisible(api: Api) -> None:
    body_of(
        await api.client.put(
            "/v1/event-types/shared", json=order_shipped(), headers=api.headers(Scope.ADMIN)
        ),
        201,
    )
    other = await api.other_org()
    problem(await other.get("/v1/event-types/shared"), 404)
    problem(
        await other.client.delete("/v1/event-types/shared", headers=other.headers(Scope.ADMIN)), 404
    )
    assert body_of(await other.get("/v1/event-types"), 200)["items"] == []
    # The same key is the other organization's own type, from version 1.
    own = await other.client.put(
        "/v1/event-types/shared",
        json=order_shipped(title="Theirs"),
        headers=other.headers(Scope.ADMIN),
    )
    assert body_of(own, 201)["version"] == 1
    mine = body_of(await api.get("/v1/event-types/shared"), 200)
    assert mine["title"] == order_shipped()["title"]
    assert mine["version"] == 1
