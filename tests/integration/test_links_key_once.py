"""A process reads its link-signing key once, even when its first sends all want it at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import event

from bulletin.db import Database
from bulletin.recipients.links import PreferenceLinks


async def test_concurrent_first_links_read_the_key_once(db: Database) -> None:
    links = PreferenceLinks(db, "https://bulletin.example.com")
    reads: list[str] = []

    def seen(*args: Any) -> None:
        if "instance_secrets" in args[2]:
            reads.append(args[2])

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        org = uuid.uuid4()
        made = await asyncio.gather(*(links.page(org, n) for n in range(50)))
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(set(made)) == 50
    assert 1 <= len(reads) <= 2, reads  # read, and written the very first time
