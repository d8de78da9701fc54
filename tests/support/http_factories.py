"""Data made through the API, as an API user makes it: recipients posted in a batch,
announcements and notifications posted and accepted.

The database-level counterparts, which go through the services without HTTP, are in
:mod:`support.db_factories`; their names say which level they work at (``post_...`` and
``person_json`` here, ``insert_...`` and ``person_row`` there).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from conftest import Api
from support.http import body_of


def person_json(n: int, **fields: Any) -> dict[str, Any]:
    """A recipient for a batch import: ``p<n>`` with an email address and nothing else."""
    return {"external_id": f"p{n}", "name": f"Person {n}", "email": f"p{n}@example.com", **fields}


async def post_people(api: Api, *rows: dict[str, Any]) -> None:
    """POST ``rows`` to the batch import and check that each was created or updated."""
    response = await api.post("/v1/recipients/batch", {"recipients": list(rows)})
    body = body_of(response, 200)
    assert body["created"] + body["updated"] == len(rows)


async def post_announcement(api: Api, audience: dict[str, Any] | None = None, **fields: Any) -> str:
    """POST an announcement (to everyone unless told), check the 202, and return its id."""
    payload = {"title": "Hello", "body": "Body", "audience": audience or {"all": True}, **fields}
    body = body_of(await api.post("/v1/announcements", payload), 202)
    message_id: str = body["id"]
    return message_id


async def notify(api: Api, recipient: str, **fields: Any) -> str:
    """POST a notification to one recipient, check the 202, and return its id."""
    payload = {"title": "Hi", "body": "Body", "recipient": recipient, **fields}
    body = body_of(await api.post("/v1/notifications", payload), 202)
    message_id: str = body["id"]
    return message_id


def in_future(seconds: float) -> str:
    """An ISO 8601 time ``seconds`` from now, for ``send_at``."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()
