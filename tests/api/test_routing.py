"""G2 through HTTP: each person is reached once (or once per channel with routing "all"),
on a channel they can and want to be reached on, and the rest is suppressed with a reason.
"""

from __future__ import annotations

from typing import Any

from conftest import Api
from support.http import body_of, get_deliveries, sandbox_of
from support.http_factories import person_json, post_announcement, post_people
from support.settling import wait_for_state

# Someone reachable on every channel, each on its own address.
EVERYWHERE: dict[str, Any] = {
    "external_id": "all3",
    "email": "all3@example.com",
    "phone": "+27825550123",
    "whatsapp": "+4915123456789",
}
ADDRESS = {"email": "all3@example.com", "sms": "+27825550123", "whatsapp": "+4915123456789"}


async def delivered(api: Api, message_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The completed announcement and its deliveries."""
    done = await wait_for_state(api, f"/v1/announcements/{message_id}", "completed")
    return done, await get_deliveries(api, message_id)


async def test_a_person_in_two_targeted_groups_gets_one_delivery(live_api: Api) -> None:
    api = live_api
    await post_people(
        api,
        person_json(1, groups=["sales", "site-a"]),
        person_json(2, groups=["sales"]),
        person_json(3, groups=["site-a"]),
        person_json(4, groups=["support"]),
    )
    message_id = await post_announcement(api, {"groups": ["sales", "site-a"]})
    done, deliveries = await delivered(api, message_id)

    assert sorted(d["recipient"] for d in deliveries) == ["p1", "p2", "p3"]
    assert done["audience_size"] == 3
    recorded = await sandbox_of(api, message_id)
    assert sorted(r["recipient"] for r in recorded) == ["p1", "p2", "p3"]


async def test_routing_first_reaches_a_person_once_on_the_first_channel(live_api: Api) -> None:
    api = live_api
    await post_people(api, EVERYWHERE)
    message_id = await post_announcement(
        api, channels=["sms", "whatsapp", "email"], routing="first"
    )
    _, deliveries = await delivered(api, message_id)

    assert [(d["recipient"], d["channel"], d["state"]) for d in deliveries] == [
        ("all3", "sms", "sent")
    ]
    recorded = await sandbox_of(api, message_id)
    assert [(r["channel"], r["address"]) for r in recorded] == [("sms", ADDRESS["sms"])]

    # The default order puts WhatsApp first.
    default = await post_announcement(api)
    _, deliveries = await delivered(api, default)
    assert [d["channel"] for d in deliveries] == ["whatsapp"]
    assert [r["channel"] for r in await sandbox_of(api, default)] == ["whatsapp"]


async def test_routing_all_reaches_a_person_once_per_channel(live_api: Api) -> None:
    api = live_api
    await post_people(api, EVERYWHERE, person_json(2))
    message_id = await post_announcement(api, routing="all")
    done, deliveries = await delivered(api, message_id)

    mine = {d["channel"]: d for d in deliveries if d["recipient"] == "all3"}
    assert len([d for d in deliveries if d["recipient"] == "all3"]) == 3
    assert {channel: d["state"] for channel, d in mine.items()} == dict.fromkeys(ADDRESS, "sent")
    recorded = await sandbox_of(api, message_id)
    assert sorted((r["channel"], r["address"]) for r in recorded if r["recipient"] == "all3") == (
        sorted(ADDRESS.items())
    )

    # p2 has only an email address: the other channels are suppressed, saying why.
    theirs = {d["channel"]: d for d in deliveries if d["recipient"] == "p2"}
    assert theirs["email"]["state"] == "sent"
    for channel in ("whatsapp", "sms"):
        assert theirs[channel]["state"] == "suppressed"
        assert theirs[channel]["reason"].startswith("no ")
    assert [r["channel"] for r in recorded if r["recipient"] == "p2"] == ["email"]
    assert done["deliveries"]["sent"] == 4
    assert done["deliveries"]["suppressed"] == 2


async def test_an_opted_out_category_is_suppressed_with_a_reason(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1), person_json(2))
    prefs = await api.put("/v1/recipients/p1/preferences", {"categories": {"social": False}})
    body_of(prefs, 200)

    message_id = await post_announcement(api, category="social")
    done, deliveries = await delivered(api, message_id)
    by_person = {d["recipient"]: d for d in deliveries}
    assert by_person["p1"]["state"] == "suppressed"
    assert "social" in by_person["p1"]["reason"]
    assert by_person["p2"]["state"] == "sent"
    assert [r["recipient"] for r in await sandbox_of(api, message_id)] == ["p2"]
    assert (done["deliveries"]["sent"], done["deliveries"]["suppressed"]) == (1, 1)

    # Other categories still reach them.
    other = await post_announcement(api, category="payroll")
    _, deliveries = await delivered(api, other)
    assert {d["recipient"]: d["state"] for d in deliveries} == {"p1": "sent", "p2": "sent"}


async def test_a_deactivated_person_in_a_group_gets_nothing(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1, groups=["staff"]), person_json(2, groups=["staff"]))
    assert (await api.delete("/v1/recipients/p2")).status_code == 204

    message_id = await post_announcement(api, {"groups": ["staff"]})
    done, deliveries = await delivered(api, message_id)
    assert [d["recipient"] for d in deliveries] == ["p1"]
    assert done["audience_size"] == 1
    assert [r["recipient"] for r in await sandbox_of(api, message_id)] == ["p1"]

    # Named explicitly, they get a suppressed delivery that says why, and no message.
    named = await post_announcement(api, {"recipients": ["p2"]})
    _, deliveries = await delivered(api, named)
    assert [(d["state"], d["reason"]) for d in deliveries] == [
        ("suppressed", "recipient deactivated")
    ]
    assert await sandbox_of(api, named) == []


async def test_turning_whatsapp_off_makes_routing_first_use_email(live_api: Api) -> None:
    api = live_api
    await post_people(api, EVERYWHERE)
    body_of(
        await api.put("/v1/recipients/all3/preferences", {"channels": {"whatsapp": False}}), 200
    )

    message_id = await post_announcement(api, channels=["whatsapp", "email", "sms"])
    _, deliveries = await delivered(api, message_id)
    assert [(d["channel"], d["state"]) for d in deliveries] == [("email", "sent")]
    recorded = await sandbox_of(api, message_id)
    assert [(r["channel"], r["address"]) for r in recorded] == [("email", ADDRESS["email"])]
