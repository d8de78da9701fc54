"""Recipients and their preferences through HTTP: create, replace, deactivate, list, import."""

from __future__ import annotations

from typing import Any

from conftest import Api
from support.http import body_of, error_locs, problem, walk
from support.http_factories import person_json, post_people


async def test_put_creates_then_replaces_the_whole_recipient(api: Api) -> None:
    created = await api.put(
        "/v1/recipients/emp-1",
        {
            "name": "Ann",
            "email": "ann@example.com",
            "phone": "+27 82 555 0123",
            "timezone": "Africa/Johannesburg",
            "locale": "en-ZA",
            "groups": ["sales", "site-a"],
            "attributes": {"employee_no": 42},
        },
    )
    first = body_of(created, 201)
    assert first["external_id"] == "emp-1"
    assert first["phone"] == "+27825550123"
    assert first["whatsapp"] == "+27825550123", "whatsapp defaults to the phone"
    assert sorted(first["groups"]) == ["sales", "site-a"]
    assert first["attributes"] == {"employee_no": 42}
    assert first["active"] is True

    replaced = body_of(
        await api.put(
            "/v1/recipients/emp-1",
            {"name": "Ann B", "whatsapp": "+44 7911 123456", "groups": ["support"]},
        ),
        200,
    )
    # A PUT replaces: every field it leaves out is cleared.
    assert replaced["name"] == "Ann B"
    assert replaced["email"] is None
    assert replaced["phone"] is None
    assert replaced["whatsapp"] == "+447911123456"
    assert replaced["timezone"] is None
    assert replaced["groups"] == ["support"]
    assert replaced["attributes"] == {}
    assert replaced["created_at"] == first["created_at"]

    fetched = body_of(await api.get("/v1/recipients/emp-1"), 200)
    assert fetched == replaced


async def test_phone_numbers_are_stored_in_e164(api: Api) -> None:
    for n, written in enumerate(["+27 82 555 0123", "(+27) 82-555-0123", "+27825550123"]):
        body = body_of(await api.put(f"/v1/recipients/r{n}", {"phone": written}), 201)
        assert body["phone"] == "+27825550123", written
        assert body["whatsapp"] == "+27825550123", written
    # An explicit WhatsApp number is kept apart from the phone.
    body = body_of(
        await api.put(
            "/v1/recipients/r9", {"phone": "+27 82 555 0123", "whatsapp": "+49 151 23456789"}
        ),
        201,
    )
    assert (body["phone"], body["whatsapp"]) == ("+27825550123", "+4915123456789")


async def test_body_external_id_must_match_the_path(api: Api) -> None:
    ok = await api.put("/v1/recipients/r1", {"external_id": "r1", "name": "Same"})
    assert body_of(ok, 201)["name"] == "Same"
    body = problem(await api.put("/v1/recipients/r2", {"external_id": "other"}), 422)
    assert ["body", "external_id"] in error_locs(body)
    problem(await api.get("/v1/recipients/r2"), 404)


async def test_unknown_recipient_is_a_404_problem(api: Api) -> None:
    body = problem(await api.get("/v1/recipients/nobody"), 404)
    assert "nobody" in body["detail"]
    problem(await api.delete("/v1/recipients/nobody"), 404)
    problem(await api.get("/v1/recipients/nobody/preferences"), 404)
    problem(await api.put("/v1/recipients/nobody/preferences", {"categories": {}}), 404)
    # None of these created the recipient.
    problem(await api.get("/v1/recipients/nobody"), 404)


async def test_delete_deactivates_and_put_reactivates(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2))
    deleted = await api.delete("/v1/recipients/p1")
    assert deleted.status_code == 204
    assert deleted.content == b""

    assert body_of(await api.get("/v1/recipients/p1"), 200)["active"] is False
    listed = body_of(await api.get("/v1/recipients"), 200)
    assert [r["external_id"] for r in listed["items"]] == ["p2"]
    with_inactive = body_of(await api.get("/v1/recipients?include_inactive=true"), 200)
    assert {r["external_id"]: r["active"] for r in with_inactive["items"]} == {
        "p1": False,
        "p2": True,
    }

    # Deleting twice is harmless; the recipient stays inactive.
    assert (await api.delete("/v1/recipients/p1")).status_code == 204
    assert body_of(await api.get("/v1/recipients/p1"), 200)["active"] is False

    again = body_of(await api.put("/v1/recipients/p1", {"email": "p1@example.com"}), 200)
    assert again["active"] is True
    listed = body_of(await api.get("/v1/recipients"), 200)
    assert sorted(r["external_id"] for r in listed["items"]) == ["p1", "p2"]


async def test_list_walks_every_recipient_once_with_a_cursor(api: Api) -> None:
    await post_people(api, *(person_json(n) for n in range(7)))
    pages = await walk(api, "/v1/recipients", limit=2)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    seen = [r["external_id"] for page in pages for r in page]
    assert sorted(seen) == sorted(f"p{n}" for n in range(7))
    assert len(set(seen)) == len(seen)


async def test_list_filters_by_group_across_pages(api: Api) -> None:
    await post_people(
        api,
        person_json(0, groups=["a"]),
        person_json(1, groups=["b"]),
        person_json(2, groups=["a", "b"]),
        person_json(3, groups=["b"]),
        person_json(4, groups=["a"]),
        person_json(5),
    )
    in_a = [r for page in await walk(api, "/v1/recipients", 2, {"group": "a"}) for r in page]
    in_b = [r for page in await walk(api, "/v1/recipients", 2, {"group": "b"}) for r in page]
    assert [r["external_id"] for r in in_a] == ["p0", "p2", "p4"]
    assert [r["external_id"] for r in in_b] == ["p1", "p2", "p3"]
    assert all("a" in r["groups"] for r in in_a)
    none = body_of(await api.get("/v1/recipients", params={"group": "nobody"}), 200)
    assert none == {"items": [], "next_cursor": None}


async def test_batch_import_counts_created_and_updated(api: Api) -> None:
    first = await api.post(
        "/v1/recipients/batch", {"recipients": [person_json(1), person_json(2), person_json(3)]}
    )
    assert body_of(first, 200) == {"created": 3, "updated": 0}

    second = await api.post(
        "/v1/recipients/batch",
        {
            "recipients": [
                person_json(2, name="Renamed"),
                person_json(3),
                person_json(4, phone="+27825550123"),
            ]
        },
    )
    assert body_of(second, 200) == {"created": 1, "updated": 2}
    assert body_of(await api.get("/v1/recipients/p2"), 200)["name"] == "Renamed"
    assert body_of(await api.get("/v1/recipients/p4"), 200)["whatsapp"] == "+27825550123"


async def test_batch_with_bad_rows_lists_every_one_and_writes_nothing(api: Api) -> None:
    await post_people(api, person_json(9, name="Before"))
    rows: list[dict[str, Any]] = [
        person_json(0),
        person_json(1, phone="not a phone"),
        person_json(2),
        person_json(3, timezone="Mars/Olympus_Mons"),
        person_json(4, nickname="Bob"),
        {"name": "No id"},
        person_json(6, email="not-an-email"),
        person_json(9, name="After"),
    ]
    body = problem(await api.post("/v1/recipients/batch", {"recipients": rows}), 422)

    by_row: dict[int, set[str | int]] = {}
    for error in body["errors"]:
        assert error["loc"][:2] == ["body", "recipients"], error
        assert error["message"], error
        by_row.setdefault(error["loc"][2], set()).add(error["loc"][3])
    assert by_row == {
        1: {"phone"},
        3: {"timezone"},
        4: {"nickname"},
        5: {"external_id"},
        6: {"email"},
    }
    assert "5 of 8" in body["detail"]

    for good in ("p0", "p2"):
        problem(await api.get(f"/v1/recipients/{good}"), 404)
    assert body_of(await api.get("/v1/recipients/p9"), 200)["name"] == "Before"
    listed = body_of(await api.get("/v1/recipients?include_inactive=true"), 200)
    assert [r["external_id"] for r in listed["items"]] == ["p9"]


async def test_batch_with_a_repeated_external_id_is_refused(api: Api) -> None:
    rows = [person_json(1), person_json(2), person_json(1, name="Twin")]
    body = problem(await api.post("/v1/recipients/batch", {"recipients": rows}), 422)
    assert error_locs(body) == [["body", "recipients", 2, "external_id"]]
    assert "0" in body["errors"][0]["message"], "the error names the row it repeats"
    for written in ("p1", "p2"):
        problem(await api.get(f"/v1/recipients/{written}"), 404)


async def test_batch_takes_one_to_10000_rows(api: Api) -> None:
    problem(await api.post("/v1/recipients/batch", {"recipients": []}), 422)
    too_many = [{"external_id": f"r{n}"} for n in range(10_001)]
    body = problem(await api.post("/v1/recipients/batch", {"recipients": too_many}), 422)
    assert error_locs(body) == [["body", "recipients"]]
    problem(await api.get("/v1/recipients/r0"), 404)

    exactly = await api.post("/v1/recipients/batch", {"recipients": too_many[:10_000]})
    assert body_of(exactly, 200) == {"created": 10_000, "updated": 0}
    assert body_of(await api.get("/v1/recipients/r9999"), 200)["active"] is True
    problem(await api.get("/v1/recipients/r10000"), 404)


async def test_default_preferences_enable_only_channels_with_an_address(api: Api) -> None:
    await post_people(
        api,
        person_json(1),
        person_json(2, phone="+27825550123"),
        {"external_id": "p3", "whatsapp": "+4915123456789"},
    )
    expected = {
        "p1": {"whatsapp": False, "email": True, "sms": False},
        "p2": {"whatsapp": True, "email": True, "sms": True},
        "p3": {"whatsapp": True, "email": False, "sms": False},
    }
    for external_id, channels in expected.items():
        prefs = body_of(await api.get(f"/v1/recipients/{external_id}/preferences"), 200)
        assert prefs == {"channels": channels, "categories": {}, "quiet_hours": None}


async def test_put_preferences_then_get_them(api: Api) -> None:
    await post_people(api, person_json(1, phone="+27825550123"))
    wanted = {
        "channels": {"whatsapp": False},
        "categories": {"social": False, "payroll": True},
        "quiet_hours": {"start": "21:00", "end": "08:00"},
    }
    put = body_of(await api.put("/v1/recipients/p1/preferences", wanted), 200)
    expected = {
        "channels": {"whatsapp": False, "email": True, "sms": True},
        "categories": {"social": False, "payroll": True},
        "quiet_hours": {"start": "21:00", "end": "08:00"},
    }
    assert put == expected
    assert body_of(await api.get("/v1/recipients/p1/preferences"), 200) == expected

    # Preferences belong to the person: replacing their profile keeps them.
    await api.put("/v1/recipients/p1", {"email": "new@example.com", "phone": "+27825550123"})
    assert body_of(await api.get("/v1/recipients/p1/preferences"), 200) == expected

    # A PUT replaces the preferences as a whole.
    cleared = body_of(await api.put("/v1/recipients/p1/preferences", {}), 200)
    assert cleared == {
        "channels": {"whatsapp": True, "email": True, "sms": True},
        "categories": {},
        "quiet_hours": None,
    }


async def test_invalid_preferences_are_refused(api: Api) -> None:
    await post_people(api, person_json(1))
    before = body_of(await api.get("/v1/recipients/p1/preferences"), 200)
    cases: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, ["body", "quiet_hours", "start"]),
        ({"quiet_hours": {"start": "9pm", "end": "08:00"}}, ["body", "quiet_hours", "start"]),
        ({"quiet_hours": {"start": "21:00", "end": "21:00"}}, ["body", "quiet_hours"]),
        ({"quiet_hours": {"start": "21:00"}}, ["body", "quiet_hours", "end"]),
        ({"channels": {"pigeon": True}}, ["body", "channels", "pigeon"]),
        ({"channels": {"email": "maybe"}}, ["body", "channels", "email"]),
        ({"categories": {"Not A Category!": False}}, ["body", "categories"]),
    ]
    for payload, loc in cases:
        body = problem(await api.put("/v1/recipients/p1/preferences", payload), 422)
        locs = error_locs(body)
        assert any(found[: len(loc)] == loc for found in locs), (payload, locs)
    assert body_of(await api.get("/v1/recipients/p1/preferences"), 200) == before
