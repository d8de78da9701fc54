"""Announcements and notifications through HTTP: accept, read, list, deliver, cancel."""

from __future__ import annotations

import datetime as dt

from conftest import Api
from support.http import DELIVERY_STATES, body_of, get_deliveries, problem, sandbox_of, walk
from support.http_factories import in_future, notify, person_json, post_announcement, post_people
from support.settling import wait_for_state


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_post_announcement_is_accepted_with_its_location(api: Api) -> None:
    response = await api.post(
        "/v1/announcements",
        {
            "title": "Fire drill",
            "body": "At 10:00 today",
            "audience": {"groups": ["site-a"]},
            "send_at": "2030-05-01T09:00:00+02:00",
        },
    )
    body = body_of(response, 202)
    assert response.headers["Location"] == f"/v1/announcements/{body['id']}"
    assert body["state"] == "scheduled"
    assert body["kind"] == "announcement"
    assert instant(body["send_at"]) == dt.datetime(2030, 5, 1, 7, 0, tzinfo=dt.UTC)
    assert body["channels"] == ["whatsapp", "email", "sms"]
    assert body["routing"] == "first"
    assert body["audience"]["groups"] == ["site-a"]

    shown = body_of(await api.get(response.headers["Location"]), 200)
    assert shown["id"] == body["id"]
    assert shown["state"] == "scheduled"
    assert shown["title"] == "Fire drill"
    assert shown["deliveries"] == dict.fromkeys(DELIVERY_STATES, 0)

    # Without send_at, it is due now.
    before = dt.datetime.now(dt.UTC)
    now = await api.post(
        "/v1/announcements", {"title": "t", "body": "b", "audience": {"all": True}}
    )
    after = dt.datetime.now(dt.UTC)
    assert before - dt.timedelta(seconds=1) <= instant(body_of(now, 202)["send_at"]) <= after


async def test_list_announcements_newest_first_across_pages(api: Api) -> None:
    created = [
        await post_announcement(api, title=f"n{n}", send_at=in_future(3600)) for n in range(5)
    ]
    pages = await walk(api, "/v1/announcements", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [item["id"] for page in pages for item in page]
    assert listed == list(reversed(created))
    assert [item["title"] for page in pages for item in page] == [f"n{n}" for n in range(4, -1, -1)]


async def test_an_announcement_is_delivered_and_recorded(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1), person_json(2), person_json(3))
    before = dt.datetime.now(dt.UTC)
    message_id = await post_announcement(api, title="Payday", body="Friday")

    done = await wait_for_state(api, f"/v1/announcements/{message_id}", "completed")
    after = dt.datetime.now(dt.UTC)
    assert done["deliveries"] == {**dict.fromkeys(DELIVERY_STATES, 0), "sent": 3}
    assert done["audience_size"] == 3
    assert before <= dt.datetime.fromisoformat(done["completed_at"]) <= after

    sent = await get_deliveries(api, message_id, state="sent")
    assert sorted(d["recipient"] for d in sent) == ["p1", "p2", "p3"]
    assert {d["channel"] for d in sent} == {"email"}
    assert {d["message_id"] for d in sent} == {message_id}
    assert await get_deliveries(api, message_id, state="pending") == []
    pages = await walk(api, f"/v1/announcements/{message_id}/deliveries", limit=2)
    assert [len(page) for page in pages] == [2, 1]

    detail = body_of(await api.get(f"/v1/deliveries/{sent[0]['id']}"), 200)
    assert detail["state"] == "sent"
    assert detail["attempts"] == 1
    assert detail["provider"] == "sandbox"
    assert before <= dt.datetime.fromisoformat(detail["sent_at"]) <= after
    states = [event["state"] for event in detail["events"]]
    assert states[-1] == "sent"
    assert "sending" in states[:-1]

    recorded = await sandbox_of(api, message_id)
    assert len(recorded) == 3
    by_delivery = {d["id"]: d for d in sent}
    for item in recorded:
        assert item["message_id"] == message_id
        assert by_delivery[item["delivery_id"]]["recipient"] == item["recipient"]
        assert item["channel"] == "email"
        assert item["address"] == f"{item['recipient']}@example.com"
        assert (item["title"], item["body"]) == ("Payday", "Friday")
        assert item["attempts"] == 1
    assert sorted(item["recipient"] for item in recorded) == ["p1", "p2", "p3"]


async def test_cancel_a_scheduled_announcement(api: Api) -> None:
    await post_people(api, person_json(1))
    message_id = await post_announcement(api, send_at=in_future(3600))
    before = dt.datetime.now(dt.UTC)
    cancelled = body_of(await api.post(f"/v1/announcements/{message_id}/cancel"), 200)
    after = dt.datetime.now(dt.UTC)
    assert cancelled["cancelled"] == 0, "nothing was resolved yet, so no delivery existed"
    assert cancelled["in_flight"] == 0
    assert cancelled["message"]["id"] == message_id
    assert cancelled["message"]["state"] == "cancelled"

    shown = body_of(await api.get(f"/v1/announcements/{message_id}"), 200)
    assert shown["state"] == "cancelled"
    assert before <= dt.datetime.fromisoformat(shown["cancelled_at"]) <= after

    again = problem(await api.post(f"/v1/announcements/{message_id}/cancel"), 409)
    assert "cancelled" in again["detail"]


async def test_a_cancelled_announcement_is_never_sent(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1))
    cancelled = await post_announcement(api, send_at=in_future(0.3))
    body_of(await api.post(f"/v1/announcements/{cancelled}/cancel"), 200)
    # A later announcement to the same person: once it is done, the cancelled one's time
    # has passed too, and the engine has had every chance to send it.
    later = await post_announcement(api, send_at=in_future(0.4))
    await wait_for_state(api, f"/v1/announcements/{later}", "completed")

    assert len(await sandbox_of(api, later)) == 1
    assert await sandbox_of(api, cancelled) == []
    # Its audience may have been resolved just ahead of its send_at (before the cancel): any
    # delivery it has was cancelled with it, never sent.
    assert {d["state"] for d in await get_deliveries(api, cancelled)} <= {"cancelled"}
    assert body_of(await api.get(f"/v1/announcements/{cancelled}"), 200)["state"] == "cancelled"


async def test_cancelling_a_completed_announcement_is_a_409(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1))
    message_id = await post_announcement(api)
    await wait_for_state(api, f"/v1/announcements/{message_id}", "completed")
    body = problem(await api.post(f"/v1/announcements/{message_id}/cancel"), 409)
    assert "finished" in body["detail"]
    shown = body_of(await api.get(f"/v1/announcements/{message_id}"), 200)
    assert shown["state"] == "completed"
    assert shown["deliveries"]["sent"] == 1


async def test_a_notification_is_delivered(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1), person_json(2))
    response = await api.post(
        "/v1/notifications", {"title": "Your payslip", "body": "is ready", "recipient": "p1"}
    )
    body = body_of(response, 202)
    assert response.headers["Location"] == f"/v1/notifications/{body['id']}"
    assert body["kind"] == "notification"
    assert body["recipient"] == "p1"
    assert body["state"] == "scheduled"

    done = await wait_for_state(api, response.headers["Location"], "completed")
    assert [(d["channel"], d["state"]) for d in done["deliveries"]] == [("email", "sent")]
    detail = body_of(await api.get(f"/v1/deliveries/{done['deliveries'][0]['id']}"), 200)
    assert detail["recipient"] == "p1"

    recorded = await sandbox_of(api, body["id"])
    assert [(r["recipient"], r["channel"]) for r in recorded] == [("p1", "email")]
    assert recorded[0]["delivery_id"] == done["deliveries"][0]["id"]


async def test_a_notification_to_an_unknown_recipient_is_a_422(api: Api) -> None:
    response = await api.post(
        "/v1/notifications", {"title": "t", "body": "b", "recipient": "ghost"}
    )
    body = problem(response, 422)
    assert [e["loc"] for e in body["errors"]] == [["body", "recipient"]]
    assert "ghost" in body["errors"][0]["message"]


async def test_cancel_a_scheduled_notification(api: Api) -> None:
    await post_people(api, person_json(1))
    message_id = await notify(api, "p1", send_at=in_future(3600))
    cancelled = body_of(await api.post(f"/v1/notifications/{message_id}/cancel"), 200)
    assert cancelled["message"]["state"] == "cancelled"
    assert cancelled["message"]["recipient"] == "p1"
    shown = body_of(await api.get(f"/v1/notifications/{message_id}"), 200)
    assert shown["state"] == "cancelled"
    problem(await api.post(f"/v1/notifications/{message_id}/cancel"), 409)


async def test_announcement_and_notification_ids_do_not_cross(api: Api) -> None:
    await post_people(api, person_json(1))
    announcement = await post_announcement(api, send_at=in_future(3600))
    notification = await notify(api, "p1", send_at=in_future(3600))
    unknown = "01900000-0000-7000-8000-000000000000"

    for path in [f"/v1/notifications/{announcement}", f"/v1/notifications/{unknown}"]:
        problem(await api.get(path), 404)
        problem(await api.post(f"{path}/cancel"), 404)
    for path in [f"/v1/announcements/{notification}", f"/v1/announcements/{unknown}"]:
        problem(await api.get(path), 404)
        problem(await api.get(f"{path}/deliveries"), 404)
        problem(await api.post(f"{path}/cancel"), 404)

    # The wrong-kind cancels changed nothing.
    assert body_of(await api.get(f"/v1/announcements/{announcement}"), 200)["state"] == "scheduled"
    assert body_of(await api.get(f"/v1/notifications/{notification}"), 200)["state"] == "scheduled"
    listed = body_of(await api.get("/v1/announcements"), 200)
    assert [item["id"] for item in listed["items"]] == [announcement]
    problem(await api.get("/v1/deliveries/123456"), 404)
