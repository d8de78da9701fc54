"""People described inline (by events): merged into the recipients of an organization.

What is given replaces, what is absent stays, deactivated people stay as they are and are
refused, bad numbers are refused without saving anything of theirs, and a call costs a fixed
number of statements per 1,000 people, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import event

from bulletin.db import Database, utcnow
from bulletin.errors import FieldError
from bulletin.recipients import merge_repository, repository, service
from bulletin.recipients.models import Recipient
from bulletin.recipients.schemas import InlineRecipient, PreferencesIn
from support.db_factories import insert_people, new_org, person_row

pytestmark = pytest.mark.usefixtures("backend")


def inline(external_id: str, **fields: Any) -> InlineRecipient:
    return InlineRecipient.model_validate({"external_id": external_id, **fields})


async def merge(
    db: Database, org: uuid.UUID, people: list[InlineRecipient], region: str | None = None
) -> tuple[dict[str, int], dict[str, list[FieldError]]]:
    async with db.transaction() as session:
        return await service.merge_inline(session, org, people, region)


async def stored(db: Database, org: uuid.UUID, external_id: str) -> Recipient | None:
    async with db.read() as session:
        return await repository.get(session, org, external_id)


async def test_new_people_are_created_active_with_what_they_give(db: Database) -> None:
    org = await new_org(db)
    ids, refused = await merge(
        db,
        org,
        [
            inline("a", name="Ann", phone="082 555 0100", attributes={"site": "Durban"}),
            inline("b", email="B@Example.COM", whatsapp="+27825550199", locale="en-ZA"),
            inline("c"),
        ],
        region="ZA",
    )
    assert refused == {}
    assert set(ids) == {"a", "b", "c"}
    a, b, c = [await stored(db, org, x) for x in "abc"]
    assert a is not None
    assert b is not None
    assert c is not None
    assert (a.id, a.name, a.phone, a.whatsapp, a.attributes, a.active) == (
        ids["a"],
        "Ann",
        "+27825550100",
        "+27825550100",  # the WhatsApp number of a new person defaults to the phone
        {"site": "Durban"},
        True,
    )
    assert (b.email, b.phone, b.whatsapp, b.locale) == (
        "B@example.com",
        None,
        "+27825550199",
        "en-ZA",
    )
    assert (c.name, c.email, c.attributes, c.categories, c.active) == (None, None, {}, {}, True)


async def test_given_fields_replace_and_absent_fields_are_kept(db: Database) -> None:
    org = await new_org(db)
    await insert_people(
        db,
        org,
        [
            person_row(
                1,
                phone="+27825550100",
                whatsapp="+27825550111",
                timezone="Africa/Johannesburg",
                attributes={"site": "Durban", "shift": 2},
                groups=["north"],
            )
        ],
    )
    async with db.transaction() as session:
        await service.put_preferences(
            session,
            org,
            "p1",
            PreferencesIn.model_validate({"channels": {"sms": False}, "categories": {"x": False}}),
        )
    before = await stored(db, org, "p1")
    assert before is not None
    ids, refused = await merge(
        db, org, [inline("p1", name="New Name", phone="+27825550122", email=None)]
    )
    assert refused == {}
    assert ids == {"p1": before.id}
    after = await stored(db, org, "p1")
    assert after is not None
    assert (after.name, after.phone, after.email) == ("New Name", "+27825550122", None)
    # Absent: kept, the WhatsApp number included (it does not follow a new phone).
    assert (after.whatsapp, after.timezone, after.attributes) == (
        "+27825550111",
        "Africa/Johannesburg",
        {"site": "Durban", "shift": 2},
    )
    # Never set here: groups and the person's own preferences.
    assert (after.pref_sms, after.categories) == (False, {"x": False})
    async with db.read() as session:
        assert await repository.groups_of(session, [after.id]) == {after.id: ["north"]}
    assert after.updated_at > before.updated_at
    await merge(db, org, [inline("p1", attributes={})])
    cleared = await stored(db, org, "p1")
    assert cleared is not None
    assert cleared.attributes == {}
    assert cleared.name == "New Name"


async def test_a_whatsapp_number_given_as_null_is_the_phone_given_with_it(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1, phone="+27825550100", whatsapp="+27825550111")])
    await merge(db, org, [inline("p1", phone="+27825550122", whatsapp=None)])
    first = await stored(db, org, "p1")
    assert first is not None
    assert (first.phone, first.whatsapp) == ("+27825550122", "+27825550122")
    await merge(db, org, [inline("p1", whatsapp=None)])
    cleared = await stored(db, org, "p1")
    assert cleared is not None
    assert (cleared.phone, cleared.whatsapp) == ("+27825550122", None)


async def test_a_person_given_only_by_external_id_is_left_as_they_are(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    before = await stored(db, org, "p1")
    assert before is not None
    ids, refused = await merge(db, org, [inline("p1")])
    assert (ids, refused) == ({"p1": before.id}, {})
    after = await stored(db, org, "p1")
    assert after is not None
    assert (after.name, after.email, after.updated_at) == (
        before.name,
        before.email,
        before.updated_at,
    )


async def test_a_deactivated_person_is_refused_and_left_unchanged(db: Database) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1), person_row(2)])
    async with db.transaction() as session:
        await service.deactivate(session, org, "p1")
    before = await stored(db, org, "p1")
    assert before is not None
    ids, refused = await merge(
        db, org, [inline("p1", name="Changed", email="new@example.com"), inline("p2", name="Bo")]
    )
    assert set(ids) == {"p2"}
    assert refused == {
        "p1": [FieldError(("external_id",), "the recipient is deactivated", "deactivated")]
    }
    after = await stored(db, org, "p1")
    assert after is not None
    assert (after.active, after.name, after.email, after.updated_at) == (
        False,
        before.name,
        before.email,
        before.updated_at,
    )


async def test_an_invalid_number_refuses_the_person_and_saves_nothing_of_theirs(
    db: Database,
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1, phone="+27825550100")])
    ids, refused = await merge(
        db,
        org,
        [
            inline("p1", name="Changed", phone="not a number"),
            inline("new", name="New", whatsapp="12"),
            inline("fine", phone="+27825550133"),
        ],
    )
    assert set(ids) == {"fine"}
    assert set(refused) == {"p1", "new"}
    assert [(e.loc, e.type) for e in refused["p1"]] == [(("phone",), "phone_invalid")]
    assert [(e.loc, e.type) for e in refused["new"]] == [(("whatsapp",), "phone_invalid")]
    assert "not a number" in refused["p1"][0].message
    kept = await stored(db, org, "p1")
    assert kept is not None
    assert (kept.name, kept.phone) == ("Person 1", "+27825550100")
    assert await stored(db, org, "new") is None


async def test_numbers_without_a_country_need_the_region(db: Database) -> None:
    org = await new_org(db)
    _, refused = await merge(db, org, [inline("a", phone="082 555 0100")], region=None)
    assert [e.type for e in refused["a"]] == ["phone_invalid"]
    ids, refused = await merge(db, org, [inline("a", phone="082 555 0100")], region="ZA")
    assert refused == {}
    assert set(ids) == {"a"}


async def test_a_person_named_twice_gets_every_field_given_the_last_value_winning(
    db: Database,
) -> None:
    org = await new_org(db)
    ids, refused = await merge(
        db,
        org,
        [
            inline("a", name="First", email="first@example.com", phone="bad"),
            inline("a", name="Second", phone="+27825550100"),
            inline("a", locale="fr"),
        ],
    )
    assert refused == {}
    assert set(ids) == {"a"}
    a = await stored(db, org, "a")
    assert a is not None
    assert (a.name, a.email, a.phone, a.locale) == (
        "Second",
        "first@example.com",
        "+27825550100",
        "fr",
    )


async def test_the_repository_merges_a_repeated_external_id_too(db: Database) -> None:
    org = await new_org(db)
    async with db.transaction() as session:
        found = await merge_repository.merge(
            session,
            org,
            [{"external_id": "x", "name": "A"}, {"external_id": "x", "email": "x@example.com"}],
            utcnow(),
        )
    assert list(found) == ["x"]
    assert found["x"][1] is True
    x = await stored(db, org, "x")
    assert x is not None
    assert (x.name, x.email) == ("A", "x@example.com")
    with pytest.raises(ValueError, match="not recipient profile columns"):
        async with db.transaction() as session:
            await merge_repository.merge(
                session, org, [{"external_id": "y", "groups": []}], utcnow()
            )


async def test_other_organizations_people_are_never_touched(db: Database) -> None:
    mine, theirs = await new_org(db, "Mine"), await new_org(db, "Theirs")
    await insert_people(db, theirs, [person_row(1)])
    async with db.transaction() as session:
        await service.deactivate(session, theirs, "p1")
    ids, refused = await merge(db, mine, [inline("p1", name="Mine")])
    assert refused == {}
    assert set(ids) == {"p1"}
    other = await stored(db, theirs, "p1")
    assert other is not None
    assert (other.name, other.active) == ("Person 1", False)
    assert ids["p1"] != other.id


async def test_many_people_cost_a_statement_per_thousand(db: Database, backend: str) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(0, 2500, 2)])
    # 2,500 people: half give a name (half of these exist), half an email and attributes.
    people = [
        inline(f"p{i}", name=f"N{i}")
        if i % 4 < 2
        else inline(f"p{i}", email=f"e{i}@example.com", attributes={"i": i})
        for i in range(2500)
    ]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        ids, refused = await merge(db, org, people)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    assert refused == {}
    assert len(ids) == 2500
    assert len(set(ids.values())) == 2500
    recipient_writes = [s for s in statements if "INSERT INTO recipients" in s]
    # PostgreSQL: 2,500 rows in chunks of 1,000; SQLite: 1,250 rows of each kind, two chunks each.
    assert len(recipient_writes) == (3 if backend == "postgresql" else 4)
    assert len(statements) <= len(recipient_writes) + 2  # besides, BEGIN and COMMIT at most
    p0, p2, p3 = [await stored(db, org, x) for x in ("p0", "p2", "p3")]
    assert p0 is not None
    assert (p0.name, p0.email) == ("N0", "p0@example.com")
    assert p2 is not None
    assert (p2.name, p2.email, p2.attributes) == (
        "Person 2",
        "e2@example.com",
        {"i": 2},
    )
    assert p3 is not None
    assert (p3.name, p3.email) == (None, "e3@example.com")


async def test_no_people_cost_nothing(db: Database) -> None:
    org = await new_org(db)
    assert await merge(db, org, []) == ({}, {})


HOSTILE_IDS = [
    "'); DROP TABLE recipients; --",
    'quote " and \\ backslash',
    "ünïcödé ✓ 😀 \u202e",
    "%_ like wildcards",
    "x" * 255,
    "$.external_id",
    '{"json": true}',
]


async def test_hostile_values_are_stored_exactly(db: Database) -> None:
    org = await new_org(db)
    attributes = {
        "nested": {"deep": [1, 2.5, None, True, "'\"\\"], "ü": "😀"},
        "big": 2**53 - 1,
        "small": -(2**53 - 1),
        "float": 1.5e300,
        "empty": {},
        "sql": "'); DROP TABLE recipients; --",
    }
    people = [inline(x, name=x[:255], attributes=attributes, locale="en") for x in HOSTILE_IDS]
    ids, refused = await merge(db, org, people)
    assert refused == {}
    assert set(ids) == set(HOSTILE_IDS)
    for x in HOSTILE_IDS:
        person = await stored(db, org, x)
        assert person is not None
        assert person.name == x
        assert repository_attributes(person) == attributes
    # And again, as updates of the same people.
    again, _ = await merge(db, org, [inline(x, name="again") for x in HOSTILE_IDS])
    assert again == ids


def repository_attributes(person: Recipient) -> dict[str, Any]:
    from bulletin import jsonvalue

    value: dict[str, Any] = jsonvalue.as_read(person.attributes)
    return value


async def test_concurrent_merges_of_the_same_people_make_each_person_once(db: Database) -> None:
    org = await new_org(db)
    people = [inline(f"n{i:03}", name=f"N{i}") for i in range(200)]

    async def one(k: int) -> dict[str, int]:
        ids, refused = await merge(db, org, people[::-1] if k % 2 else people)
        assert refused == {}
        return ids

    results = await asyncio.gather(*(one(k) for k in range(6)))
    assert all(r == results[0] for r in results[1:])
    assert len(set(results[0].values())) == 200


async def test_concurrent_merges_giving_different_fields_never_deadlock(db: Database) -> None:
    """Two merges share people, each giving different fields of them than the other does:
    each locks the people it shares in the same order, so neither waits for the other."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(300)])

    def crossed(flip: int) -> list[InlineRecipient]:
        return [
            inline(f"p{i}", name=f"N{i}") if (i + flip) % 2 else inline(f"p{i}", locale="fr")
            for i in range(300)
        ]

    for _ in range(10):
        results = await asyncio.gather(merge(db, org, crossed(0)), merge(db, org, crossed(1)))
        assert [len(ids) for ids, _ in results] == [300, 300]


def test_an_inline_recipient_is_validated_like_a_recipient() -> None:
    person = inline("a", email="Ann@Example.COM", timezone="Africa/Johannesburg")
    assert person.email == "Ann@example.com"
    assert person.model_fields_set == {"external_id", "email", "timezone"}
    for bad in (
        {"external_id": ""},
        {"external_id": "a/b"},
        {"external_id": "a\x00"},
        {"external_id": "a", "groups": ["x"]},
        {"external_id": "a", "timezone": "Mars/Olympus"},
        {"external_id": "a", "email": "not-an-email"},
        {"external_id": "a", "attributes": {"x": float("nan")}},
        {"external_id": "a", "attributes": None},
        {"external_id": "a", "unknown": 1},
        {"name": "no id"},
    ):
        with pytest.raises(ValidationError):
            InlineRecipient.model_validate(bad)
