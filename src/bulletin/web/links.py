"""Links Bulletin puts in messages, signed so that only Bulletin can make them."""

from __future__ import annotations

from bulletin.crypto import sign, signing_key
from bulletin.db import Database


async def unsubscribe_link(db: Database, base_url: str, delivery_id: int) -> str:
    """The one-click unsubscribe link for the person a delivery goes to."""
    key = await signing_key(db)
    return f"{base_url}/v1/unsubscribe/{sign(key, str(delivery_id))}"
