"""Waiting, through the API, until a message reaches the state a test expects, and reading
its deliveries then.

These wait on the API's own answers, never for a fixed time (see :mod:`support.waiting`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import Api
from support.http import body_of, get_deliveries
from support.waiting import eventually

#: States a delivery leaves on its own; one in neither is settled (for now).
UNSETTLED = ("pending", "sending")


async def wait_for_state(api: Api, path: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``GET path`` until its ``state`` is ``state``; the last body, or a failure."""
    deadline = time.monotonic() + timeout
    while True:
        body = body_of(await api.get(path), 200)
        if body["state"] == state:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still {body['state']!r} after {timeout}s: {body}")
        await asyncio.sleep(0.02)


async def settled_deliveries(
    api: Api, message_id: str, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The deliveries of an announcement once there are some and none is pending or sending."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await get_deliveries(api, message_id)
        if rows and all(r["state"] not in UNSETTLED for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.05)


async def settled_notification(
    api: Api, message_id: str, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The deliveries of a notification, once the notification is completed."""
    path = f"/v1/notifications/{message_id}"

    async def completed() -> bool:
        return bool(body_of(await api.get(path), 200)["state"] == "completed")

    await eventually(completed, timeout)
    found: list[dict[str, Any]] = body_of(await api.get(path), 200)["deliveries"]
    return found
