"""Reading one delivered item as an event: JSON text of an object, within the limits, of an
organization the queue serves. What is not is *malformed*, with a reason for people and field
errors, and goes to the dead-letter queue as it came.

The limits are the API's: the body size (``BULLETIN_MAX_BODY_BYTES``) and the nesting
measured on the bytes before any parser sees them (:func:`bulletin.jsonvalue.too_deep`); the
events service checks the rest (the ``data`` limits, the fields) as it does for
``POST /v1/events``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bulletin import jsonvalue
from bulletin.errors import FieldError

#: The key in which an event names its organization, when a queue carries several.
ORGANIZATION_KEY = "organization"
#: Longest reason put on a dead letter, in characters.
MAX_REASON_CHARACTERS = 500


@dataclass(frozen=True, slots=True)
class Readable:
    """An item that is an event of an organization this queue serves."""

    org_id: uuid.UUID
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Malformed:
    """An item that is not an event this queue can take, and why."""

    reason: str
    errors: tuple[FieldError, ...] = ()


@dataclass(frozen=True, slots=True)
class Routing:
    """Which organizations a queue serves, and whether each event names its own."""

    org_ids: frozenset[uuid.UUID]
    #: True: each event names its organization (``organization``), one of ``org_ids``. False:
    #: every event is of the one organization in ``org_ids`` (naming it is allowed).
    named: bool

    @classmethod
    def one(cls, org_id: uuid.UUID) -> Routing:
        return cls(frozenset({org_id}), named=False)

    @classmethod
    def several(cls, org_ids: Sequence[uuid.UUID]) -> Routing:
        return cls(frozenset(org_ids), named=True)


def _malformed(reason: str, loc: tuple[str | int, ...], kind: str) -> Malformed:
    return Malformed(reason, (FieldError(loc, reason, kind),))


def decode(body: bytes, routing: Routing, *, max_bytes: int) -> Readable | Malformed:
    """Read one item: JSON text of an object, of an organization ``routing`` allows.

    The organization's key is taken out of the event (the events service does not know it).
    """
    if len(body) > max_bytes:
        return _malformed(f"the event is larger than {max_bytes} bytes", (), "too_large")
    if jsonvalue.too_deep(body):
        limit = jsonvalue.MAX_BODY_DEPTH
        return _malformed(f"JSON nested deeper than {limit} levels", (), "json_depth")
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return _malformed("the event is not UTF-8 text", (), "json_invalid")
    except json.JSONDecodeError as exc:
        return _malformed(
            f"the event is not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})",
            (),
            "json_invalid",
        )
    except (ValueError, RecursionError):  # an integer of thousands of digits, say
        return _malformed("the event is not JSON that can be read", (), "json_invalid")
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else type(value).__name__
        return _malformed(f"an event is a JSON object, not {kind}", (), "object_type")
    named = value.pop(ORGANIZATION_KEY, None)
    if named is None:
        if routing.named:
            return _malformed(
                f"the event names no organization (a top-level {ORGANIZATION_KEY!r} key)",
                (ORGANIZATION_KEY,),
                "missing",
            )
        (only,) = routing.org_ids
        return Readable(only, value)
    try:
        org_id: uuid.UUID | None = uuid.UUID(named) if isinstance(named, str) else None
    except ValueError:
        org_id = None
    if org_id is None:
        return _malformed(
            f"{ORGANIZATION_KEY!r} is not an organization id", (ORGANIZATION_KEY,), "uuid"
        )
    if org_id not in routing.org_ids:
        return _malformed(
            f"this queue does not carry events of organization {org_id}",
            (ORGANIZATION_KEY,),
            "organization_not_served",
        )
    return Readable(org_id, value)


def one_line(text: str) -> str:
    """``text`` on one line, and not too long, for a header and a log line."""
    line = " ".join(text.split())
    if len(line) > MAX_REASON_CHARACTERS:
        line = line[: MAX_REASON_CHARACTERS - 3] + "..."
    return line
