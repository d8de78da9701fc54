"""Reading the API's answers as a client does: check a status, read a problem, page a list.

For data made through the API see :mod:`support.http_factories`; for waiting until a message
settles see :mod:`support.settling`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from bulletin.orgs.keys import Scope
from conftest import Api

PROBLEM_TYPE = "application/problem+json"
DELIVERY_STATES = {
    "pending",
    "sending",
    "sent",
    "delivered",
    "read",
    "failed",
    "suppressed",
    "cancelled",
    "unknown",
}


def body_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The JSON body of a successful answer, after checking its status."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body of an RFC 9457 problem answer with ``status``, after checking its shape."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM_TYPE), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for field in ("type", "title", "detail"):
        assert isinstance(body[field], str), (field, body)
        assert body[field], (field, body)
    return body


def error_locs(body: dict[str, Any]) -> list[list[str | int]]:
    """The ``loc`` of every field error a problem lists."""
    return [error["loc"] for error in body["errors"]]


def cursor_after(position: object) -> str:
    """A syntactically valid cursor around any JSON value, as a client could forge one."""
    raw = json.dumps({"after": position}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def post_keyed(api: Api, path: str, payload: Any, key: str) -> httpx.Response:
    """POST with an ``Idempotency-Key`` header and a send-scope key."""
    return await api.client.post(
        path, json=payload, headers={**api.headers(), "Idempotency-Key": key}
    )


def json_headers(api: Api) -> dict[str, str]:
    """Headers for a raw JSON body sent with ``content=``."""
    return {**api.headers(), "Content-Type": "application/json"}


async def walk(
    api: Api,
    path: str,
    limit: int,
    params: dict[str, str] | None = None,
    scope: Scope = Scope.READ,
) -> list[list[dict[str, Any]]]:
    """Every page of a cursor-paginated list, following ``next_cursor`` to the end."""
    pages: list[list[dict[str, Any]]] = []
    query: dict[str, str | int] = {**(params or {}), "limit": limit}
    while True:
        page = body_of(await api.get(path, scope, params=query), 200)
        assert len(page["items"]) <= limit
        pages.append(page["items"])
        if page["next_cursor"] is None:
            return pages
        assert page["items"], "a page with a next_cursor must not be empty"
        assert len(pages) < 1000, "next_cursor never ends"
        query["cursor"] = page["next_cursor"]


async def every(
    api: Api, path: str, params: dict[str, str] | None = None, scope: Scope = Scope.READ
) -> list[dict[str, Any]]:
    """All items of a cursor-paginated list."""
    return [item for page in await walk(api, path, 100, params, scope) for item in page]


async def sandbox_of(api: Api, message_id: str) -> list[dict[str, Any]]:
    """What the sandbox provider recorded for one message, as a send key sees it (with the
    people's preference links, which a read key is not shown)."""
    return await every(api, "/v1/sandbox/messages", {"message_id": message_id}, Scope.SEND)


async def get_deliveries(
    api: Api, message_id: str, state: str | None = None
) -> list[dict[str, Any]]:
    """The deliveries of an announcement as the API lists them (all pages), optionally only
    those in ``state``."""
    params = {"state": state} if state else None
    return await every(api, f"/v1/announcements/{message_id}/deliveries", params)
