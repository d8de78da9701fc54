"""Bad input is a 4xx problem (RFC 9457) that says what is wrong, and never a 500."""

from __future__ import annotations

from typing import Any

from conftest import Api
from support.http import body_of, cursor_after, error_locs, json_headers, post_keyed, problem
from support.http_factories import in_future, person_json, post_announcement, post_people

ANNOUNCEMENT: dict[str, Any] = {"title": "Hello", "body": "Body", "audience": {"all": True}}


async def test_naive_send_at_is_a_422(api: Api) -> None:
    await post_people(api, person_json(1))
    for path, payload in [
        ("/v1/announcements", {**ANNOUNCEMENT, "send_at": "2030-05-01T09:00:00"}),
        (
            "/v1/notifications",
            {"title": "t", "body": "b", "recipient": "p1", "send_at": "2030-05-01T09:00"},
        ),
    ]:
        body = problem(await api.post(path, payload), 422)
        assert error_locs(body) == [["body", "send_at"]], path
    for send_at in [
        "tomorrow at nine",
        "2030-13-01T09:00:00Z",
        "0001-01-01T00:00:00+14:00",  # parses, but is before the first representable instant
        "9999-12-31T23:59:59-14:00",  # parses, but is after the last one
    ]:
        payload = {**ANNOUNCEMENT, "send_at": send_at}
        body = problem(await api.post("/v1/announcements", payload), 422)
        assert error_locs(body) == [["body", "send_at"]], send_at
    assert body_of(await api.get("/v1/announcements"), 200)["items"] == []


async def test_unparseable_phones_and_unknown_time_zones_are_a_422(api: Api) -> None:
    for payload, loc, quoted in [
        ({"phone": "not a phone"}, ["body", "phone"], "not a phone"),
        ({"phone": "12345"}, ["body", "phone"], "12345"),
        # Well-formed, but no such number exists.
        ({"phone": "+44 7700 900123"}, ["body", "phone"], "+44 7700 900123"),
        ({"whatsapp": "call me"}, ["body", "whatsapp"], "call me"),
        ({"timezone": "Mars/Olympus_Mons"}, ["body", "timezone"], "Mars/Olympus_Mons"),
        ({"timezone": "SAST"}, ["body", "timezone"], "SAST"),
    ]:
        body = problem(await api.put("/v1/recipients/r1", payload), 422)
        assert error_locs(body) == [loc], payload
        assert quoted in body["errors"][0]["message"], payload
    other_fields: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"email": "not-an-email"}, ["body", "email"]),
        ({"locale": "english please"}, ["body", "locale"]),
        ({"groups": [""]}, ["body", "groups", 0]),
        ({"groups": "sales"}, ["body", "groups"]),
        ({"attributes": ["not", "an", "object"]}, ["body", "attributes"]),
        ({"name": "x" * 256}, ["body", "name"]),
    ]
    for bad, where in other_fields:
        body = problem(await api.put("/v1/recipients/r1", bad), 422)
        assert where in error_locs(body), (bad, error_locs(body))
    problem(await api.get("/v1/recipients/r1"), 404)


async def test_unknown_fields_in_any_body_are_a_422(api: Api) -> None:
    await post_people(api, person_json(1))
    cases: list[tuple[str, str, dict[str, Any], list[str | int]]] = [
        ("PUT", "/v1/recipients/p2", {"nickname": "Bob"}, ["body", "nickname"]),
        (
            "POST",
            "/v1/recipients/batch",
            {"recipients": [person_json(2)], "mode": "merge"},
            ["body", "mode"],
        ),
        (
            "PUT",
            "/v1/recipients/p1/preferences",
            {"channels": {}, "dnd": True},
            ["body", "dnd"],
        ),
        (
            "PUT",
            "/v1/recipients/p1/preferences",
            {"quiet_hours": {"start": "21:00", "end": "08:00", "days": "weekdays"}},
            ["body", "quiet_hours", "days"],
        ),
        ("POST", "/v1/announcements", {**ANNOUNCEMENT, "priority": "high"}, ["body", "priority"]),
        (
            "POST",
            "/v1/announcements",
            {**ANNOUNCEMENT, "audience": {"all": True, "except": ["p1"]}},
            ["body", "audience", "except"],
        ),
        (
            "POST",
            "/v1/notifications",
            {"title": "t", "body": "b", "recipient": "p1", "cc": "p2"},
            ["body", "cc"],
        ),
    ]
    for method, path, payload, loc in cases:
        response = await api.client.request(method, path, json=payload, headers=api.headers())
        body = problem(response, 422)
        assert loc in error_locs(body), (path, payload, error_locs(body))
    problem(await api.get("/v1/recipients/p2"), 404)
    assert body_of(await api.get("/v1/announcements"), 200)["items"] == []


async def test_malformed_json_is_a_422_everywhere(api: Api) -> None:
    await post_people(api, person_json(1))
    for method, path in [
        ("PUT", "/v1/recipients/p1"),
        ("POST", "/v1/recipients/batch"),
        ("PUT", "/v1/recipients/p1/preferences"),
        ("POST", "/v1/announcements"),
        ("POST", "/v1/notifications"),
    ]:
        for raw in [b'{"title": ', b"not json at all", b"", b"[1, 2]", b"null"]:
            response = await api.client.request(
                method,
                path,
                content=raw,
                headers=json_headers(api),
            )
            problem(response, 422)
    assert body_of(await api.get("/v1/recipients/p1"), 200)["name"] == "Person 1"


async def test_invalid_message_fields_are_a_422(api: Api) -> None:
    cases: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"audience": {"all": True, "groups": ["a"]}}, ["body", "audience"]),
        ({"audience": {}}, ["body", "audience"]),
        ({"audience": {"all": False}}, ["body", "audience", "all"]),
        ({"audience": {"groups": []}}, ["body", "audience", "groups"]),
        ({"channels": ["pigeon"]}, ["body", "channels", 0]),
        ({"channels": ["email", "email"]}, ["body", "channels"]),
        ({"channels": []}, ["body", "channels"]),
        ({"routing": "some"}, ["body", "routing"]),
        ({"category": "Not A Category!"}, ["body", "category"]),
        ({"title": ""}, ["body", "title"]),
        ({"urgent": "very"}, ["body", "urgent"]),
    ]
    for change, loc in cases:
        body = problem(await api.post("/v1/announcements", {**ANNOUNCEMENT, **change}), 422)
        assert loc in error_locs(body), (change, error_locs(body))
    missing = problem(await api.post("/v1/announcements", {"title": "t", "body": "b"}), 422)
    assert error_locs(missing) == [["body", "audience"]]
    assert body_of(await api.get("/v1/announcements"), 200)["items"] == []


async def test_an_audience_naming_unknown_recipients_is_a_422_listing_them(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2))
    audience = {"recipients": ["p1", "ghost-a", "p2", "ghost-b"]}
    body = problem(await api.post("/v1/announcements", {**ANNOUNCEMENT, "audience": audience}), 422)
    assert error_locs(body) == [
        ["body", "audience", "recipients", 1],
        ["body", "audience", "recipients", 3],
    ]
    assert "ghost-a" in body["errors"][0]["message"]
    assert "ghost-b" in body["errors"][1]["message"]
    assert "2 recipient(s)" in body["detail"]
    assert body_of(await api.get("/v1/announcements"), 200)["items"] == []


async def test_a_bad_cursor_is_a_422_on_every_list(api: Api) -> None:
    await post_people(api, person_json(1))
    message_id = await post_announcement(api, send_at=in_future(3600))
    lists = [
        "/v1/recipients",
        "/v1/announcements",
        f"/v1/announcements/{message_id}/deliveries",
        "/v1/sandbox/messages",
    ]
    garbage = [
        "!!!",
        "bm90IGpzb24",  # base64 of "not json"
        cursor_after(None),
        cursor_after(True),
        cursor_after(10**30),  # a number no row id can reach
        "x" * 201,
    ]
    for path in lists:
        for cursor in garbage:
            body = problem(await api.get(path, params={"cursor": cursor}), 422)
            assert any(loc[:2] == ["query", "cursor"] for loc in error_locs(body)), (path, cursor)
    # A cursor of another list is not a cursor of this one.
    body = problem(await api.get("/v1/announcements", params={"cursor": cursor_after(5)}), 422)
    assert error_locs(body) == [["query", "cursor"]]
    body = problem(await api.get("/v1/recipients", params={"cursor": cursor_after("p1")}), 422)
    assert error_locs(body) == [["query", "cursor"]]


async def test_bad_list_parameters_are_a_422(api: Api) -> None:
    message_id = await post_announcement(api, send_at=in_future(3600))
    for path, params, loc in [
        ("/v1/recipients", {"limit": "0"}, ["query", "limit"]),
        ("/v1/recipients", {"limit": "1001"}, ["query", "limit"]),
        ("/v1/announcements", {"limit": "many"}, ["query", "limit"]),
        ("/v1/recipients", {"include_inactive": "perhaps"}, ["query", "include_inactive"]),
        (f"/v1/announcements/{message_id}/deliveries", {"state": "lost"}, ["query", "state"]),
        ("/v1/sandbox/messages", {"message_id": "not-a-uuid"}, ["query", "message_id"]),
    ]:
        body = problem(await api.get(path, params=params), 422)
        assert error_locs(body) == [loc], (path, params)


async def test_a_non_uuid_message_id_in_the_path_is_a_422(api: Api) -> None:
    for method, path in [
        ("GET", "/v1/announcements/42"),
        ("GET", "/v1/announcements/not-a-uuid/deliveries"),
        ("POST", "/v1/announcements/not-a-uuid/cancel"),
        ("GET", "/v1/notifications/not-a-uuid"),
        ("POST", "/v1/notifications/not-a-uuid/cancel"),
    ]:
        response = await api.client.request(method, path, headers=api.headers())
        body = problem(response, 422)
        assert error_locs(body) == [["path", "message_id"]], path
    for delivery_id in ["abc", "0", "-1", str(2**63)]:
        body = problem(await api.get(f"/v1/deliveries/{delivery_id}"), 422)
        assert error_locs(body) == [["path", "delivery_id"]], delivery_id


async def test_a_bad_idempotency_key_is_a_422(api: Api) -> None:
    for key in ["x" * 256, "tab\there"]:
        response = await post_keyed(api, "/v1/announcements", ANNOUNCEMENT, key)
        body = problem(response, 422)
        assert any(loc[:2] == ["header", "Idempotency-Key"] for loc in error_locs(body)), key
    assert body_of(await api.get("/v1/announcements"), 200)["items"] == []


async def test_unknown_routes_and_methods_are_problems_too(api: Api) -> None:
    problem(await api.get("/v1/nothing-here"), 404)
    response = await api.client.delete("/v1/announcements", headers=api.headers())
    problem(response, 405)


async def test_control_characters_are_refused_not_stored(api: Api) -> None:
    """PostgreSQL cannot store NUL: it must be a 422 on both backends, never a 500."""
    for path, payload in [
        ("/v1/recipients/r1", {"name": "a\u0000b"}),
        ("/v1/recipients/r1", {"attributes": {"note": "\u0000"}}),
    ]:
        problem(await api.put(path, payload), 422)
    problem(await api.put("/v1/recipients/r%001", {"name": "x"}), 422)
    problem(await api.get("/v1/recipients", params={"group": "a\u0000"}), 422)
    problem(await api.post("/v1/announcements", {**ANNOUNCEMENT, "title": "a\u0000"}), 422)
    listed = body_of(await api.get("/v1/recipients?include_inactive=true"), 200)
    assert listed["items"] == []
