"""Request and response bodies of the webhook endpoints API.

An endpoint's signing secret appears only in :class:`EndpointWithSecret`, the answer to its
creation and to a rotation; every other answer shows the endpoint without it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator

from bulletin.schemas import NO_CONTROL_CHARACTERS, RequestBody
from bulletin.subscriptions import kinds

#: The longest endpoint URL accepted.
MAX_URL_LENGTH = 2000
#: The longest grace period a rotation may ask for.
MAX_GRACE_SECONDS = 7 * 86400

#: The same as :data:`bulletin.subscriptions.kinds.KINDS` (a unit test checks it).
Kind = Literal[
    "delivery.sent",
    "delivery.delivered",
    "delivery.read",
    "delivery.failed",
    "delivery.suppressed",
    "delivery.unknown",
    "message.completed",
    "message.cancelled",
]

EndpointState = Literal["active", "failing", "disabled"]
DeliveryState = Literal["pending", "delivered", "failed"]

Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="Where status events are POSTed: an https URL at a public address.",
        examples=["https://hooks.example.com/bulletin"],
    ),
]
Description = Annotated[
    str,
    Field(min_length=1, max_length=500, pattern=NO_CONTROL_CHARACTERS),
]
Kinds = Annotated[
    list[Kind],
    Field(
        min_length=1,
        max_length=len(kinds.KINDS),
        description="The kinds of event this endpoint is told about (at least one).",
    ),
]

_DURATION = re.compile(r"(0|[1-9][0-9]{0,6})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def grace_seconds(value: str) -> int:
    """Seconds in a grace period written like '0s', '90s', '15m', '2h' or '1d' (at most 7 days)."""
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError("write a duration as a number and a unit: '0s', '15m', '2h' or '1d'")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_GRACE_SECONDS:
        raise ValueError("at most 7 days")
    return seconds


def _check_grace(value: str) -> str:
    grace_seconds(value)
    return value


Grace = Annotated[str, AfterValidator(_check_grace)]


class EndpointIn(RequestBody):
    """Body of ``POST /v1/webhook-endpoints``."""

    url: Url
    kinds: Kinds
    description: Description | None = Field(
        default=None, description="A label to tell endpoints apart."
    )


class EndpointPatch(RequestBody):
    """Body of ``PATCH /v1/webhook-endpoints/{id}``: only the fields given change."""

    url: Url | None = None
    kinds: Kinds | None = None
    description: Description | None = Field(
        default=None, description="A new label; null removes it."
    )
    enabled: bool | None = Field(
        default=None,
        description="false stops sending (state 'disabled'); true makes a disabled or failing "
        "endpoint active again, and what it had pending goes out.",
    )

    @field_validator("url", "kinds", "enabled")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Called only for the fields given: left out, they stay; null would mean nothing.
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class RotateIn(RequestBody):
    """Body of ``POST /v1/webhook-endpoints/{id}/rotate-secret`` (optional)."""

    grace: Grace | None = Field(
        default=None,
        description="How long the old secret goes on signing too ('0s' to '7d'); the "
        "server's BULLETIN_WEBHOOK_SECRET_GRACE_SECONDS (a day by default) when left out.",
        examples=["1d"],
    )


class Endpoint(BaseModel):
    """A webhook endpoint, never with its secret."""

    id: uuid.UUID
    url: str
    description: str | None
    kinds: list[Kind]
    state: EndpointState = Field(
        description="active; failing (an event exhausted its retries: nothing is sent until "
        "it is enabled again); or disabled."
    )
    failing_since: dt.datetime | None
    previous_secret_expires_at: dt.datetime | None = Field(
        description="After a rotation: until when the previous secret also signs."
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class EndpointWithSecret(Endpoint):
    """An endpoint just created, or whose secret was just rotated, with its secret."""

    secret: str | None = Field(
        description="The signing secret (whsec_...), for the receiver to verify signatures "
        "with. Shown in this answer only. Null when the answer is an Idempotency-Key replay: "
        "rotate the secret to get one."
    )


class EndpointPage(BaseModel):
    items: list[Endpoint]
    next_cursor: str | None


class Attempt(BaseModel):
    """One try at sending an event."""

    at: dt.datetime
    status_code: int | None = Field(description="The receiver's answer; null if none came.")
    error: str | None = Field(description="What went wrong, when something did.")
    duration_ms: int


class Delivery(BaseModel):
    """One event for one endpoint, and what became of it."""

    id: int
    webhook_id: str = Field(
        description="The webhook-id header it is sent with, the same on every retry."
    )
    kind: str
    state: DeliveryState
    attempts: int = Field(description="Tries so far.")
    last_status: int | None
    last_error: str | None
    next_attempt_at: dt.datetime | None = Field(description="When it is tried next, if pending.")
    occurred_at: dt.datetime
    created_at: dt.datetime
    finished_at: dt.datetime | None
    history: list[Attempt] = Field(description="Every try, oldest first.")


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None
