"""The worker renders a message with the data stored on it (an event's), as its texts say."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from bulletin.db import Database
from bulletin.messages.models import Message
from bulletin.messages.templates import RecipientView
from bulletin.worker.lookups import MessageCache
from support.db_factories import insert_announcement, new_org

pytestmark = pytest.mark.usefixtures("backend")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"order": {"id": "A-1", "lines": [{"sku": "x"}]}, "big": 1e300}, "A-1 x 1e+300"),
        (None, "  "),
    ],
)
async def test_the_worker_renders_a_message_with_its_stored_data(
    db: Database, data: dict[str, object] | None, expected: str
) -> None:
    org = await new_org(db)
    message = await insert_announcement(
        db,
        org,
        title="Order {{ data.order.id }}",
        body="{{ data.order.id }} {{ data.order.lines[0].sku }} {{ data.big }}",
    )
    async with db.transaction() as session:
        await session.execute(update(Message).where(Message.id == message.id).values(data=data))
    facts = (await MessageCache(db).get_many({message.id}))[message.id]
    assert facts.templates is not None
    content = facts.templates.render("email", RecipientView(external_id="p1"))
    assert content.body == expected
    assert content.title == f"Order {'A-1' if data else ''}"
