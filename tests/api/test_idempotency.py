"""G3 through HTTP: a creating POST with an Idempotency-Key is done once, whatever the retries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from conftest import Api
from support.http import body_of, error_locs, every, json_headers, post_keyed, problem
from support.http_factories import person_json, post_people

ANNOUNCEMENT: dict[str, Any] = {
    "title": "Office closed",
    "body": "On Monday",
    "audience": {"all": True},
    "send_at": "2030-05-01T09:00:00+02:00",
}


async def test_three_concurrent_identical_posts_create_one_message(api: Api) -> None:
    answers = await asyncio.gather(
        *(post_keyed(api, "/v1/announcements", ANNOUNCEMENT, "k-1") for _ in range(3))
    )
    accepted = [a for a in answers if a.status_code == 202]
    in_progress = [a for a in answers if a.status_code != 202]
    assert accepted, [a.status_code for a in answers]
    for answer in in_progress:
        problem(answer, 409)  # the twin was still running: anything else is a defect

    ids = {a.json()["id"] for a in accepted}
    assert len(ids) == 1
    [message_id] = ids
    assert {a.headers["Location"] for a in accepted} == {f"/v1/announcements/{message_id}"}
    originals = [a for a in accepted if "Idempotent-Replayed" not in a.headers]
    replays = [a for a in accepted if "Idempotent-Replayed" in a.headers]
    assert len(originals) == 1
    assert all(a.headers["Idempotent-Replayed"] == "true" for a in replays)

    # Once the first has finished, a retry is a replay, never a 409 and never a new message.
    retry = await post_keyed(api, "/v1/announcements", ANNOUNCEMENT, "k-1")
    assert body_of(retry, 202) == originals[0].json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["Location"] == f"/v1/announcements/{message_id}"

    listed = await every(api, "/v1/announcements")
    assert [item["id"] for item in listed] == [message_id]


async def test_a_sequential_replay_returns_the_same_status_and_body(api: Api) -> None:
    first = await post_keyed(api, "/v1/announcements", ANNOUNCEMENT, "k-2")
    original = body_of(first, 202)
    assert "Idempotent-Replayed" not in first.headers

    # The message changes afterwards; the replay is still the first answer, and does nothing.
    body_of(await api.post(f"/v1/announcements/{original['id']}/cancel"), 200)
    again = await post_keyed(api, "/v1/announcements", ANNOUNCEMENT, "k-2")
    assert again.status_code == first.status_code
    assert again.json() == original
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"

    # The same JSON written differently (key order, spacing) is the same request.
    reordered = json.dumps(dict(reversed(list(ANNOUNCEMENT.items()))), indent=2)
    rewritten = await api.client.post(
        "/v1/announcements",
        content=reordered,
        headers={**json_headers(api), "Idempotency-Key": "k-2"},
    )
    assert body_of(rewritten, 202) == original
    assert rewritten.headers["Idempotent-Replayed"] == "true"

    listed = await every(api, "/v1/announcements")
    assert [(item["id"], item["state"]) for item in listed] == [(original["id"], "cancelled")]


async def test_the_same_key_with_another_body_is_a_422(api: Api) -> None:
    first = body_of(await post_keyed(api, "/v1/announcements", ANNOUNCEMENT, "k-4"), 202)
    other = {**ANNOUNCEMENT, "title": "Office open after all"}
    body = problem(await post_keyed(api, "/v1/announcements", other, "k-4"), 422)
    assert error_locs(body) == [["header", "Idempotency-Key"]]

    listed = await every(api, "/v1/announcements")
    assert [(item["id"], item["title"]) for item in listed] == [(first["id"], "Office closed")]


async def test_the_same_key_on_another_endpoint_is_a_422(api: Api) -> None:
    await post_people(api, person_json(1))
    notification = {"title": "Hi", "body": "There", "recipient": "p1"}
    body_of(await post_keyed(api, "/v1/notifications", notification, "k-5"), 202)

    body = problem(await post_keyed(api, "/v1/announcements", ANNOUNCEMENT, "k-5"), 422)
    assert error_locs(body) == [["header", "Idempotency-Key"]]
    assert await every(api, "/v1/announcements") == []


async def test_batch_import_honours_the_key(api: Api) -> None:
    rows = {"recipients": [person_json(1), person_json(2)]}
    first = await post_keyed(api, "/v1/recipients/batch", rows, "k-6")
    assert body_of(first, 200) == {"created": 2, "updated": 0}

    # Run twice, the import would answer {"created": 0, "updated": 2}; a replay does not run.
    again = await post_keyed(api, "/v1/recipients/batch", rows, "k-6")
    assert body_of(again, 200) == {"created": 2, "updated": 0}
    assert again.headers["Idempotent-Replayed"] == "true"

    changed = {"recipients": [person_json(1), person_json(3)]}
    problem(await post_keyed(api, "/v1/recipients/batch", changed, "k-6"), 422)
    problem(await api.get("/v1/recipients/p3"), 404)


async def test_without_a_key_every_post_creates(api: Api) -> None:
    answers: list[httpx.Response] = [
        await api.post("/v1/announcements", ANNOUNCEMENT) for _ in range(2)
    ]
    ids = [body_of(a, 202)["id"] for a in answers]
    assert len(set(ids)) == 2
    assert all("Idempotent-Replayed" not in a.headers for a in answers)


async def test_keys_belong_to_one_organization(api: Api) -> None:
    other = await api.other_org()
    mine = body_of(await post_keyed(api, "/v1/announcements", ANNOUNCEMENT, "shared"), 202)
    theirs_answer = await post_keyed(other, "/v1/announcements", ANNOUNCEMENT, "shared")
    theirs = body_of(theirs_answer, 202)
    assert "Idempotent-Replayed" not in theirs_answer.headers
    assert theirs["id"] != mine["id"]
    assert [item["id"] for item in await every(other, "/v1/announcements")] == [theirs["id"]]
