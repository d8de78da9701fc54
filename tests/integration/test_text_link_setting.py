"""The dispatcher's view of the organization setting: read per batch, kept for a while, so that
sending costs no query per message."""

from __future__ import annotations

from sqlalchemy import delete, update

from bulletin.db import Database
from bulletin.orgs.models import InstanceSecret, Organization
from bulletin.recipients.links import PreferenceLinks
from bulletin.worker.lookups import TextLinkSetting
from support.db_factories import new_org


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def set_text_links(db: Database, org_id: object, on: bool) -> None:
    async with db.transaction() as session:
        await session.execute(
            update(Organization)
            .where(Organization.id == org_id)
            .values(preference_links_in_texts=on)
        )


async def test_the_setting_is_read_once_per_interval(db: Database) -> None:
    on, off = await new_org(db, "On"), await new_org(db, "Off")
    await set_text_links(db, on, True)
    clock = Clock()
    setting = TextLinkSetting(db, seconds=5.0, clock=clock)

    await setting.refresh({on, off})
    assert setting.enabled(on)
    assert not setting.enabled(off)

    # Changed in the database: not seen until the interval has passed.
    await set_text_links(db, on, False)
    await set_text_links(db, off, True)
    clock.now += 4.9
    await setting.refresh({on, off})
    assert setting.enabled(on)
    assert not setting.enabled(off)
    clock.now += 0.2
    await setting.refresh({on, off})
    assert not setting.enabled(on)
    assert setting.enabled(off)


async def test_an_organization_not_yet_read_has_no_links(db: Database) -> None:
    org = await new_org(db)
    await set_text_links(db, org, True)
    assert not TextLinkSetting(db).enabled(org)


async def test_links_read_the_key_once_and_are_the_same_for_every_message(db: Database) -> None:
    org = await new_org(db)
    links = PreferenceLinks(db, "https://b.example/")
    first = await links.page(org, 42)
    # Had the key been read again, a new one would be made now, and the link would change.
    async with db.transaction() as session:
        await session.execute(delete(InstanceSecret))
    assert await links.page(org, 42) == first
    assert first.startswith("https://b.example/p/16.")
    assert await links.page(org, 43) != first
