"""Links Bulletin puts in messages, signed so that only Bulletin can make them."""

from __future__ import annotations

from bulletin.crypto import sign, signing_key
from bulletin.db import Database


class UnsubscribeLinks:
    """Makes one-click unsubscribe links; reads the signing key once per process."""

    def __init__(self, db: Database, base_url: str) -> None:
        self._db = db
        self._base_url = base_url
        self._key: bytes | None = None

    async def __call__(self, delivery_id: int) -> str:
        if self._key is None:
            self._key = await signing_key(self._db)
        return f"{self._base_url}/v1/unsubscribe/{sign(self._key, str(delivery_id))}"
