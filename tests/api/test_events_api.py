"""Events through HTTP: one event or a batch becomes notifications made from its type, an id
seen before is a duplicate that creates nothing, inline recipients are created or updated."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import func, select

from bulletin.events.models import Event
from bulletin.messages.models import Message
from bulletin.orgs.keys import Scope
from conftest import Api
from support.http import body_of, error_locs, post_keyed, problem, sandbox_of
from support.http_factories import in_future, person_json, post_people
from support.settling import settled_notification

SHIPPED = {
    "title": "Order {{ data.order.id }} shipped",
    "body": "Hello {{ recipient.name }}, {{ data['items'] | length }} item(s) on the way.",
    "channels": ["email"],
}


async def define(api: Api, key: str = "order.shipped", **fields: Any) -> dict[str, Any]:
    response = await api.client.put(
        f"/v1/event-types/{key}", json={**SHIPPED, **fields}, headers=api.headers(Scope.ADMIN)
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def event(event_id: str, recipient: Any = "p1", **fields: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "order.shipped",
        "recipient": recipient,
        "data": {"order": {"id": "A-17"}, "items": [1, 2]},
        **fields,
    }


async def message_count(api: Api) -> int:
    async with api.services.db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(Message).where(Message.org_id == api.org_id)
        )
    return int(count or 0)


async def event_count(api: Api) -> int:
    async with api.services.db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(Event).where(Event.org_id == api.org_id)
        )
    return int(count or 0)


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_an_event_becomes_a_notification_with_the_types_texts(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api, category="orders", urgent=True, channels=["email", "sms"])
    before = dt.datetime.now(dt.UTC)
    response = await api.post("/v1/events", event("e-1"))
    after = dt.datetime.now(dt.UTC)
    body = body_of(response, 202)
    assert (body["id"], body["type"], body["status"]) == ("e-1", "order.shipped", "accepted")
    [message] = body["messages"]
    assert response.headers["Location"] == f"/v1/notifications/{message['id']}"
    assert message["kind"] == "notification"
    assert message["recipient"] == "p1"
    assert message["state"] == "scheduled"
    assert message["title"] == SHIPPED["title"]
    assert message["body"] == SHIPPED["body"]
    assert message["channels"] == ["email", "sms"]
    assert (message["category"], message["urgent"]) == ("orders", True)
    assert before - dt.timedelta(seconds=1) <= instant(message["send_at"]) <= after

    shown = body_of(await api.get(f"/v1/notifications/{message['id']}"), 200)
    assert shown["recipient"] == "p1"
    async with api.services.db.read() as session:
        stored = await session.get(Message, uuid.UUID(message["id"]))
    assert stored is not None
    assert stored.data == {"order": {"id": "A-17"}, "items": [1, 2]}


async def test_the_notification_is_rendered_with_the_data_and_delivered(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1))
    await define(api)
    body = body_of(await api.post("/v1/events", event("e-1")), 202)
    message_id = body["messages"][0]["id"]
    deliveries = await settled_notification(api, message_id)
    assert [(d["channel"], d["state"]) for d in deliveries] == [("email", "sent")]
    [sent] = await sandbox_of(api, message_id)
    assert sent["title"] == "Order A-17 shipped"
    assert sent["body"] == "Hello Person 1, 2 item(s) on the way."


async def test_an_id_seen_before_answers_the_original_and_creates_nothing(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2))
    await define(api)
    first = body_of(await api.post("/v1/events", event("same")), 202)
    assert await message_count(api) == 1

    # Whatever the body says: other data, another recipient, a type that does not exist, or
    # no valid event at all.
    for repeat in (
        event("same", data={"order": {"id": "B-2"}}),
        event("same", recipient="p2"),
        event("same", type="no.such.type"),
        {"id": "same"},
        {"id": "same", "recipient": 12, "surprise": True},
    ):
        response = await api.post("/v1/events", repeat)
        again = body_of(response, 200)
        assert again["status"] == "duplicate"
        assert again["type"] == "order.shipped"
        assert again["messages"] == first["messages"]
        assert "Idempotent-Replayed" not in response.headers
    assert await message_count(api) == 1
    assert await event_count(api) == 1


async def test_several_recipients_get_a_notification_each(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2), person_json(3))
    await define(api)
    payload = event("many", recipient=None)
    del payload["recipient"]
    payload["recipients"] = ["p3", "p1", {"external_id": "p2"}, "p1"]
    body = body_of(await api.post("/v1/events", payload), 202)
    assert [m["recipient"] for m in body["messages"]] == ["p3", "p1", "p2"]
    assert len({m["id"] for m in body["messages"]}) == 3
    assert "Location" not in (await api.post("/v1/events", payload)).headers
    assert await message_count(api) == 3


async def test_inline_recipients_are_created_or_updated_with_the_event(api: Api) -> None:
    await post_people(api, person_json(1, phone="+27821234567", attributes={"site": "A"}))
    await define(api, title="{{ recipient.attributes.site }}: order {{ data.order.id }}")
    # The property-alert flow: title data, user id, email and phone in one call.
    new = {
        "external_id": "u-9",
        "name": "Nomsa",
        "email": "nomsa@example.com",
        "phone": "+27 82 765 4321",
    }
    body_of(await api.post("/v1/events", event("alert-1", recipient=new)), 202)
    created = body_of(await api.get("/v1/recipients/u-9"), 200)
    assert (created["name"], created["email"]) == ("Nomsa", "nomsa@example.com")
    assert created["phone"] == created["whatsapp"] == "+27827654321"
    assert created["active"] is True

    # Fields given replace the stored ones; the others are kept.
    changed = {"external_id": "p1", "email": "new@example.com"}
    body_of(await api.post("/v1/events", event("alert-2", recipient=changed)), 202)
    updated = body_of(await api.get("/v1/recipients/p1"), 200)
    assert updated["email"] == "new@example.com"
    assert (updated["name"], updated["phone"]) == ("Person 1", "+27821234567")
    assert updated["attributes"] == {"site": "A"}

    # A refused event changes nobody: here its data cannot fill the template.
    await define(api, title="{{ data.order.id + 1 }}")
    untouched = {"external_id": "p1", "name": "Should not stick"}
    problem(await api.post("/v1/events", event("alert-3", recipient=untouched)), 422)
    assert body_of(await api.get("/v1/recipients/p1"), 200)["name"] == "Person 1"
    problem(
        await api.post(
            "/v1/events", event("alert-4", recipient={"external_id": "ghost-2"}, type="nope")
        ),
        422,
    )
    problem(await api.get("/v1/recipients/ghost-2"), 404)


async def test_refused_events_name_the_field(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    unknown_type = problem(await api.post("/v1/events", event("x1", type="nope")), 422)
    assert error_locs(unknown_type) == [["body", "type"]]
    assert "nope" in unknown_type["detail"]

    unknown_person = problem(await api.post("/v1/events", event("x2", recipient="ghost")), 422)
    assert error_locs(unknown_person) == [["body", "recipient"]]
    assert "ghost" in unknown_person["errors"][0]["message"]

    listed = event("x3")
    del listed["recipient"]
    listed["recipients"] = ["p1", "ghost", {"external_id": "p9", "phone": "not a number"}]
    several = problem(await api.post("/v1/events", listed), 422)
    assert error_locs(several) == [["body", "recipients", 2, "phone"]]
    listed["recipients"] = ["p1", "ghost"]
    several = problem(await api.post("/v1/events", listed), 422)
    assert error_locs(several) == [["body", "recipients", 1]]

    both = event("x4", recipients=["p1"])
    assert error_locs(problem(await api.post("/v1/events", both), 422)) == [["body"]]
    neither = event("x5")
    del neither["recipient"]
    assert error_locs(problem(await api.post("/v1/events", neither), 422)) == [["body"]]
    bad_inline = event("x6", recipient={"external_id": "p1", "email": "not-an-email"})
    assert error_locs(problem(await api.post("/v1/events", bad_inline), 422)) == [
        ["body", "recipient", "email"]
    ]
    no_id = event("")
    assert ["body", "id"] in error_locs(problem(await api.post("/v1/events", no_id), 422))
    assert await message_count(api) == 0
    assert await event_count(api) == 0
    # Refused ids are not kept: the same id, now valid, is accepted.
    body_of(await api.post("/v1/events", event("x1")), 202)


async def test_templates_are_rendered_with_the_events_data(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api, body="Total {{ data.total + 1 }}")
    missing = problem(await api.post("/v1/events", event("t1")), 422)
    assert error_locs(missing) == [["body", "data"]]
    assert "data.total" in missing["errors"][0]["message"]
    wrong = problem(await api.post("/v1/events", event("t2", data={"total": "ten"})), 422)
    assert error_locs(wrong) == [["body", "data"]]
    body_of(await api.post("/v1/events", event("t3", data={"total": 9})), 202)


async def test_send_at_and_the_types_delay(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api, delay="2h")
    before = dt.datetime.now(dt.UTC)
    delayed = body_of(await api.post("/v1/events", event("d1")), 202)["messages"][0]
    after = dt.datetime.now(dt.UTC)
    due = instant(delayed["send_at"])
    assert before + dt.timedelta(hours=2) - dt.timedelta(seconds=1) <= due
    assert due <= after + dt.timedelta(hours=2)

    at = body_of(
        await api.post("/v1/events", event("d2", send_at="2031-02-03T04:05:06+02:00")), 202
    )["messages"][0]
    assert instant(at["send_at"]) == dt.datetime(2031, 2, 3, 2, 5, 6, tzinfo=dt.UTC)
    naive = problem(await api.post("/v1/events", event("d3", send_at="2031-02-03T04:05:06")), 422)
    assert error_locs(naive) == [["body", "send_at"]]


async def test_a_type_change_applies_to_later_events_only(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api, title="Version one")
    early = body_of(await api.post("/v1/events", event("v1")), 202)["messages"][0]
    await define(api, title="Version two")
    late = body_of(await api.post("/v1/events", event("v2")), 202)["messages"][0]
    assert body_of(await api.get(f"/v1/notifications/{early['id']}"), 200)["title"] == "Version one"
    assert body_of(await api.get(f"/v1/notifications/{late['id']}"), 200)["title"] == "Version two"
    async with api.services.db.read() as session:
        versions = dict((await session.execute(select(Event.client_id, Event.type_version))).all())
    assert versions == {"v1": 1, "v2": 2}


async def test_a_batch_answers_each_event(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2))
    await define(api)
    body_of(await api.post("/v1/events", event("old")), 202)
    events: list[Any] = [
        event("b0"),
        event("b1", type="nope"),
        event("old", recipient="p2"),
        "not an object",
        event("b4", recipient="p2"),
        event("b0", recipient="p2"),
        {"id": "b6", "type": "order.shipped", "recipient": "p1", "data": {"x": "\x00"}},
    ]
    body = body_of(await api.post("/v1/events/batch", {"events": events}), 200)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(7))
    assert [r["status"] for r in results] == [
        "accepted",
        "refused",
        "duplicate",
        "refused",
        "accepted",
        "duplicate",
        "refused",
    ]
    assert (body["accepted"], body["duplicates"], body["refused"]) == (2, 2, 3)
    assert [r["id"] for r in results] == ["b0", "b1", "old", None, "b4", "b0", "b6"]
    assert results[1]["problem"]["errors"] == [
        {"loc": ["type"], "message": "no event type 'nope'", "type": "unknown"}
    ]
    assert results[3]["problem"]["title"]
    assert results[6]["problem"]["errors"][0]["type"] == "text_nul"
    # Duplicates answer the first event's messages: one stored before, one earlier in the batch.
    assert results[5]["messages"] == results[0]["messages"]
    assert results[5]["messages"][0]["recipient"] == "p1"
    assert results[2]["messages"][0]["recipient"] == "p1"
    assert results[0]["type"] == results[2]["type"] == "order.shipped"
    assert "messages" not in results[1]
    assert await message_count(api) == 3
    assert await event_count(api) == 3


async def test_in_a_batch_a_refused_event_does_not_claim_its_id(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    events = [event("z", recipient="ghost"), event("z"), event("z", type="nope")]
    body = body_of(await api.post("/v1/events/batch", {"events": events}), 200)
    assert [r["status"] for r in body["results"]] == ["refused", "accepted", "duplicate"]
    assert body["results"][2]["messages"] == body["results"][1]["messages"]


async def test_an_idempotency_key_is_honoured_too(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    first = await post_keyed(api, "/v1/events", event("k1"), "key-1")
    replay = await post_keyed(api, "/v1/events", event("k1"), "key-1")
    assert body_of(replay, 202) == body_of(first, 202)
    assert replay.headers["Idempotent-Replayed"] == "true"
    batch = {"events": [event("k2")]}
    once = await post_keyed(api, "/v1/events/batch", batch, "key-2")
    twice = await post_keyed(api, "/v1/events/batch", batch, "key-2")
    assert body_of(twice, 200) == body_of(once, 200)
    assert await message_count(api) == 2


async def test_scopes_sender_and_admin_send_reader_does_not(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    problem(await api.post("/v1/events", event("s0"), scope=Scope.READ), 403)
    problem(await api.post("/v1/events/batch", {"events": [event("s0")]}, scope=Scope.READ), 403)
    problem(await api.client.post("/v1/events", json=event("s0")), 401)
    body_of(await api.post("/v1/events", event("s1"), scope=Scope.SEND), 202)
    body_of(await api.post("/v1/events", event("s2"), scope=Scope.ADMIN), 202)
    batch = await api.post("/v1/events/batch", {"events": [event("s3")]}, scope=Scope.SEND)
    assert body_of(batch, 200)["accepted"] == 1
    assert await message_count(api) == 3


async def test_a_scheduled_event_notification_can_be_cancelled(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    message = body_of(await api.post("/v1/events", event("c1", send_at=in_future(3600))), 202)
    message_id = message["messages"][0]["id"]
    cancelled = body_of(await api.post(f"/v1/notifications/{message_id}/cancel"), 200)
    assert cancelled["message"]["state"] == "cancelled"
