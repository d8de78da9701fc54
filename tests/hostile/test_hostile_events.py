"""Events under attack: another organization's types, ids and people; scopes; data that is
deep, huge or not JSON; heavy templates; oversized batches; duplicates inside a batch and from
a concurrent transaction; and a cost in statements that does not grow with the batch."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text

from bulletin.db import Database, utcnow
from bulletin.events import service
from bulletin.events.models import Event
from bulletin.events.schemas import EventTypeIn
from bulletin.messages.models import Message, MessageRecipient
from bulletin.orgs.keys import Scope
from bulletin.recipients.models import Recipient
from conftest import Api
from support.db_factories import insert_people, new_org, person_row
from support.http import body_of, error_locs, json_headers, problem
from support.http_factories import person_json, post_people
from support.settling import settled_notification
from support.waiting import eventually

TYPE = {"title": "Alert {{ data.ref }}", "body": "{{ recipient.name }}: {{ data.text }}"}


async def define(api: Api, key: str = "alert", **fields: Any) -> None:
    response = await api.client.put(
        f"/v1/event-types/{key}", json={**TYPE, **fields}, headers=api.headers(Scope.ADMIN)
    )
    assert response.status_code in (200, 201), response.text


def alert(event_id: Any, recipient: Any = "p1", **fields: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "alert",
        "recipient": recipient,
        "data": {"ref": "R1", "text": "water off"},
        **fields,
    }


async def messages_of(db: Database, org_id: uuid.UUID) -> list[Message]:
    async with db.read() as session:
        found = await session.execute(select(Message).where(Message.org_id == org_id))
        return list(found.scalars())


async def post_raw(api: Api, path: str, raw: str) -> httpx.Response:
    return await api.client.post(path, content=raw.encode(), headers=json_headers(api))


async def test_another_organizations_types_ids_and_people_are_invisible(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    mine = body_of(await api.post("/v1/events", alert("shared-id")), 202)
    other = await api.other_org()

    # Their type does not exist here, nor do their people.
    unknown_type = problem(await other.post("/v1/events", alert("o-1")), 422)
    assert error_locs(unknown_type) == [["body", "type"]]
    await define(other)
    unknown_person = problem(await other.post("/v1/events", alert("o-2")), 422)
    assert error_locs(unknown_person) == [["body", "recipient"]]

    # The same event id in another organization is another event, not a duplicate.
    theirs_inline = {"external_id": "p1", "name": "Their P1", "email": "their@example.com"}
    theirs = body_of(
        await other.post("/v1/events", alert("shared-id", recipient=theirs_inline)), 202
    )
    assert theirs["status"] == "accepted"
    assert {m["id"] for m in theirs["messages"]}.isdisjoint(m["id"] for m in mine["messages"])
    again = body_of(await other.post("/v1/events", alert("shared-id")), 200)
    assert again["messages"] == theirs["messages"]

    # Their inline "p1" is their own person; mine is unchanged.
    assert body_of(await api.get("/v1/recipients/p1"), 200)["name"] == "Person 1"
    assert body_of(await other.get("/v1/recipients/p1"), 200)["name"] == "Their P1"
    problem(await other.get(f"/v1/notifications/{mine['messages'][0]['id']}"), 404)
    assert len(await messages_of(api.services.db, api.org_id)) == 1
    assert len(await messages_of(api.services.db, other.org_id)) == 1


async def test_types_are_for_admins_events_for_senders(api: Api) -> None:
    await post_people(api, person_json(1))
    problem(await api.client.put("/v1/event-types/alert", json=TYPE, headers=api.headers()), 403)
    await define(api)
    problem(await api.post("/v1/events", alert("r"), scope=Scope.READ), 403)
    problem(await api.post("/v1/events/batch", {"events": [alert("r")]}, scope=Scope.READ), 403)
    bad_key = {"Authorization": "Bearer bk_not_a_real_key"}
    problem(await api.client.post("/v1/events", json=alert("r"), headers=bad_key), 401)
    assert await messages_of(api.services.db, api.org_id) == []


async def test_deep_huge_and_non_json_data_is_refused(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"d": deep}
    wide = {f"k{n}": "x" * 9000 for n in range(8)}
    cases: list[tuple[Any, str]] = [
        (deep, "json_depth"),
        (wide, "json_size"),
        ({"n": 2**60}, "json_integer_range"),
        ({"s": "a\x07b"}, "json_control_character"),
        ({"list": list(range(1001))}, "json_items"),
    ]
    for data, kind in cases:
        body = problem(await api.post("/v1/events", alert(f"d-{kind}", data=data)), 422)
        assert [e["type"] for e in body["errors"]] == [kind]
        assert body["errors"][0]["loc"][:2] == ["body", "data"]
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps(alert("nan")).replace('"water off"', literal)
        body = problem(await post_raw(api, "/v1/events", raw), 422)
        assert [e["type"] for e in body["errors"]] == ["json_not_finite"]
    # Data not an object.
    for data in ([1, 2], "text", None):
        problem(await api.post("/v1/events", alert("not-object", data=data)), 422)
    # A body deeper than any parser should see is refused before it is parsed.
    raw = (
        '{"id": "deep", "type": "alert", "recipient": "p1", "data": '
        + "[" * 5000
        + "]" * 5000
        + "}"
    )
    problem(await post_raw(api, "/v1/events", raw), 422)

    # In a batch, each such event is refused alone.
    items = [alert("good"), alert("bad-nan", data={"x": "NAN"}), alert("bad-deep", data=deep)]
    text_items = json.dumps(items).replace('"NAN"', "NaN")
    answer = body_of(await post_raw(api, "/v1/events/batch", '{"events": ' + text_items + "}"), 200)
    assert [r["status"] for r in answer["results"]] == ["accepted", "refused", "refused"]
    assert answer["results"][1]["problem"]["errors"][0]["type"] == "json_not_finite"
    assert answer["results"][2]["problem"]["errors"][0]["type"] == "json_depth"
    assert len(await messages_of(api.services.db, api.org_id)) == 1


async def test_data_copied_to_many_recipients_is_bounded(api: Api) -> None:
    await post_people(api, *[person_json(n) for n in range(200)])
    await define(api)
    big = {f"k{n}": "x" * 9000 for n in range(7)}  # about 63 kB, within one field's limit
    payload = alert("big", data=big)
    del payload["recipient"]
    payload["recipients"] = [f"p{n}" for n in range(200)]
    refused = problem(await api.post("/v1/events", payload), 422)
    assert [e["type"] for e in refused["errors"]] == ["data_too_large"]
    payload["recipients"] = payload["recipients"][:20]
    body_of(await api.post("/v1/events", payload), 202)


async def test_batches_are_bounded(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    too_many = [alert(f"e{n}") for n in range(1001)]
    body = problem(await api.post("/v1/events/batch", {"events": too_many}), 422)
    assert error_locs(body) == [["body", "events"]]
    problem(await api.post("/v1/events/batch", {"events": []}), 422)
    problem(await api.post("/v1/events/batch", {"events": [], "extra": 1}), 422)

    # 1,000 recipients each is allowed for one event, not for ten of them at once.
    crowd = [{"external_id": f"c{n}"} for n in range(1000)]
    heavy = [{**alert(f"h{n}", recipient=None), "recipients": crowd} for n in range(11)]
    for item in heavy:
        del item["recipient"]
    problem(await api.post("/v1/events/batch", {"events": heavy}), 422)
    assert await messages_of(api.services.db, api.org_id) == []

    full = body_of(await api.post("/v1/events/batch", {"events": too_many[:1000]}), 200)
    assert full["accepted"] == 1000
    assert len(await messages_of(api.services.db, api.org_id)) == 1000


async def test_unreadable_ids_and_items(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    items: list[Any] = [
        alert("x" * 256),
        alert("line\nbreak"),
        alert(12),
        None,
        [alert("in-a-list")],
        alert("ok"),
    ]
    body = body_of(await api.post("/v1/events/batch", {"events": items}), 200)
    assert [r["status"] for r in body["results"]] == ["refused"] * 5 + ["accepted"]
    assert [r["id"] for r in body["results"]] == [None] * 5 + ["ok"]
    assert ["id"] in [e["loc"] for e in body["results"][0]["problem"]["errors"]]


async def test_duplicates_inside_one_batch_make_one_message(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2))
    await define(api)
    items = [alert("twice"), alert("twice", recipient="p2"), alert("twice"), alert("once")]
    body = body_of(await api.post("/v1/events/batch", {"events": items}), 200)
    assert [r["status"] for r in body["results"]] == [
        "accepted",
        "duplicate",
        "duplicate",
        "accepted",
    ]
    first = body["results"][0]["messages"]
    assert body["results"][1]["messages"] == body["results"][2]["messages"] == first
    assert len(await messages_of(api.services.db, api.org_id)) == 2


async def test_inline_recipients_that_are_deactivated_are_refused(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    assert (await api.delete("/v1/recipients/p1")).status_code == 204
    body = problem(
        await api.post("/v1/events", alert("d", recipient={"external_id": "p1", "name": "Back"})),
        422,
    )
    assert [e["type"] for e in body["errors"]] == ["deactivated"]
    shown = body_of(await api.get("/v1/recipients/p1"), 200)
    assert (shown["active"], shown["name"]) == (False, "Person 1")


async def test_heavy_templates_are_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await post_people(api, person_json(1))
    # Fine without data (the check cannot tell), heavy with some, over budget with more.
    await define(api, body="{% for i in range(data.n) %}{{ i }}{% endfor %}")
    over = problem(await api.post("/v1/events", alert("big-n", data={"n": 10**7})), 422)
    assert error_locs(over) == [["body", "data"]]
    assert "budget" in over["errors"][0]["message"]

    # A batch of events each near the budget is answered, each one checked until the call's
    # checking time runs out, the rest accepted and bounded at send time.
    items = [alert(f"n{i}", data={"n": 9_000}) for i in range(300)]
    body = body_of(await api.post("/v1/events/batch", {"events": items}), 200)
    assert body["accepted"] == 300

    # Past that time, events are accepted unchecked; the first one is always checked.
    monkeypatch.setattr(service, "CHECK_SECONDS", 0.0)
    mixed = [alert("m0", data={"n": 10**7}), alert("m1", data={"n": 10**7})]
    body = body_of(await api.post("/v1/events/batch", {"events": mixed}), 200)
    assert [r["status"] for r in body["results"]] == ["refused", "accepted"]


async def test_an_unchecked_heavy_event_fails_its_delivery_only(
    live_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = live_api
    await post_people(api, person_json(1))
    await define(api, body="{% for i in range(data.n) %}{{ i }}{% endfor %}", channels=["email"])
    monkeypatch.setattr(service, "CHECK_SECONDS", 0.0)
    mixed = [alert("light", data={"n": 3}), alert("heavy", data={"n": 10**7})]
    body = body_of(await api.post("/v1/events/batch", {"events": mixed}), 200)
    assert body["accepted"] == 2
    light, heavy = (r["messages"][0]["id"] for r in body["results"])
    [ok] = await settled_notification(api, light)
    [failed] = await settled_notification(api, heavy)
    assert ok["state"] == "sent"
    assert failed["state"] == "failed"
    assert "budget" in (failed["reason"] or "")


# Service level: concurrency and cost ---------------------------------------------------------


async def _org_with_type(db: Database) -> uuid.UUID:
    org = await new_org(db)
    await insert_people(db, org, [person_row(n) for n in range(3)])
    async with db.transaction() as session:
        await service.put_type(session, org, "alert", EventTypeIn.model_validate(TYPE))
    return org


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_concurrent_duplicate_creates_nothing(db: Database) -> None:
    """Two transactions accept the same event id at once: the second waits for the first and
    becomes its duplicate, without a message or an inline recipient of its own."""
    org = await _org_with_type(db)
    second_started = asyncio.Event()

    async def second() -> list[service.Outcome]:
        async with db.transaction() as session:
            second_started.set()
            newcomer = {"external_id": "newcomer", "name": "N"}
            return await service.accept(
                session, org, [alert("race", recipient=newcomer)], region=None, now=utcnow()
            )

    async def someone_waits_for_a_lock() -> bool:
        async with db.read() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        return bool(waiting)

    async with db.transaction() as session:
        [first] = await service.accept(session, org, [alert("race")], region=None, now=utcnow())
        assert first.status == "accepted"
        racing = asyncio.create_task(second())
        await second_started.wait()
        await eventually(someone_waits_for_a_lock, timeout=20)
    [other] = await racing
    assert other.status == "duplicate"
    assert [m.id for m in other.messages] == [m.id for m in first.messages]
    assert other.event_type == "alert"
    assert len(await messages_of(db, org)) == 1
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 1
        newcomer = await session.scalar(
            select(Recipient).where(Recipient.external_id == "newcomer")
        )
        assert newcomer is None
        links = await session.scalar(select(func.count()).select_from(MessageRecipient))
        assert links == 1


def _mixed_batch(size: int, prefix: str) -> list[dict[str, Any]]:
    """Events of every kind the service handles: by id, inline (new and known), several
    recipients, invalid, unknown type, and repeats of an id."""
    items: list[dict[str, Any]] = []
    for n in range(size):
        kind = n % 6
        if kind == 0:
            items.append(alert(f"{prefix}{n}", recipient=f"p{n % 3}"))
        elif kind == 1:
            items.append(alert(f"{prefix}{n}", recipient={"external_id": f"{prefix}new{n}"}))
        elif kind == 2:
            both = alert(f"{prefix}{n}", recipient=None)
            del both["recipient"]
            both["recipients"] = ["p1", {"external_id": "p2", "name": "P2"}]
            items.append(both)
        elif kind == 3:
            items.append(alert(f"{prefix}{n}", type="Not A Key"))
        elif kind == 4:
            items.append(alert(f"{prefix}{n}", type="unknown"))
        else:
            items.append(alert(f"{prefix}{n - 5}"))
    return items


async def test_the_statements_of_a_call_do_not_grow_with_its_size(db: Database) -> None:
    org = await _org_with_type(db)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    async def cost(items: list[dict[str, Any]]) -> int:
        statements.clear()
        sa_event.listen(db.engine.sync_engine, "before_cursor_execute", count)
        try:
            async with db.transaction() as session:
                outcomes = await service.accept(session, org, items, region=None, now=utcnow())
        finally:
            sa_event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        assert {o.status for o in outcomes} == {"accepted", "refused", "duplicate"}
        return len(
            [s for s in statements if not s.lstrip().upper().startswith(("BEGIN", "COMMIT"))]
        )

    small = await cost(_mixed_batch(12, "a"))
    large = await cost(_mixed_batch(600, "b"))
    assert small == large, (small, large)
    # Repeating the whole large batch: every event a duplicate, still the same few statements.
    again = await cost([*_mixed_batch(600, "b"), alert("fresh"), alert("x", type="Bad")])
    assert again <= large


async def test_a_refusal_never_echoes_the_callers_key(api: Api) -> None:
    await post_people(api, person_json(1))
    await define(api)
    secret = api.keys[Scope.SEND]
    leaky = [
        alert("k1", data={secret: "bell\x07"}),
        alert("k2", data={"note": "x" * 10_001, "password": secret}),
    ]
    for path, payload in (("/v1/events/batch", {"events": leaky}), ("/v1/events", leaky[0])):
        response = await api.post(path, payload)
        assert response.status_code in (200, 422), response.text
        assert secret not in response.text
        assert secret[8:30] not in response.text
