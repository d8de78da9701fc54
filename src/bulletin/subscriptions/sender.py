"""One webhook request: its body, its signed headers, the POST, and what to do after it.

:func:`body` turns an outbox row into the JSON an endpoint receives::

    {"type": "delivery.sent", "timestamp": "2026-12-03T20:00:00.123456Z",
     "data": {"delivery_id": 7, "message_id": "...", "message_kind": "notification",
              "recipient": "emp-42", "channel": "email", "state": "sent",
              "detail": null, "attempt": 1}}

It depends only on the row, so every retry carries the same bytes under the same
``webhook-id`` (``msg_<row id>``); only ``webhook-timestamp`` (the send time) and so the
signature change. :func:`post` makes the request through the providers' HTTP client, so an
endpoint is held to the providers' address rules (``https`` and public addresses only,
checked when connecting, unless ``BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES``).
:func:`after_attempt` is the retry decision, a pure function.

Neither the URL, the body nor a secret is ever logged; an error is kept as a short phrase
that the organization may read (``last_error``), never the exception's text.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from bulletin.channels.egress import AddressNotAllowed
from bulletin.channels.http import HttpsRequired, parse_retry_after
from bulletin.subscriptions import signing
from bulletin.subscriptions.kinds import TEST
from bulletin.subscriptions.outbox_repository import Claimed

#: The most of an answer's body that is read (and thrown away) to keep the connection for
#: the next request; a longer body closes the connection instead.
_DRAIN_BYTES = 64 * 1024


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def body(row: Claimed) -> bytes:
    """The JSON body of ``row``'s request: compact, the same bytes on every try."""
    data: dict[str, Any]
    if row.kind.startswith("delivery."):
        data = {
            "delivery_id": row.delivery_id,
            "message_id": str(row.message_id) if row.message_id else None,
            "message_kind": row.message_kind,
            "recipient": row.recipient,
            "channel": row.channel,
            "state": row.kind.removeprefix("delivery."),
            "detail": row.detail,
            "attempt": row.attempt,
        }
    elif row.kind == TEST:
        data = {"endpoint_id": str(row.endpoint_id), "test": True}
    else:
        data = {"message_id": str(row.message_id) if row.message_id else None}
        data["message_kind"] = row.message_kind
    if row.data:
        data = {**row.data, **data}
    document = {"type": row.kind, "timestamp": _rfc3339(row.occurred_at), "data": data}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request got: a status, or an error phrase (no status came back)."""

    status: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def post(
    http: aiohttp.ClientSession,
    url: str,
    secrets: Sequence[str],
    row_id: int,
    payload: bytes,
    *,
    timeout: float,
    now: float | None = None,
) -> Answer:
    """POST ``payload`` to ``url``, signed with ``secrets``, within ``timeout`` seconds."""
    sent_at = int(now if now is not None else time.time())
    headers = signing.headers(secrets, signing.webhook_id(row_id), sent_at, payload)
    headers["user-agent"] = "Bulletin-Webhooks/1"
    started = time.monotonic()

    def answer(status: int | None, error: str | None, retry_after: float | None = None) -> Answer:
        elapsed = int((time.monotonic() - started) * 1000)
        return Answer(status, error, elapsed, retry_after)

    try:
        async with (
            asyncio.timeout(timeout),
            http.post(url, data=payload, headers=headers, allow_redirects=False) as response,
        ):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            await _drain(response)
            return answer(response.status, None, retry_after)
    except TimeoutError:
        return answer(None, f"no answer within {timeout:g} s")
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressNotAllowed):
            return answer(None, "the address is not allowed (it resolves to a non-public address)")
        return answer(None, "could not connect")
    except HttpsRequired:
        return answer(None, "the URL must be https")
    except aiohttp.InvalidURL:
        return answer(None, "the URL is not valid")
    except aiohttp.ClientError:
        return answer(None, "the connection failed")
    except ValueError:
        # A secret that cannot be read (stored wrongly): never its text.
        return answer(None, "the endpoint's secret cannot be used")


async def _drain(response: aiohttp.ClientResponse) -> None:
    read = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        read += len(chunk)
        if read > _DRAIN_BYTES:
            response.close()
            return


Next = tuple[Literal["delivered", "pending", "failed"], dt.datetime | None]


def after_attempt(answer: Answer, attempts: int, delays: Sequence[float], now: dt.datetime) -> Next:
    """What a row becomes after its ``attempts``-th try got ``answer``: delivered; pending
    again after ``delays[attempts - 1]`` (or the endpoint's ``Retry-After``, if longer, up to
    the longest delay); or failed, once every delay has been waited."""
    if answer.ok:
        return "delivered", None
    if attempts > len(delays):
        return "failed", None
    wait = delays[attempts - 1]
    if answer.retry_after is not None:
        wait = max(wait, min(answer.retry_after, max(delays)))
    return "pending", now + dt.timedelta(seconds=wait)
