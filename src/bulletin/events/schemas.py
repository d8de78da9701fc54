"""Request and response bodies of event types and events."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bulletin import jsonvalue
from bulletin.messages.schemas import (
    DEFAULT_CHANNELS,
    Channels,
    Duration,
    Notification,
    Overrides,
    Routing,
    SendAt,
)
from bulletin.recipients.schemas import CategoryName, ExternalId, InlineRecipient
from bulletin.schemas import NO_CONTROL_CHARACTERS, RequestBody

#: An event type's key: lower case letters, digits, dots, dashes and underscores.
KEY_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
EventTypeKey = Annotated[str, Field(min_length=1, max_length=64, pattern=KEY_PATTERN)]
EventId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=255,
        pattern=NO_CONTROL_CHARACTERS,
        description="The producer's own id for the event: an id seen before answers the "
        "original messages and creates nothing.",
    ),
]
#: Most events one batch call (or one :func:`bulletin.events.service.accept` call) may hold.
MAX_BATCH = 1000
#: Most recipients one event may name.
MAX_RECIPIENTS = 1000


class EventTypeIn(RequestBody):
    """What an event of this type becomes: a notification to each of its recipients.

    Title, body and overrides are Jinja2 templates that see ``recipient`` and the event's
    ``data`` (a missing key of ``data`` renders as empty text).
    """

    description: str | None = Field(default=None, max_length=1000)
    title: str = Field(min_length=1, max_length=500)
    body: str = Field(min_length=1, max_length=20_000)
    overrides: Overrides | None = Field(default=None, description="Channel-specific content.")
    channels: Channels = Field(
        default_factory=lambda: list(DEFAULT_CHANNELS),
        description="Channels in order of preference.",
    )
    routing: Routing = Field(
        default="first",
        description="'first': each person once, on the first usable channel. 'all': every one.",
    )
    category: CategoryName | None = Field(
        default=None, description="Recipients can opt out of a category."
    )
    urgent: bool = Field(default=False, description="Send even in the recipient's quiet hours.")
    delay: Duration | None = Field(
        default=None,
        description="Send this long after the event is accepted ('10m'), unless the event "
        "gives send_at. Absent means at once.",
    )
    fallback_after: Duration | None = Field(
        default=None,
        description="With routing 'first': if the channel has not reported delivery within "
        "this time ('15m'), move on to the person's next channel.",
    )

    @model_validator(mode="after")
    def _fallback_needs_first(self) -> EventTypeIn:
        if self.fallback_after is not None and self.routing != "first":
            raise ValueError("fallback_after needs routing 'first'")
        return self


class EventType(BaseModel):
    key: str
    description: str | None
    title: str
    body: str
    overrides: dict[str, Any]
    channels: list[str]
    routing: str
    category: str | None
    urgent: bool
    delay: str | None
    fallback_after: str | None
    version: int = Field(description="Incremented by every PUT; 1 when created.")
    created_at: dt.datetime
    updated_at: dt.datetime


class EventTypePage(BaseModel):
    items: list[EventType]
    next_cursor: str | None


def _check_data(value: dict[str, Any]) -> dict[str, Any]:
    try:
        jsonvalue.check(value, "data")
    except jsonvalue.JsonLimitError as exc:
        raise PydanticCustomError(exc.kind, "{message}", {"message": exc.message}) from None
    return value


EventData = Annotated[
    dict[str, Any],
    AfterValidator(_check_data),
    Field(
        description=(
            "What the event type's templates see as data. Limits as for a recipient's "
            f"attributes: nested at most {jsonvalue.MAX_DEPTH} levels, "
            f"{jsonvalue.MAX_OBJECT_KEYS} keys per object, {jsonvalue.MAX_ARRAY_ITEMS} items "
            "per array, no NaN or Infinity, integers within "
            f"±{jsonvalue.MAX_SAFE_INTEGER}, {jsonvalue.MAX_FIELD_BYTES} bytes in all."
        ),
        json_schema_extra={"maxProperties": jsonvalue.MAX_OBJECT_KEYS},
    ),
]

#: Tags of the two forms of a recipient; they are dropped from the places errors point at.
BY_ID, INLINE = "by-id", "inline"


def _recipient_form(value: Any) -> str:
    return BY_ID if isinstance(value, str) else INLINE


#: A recipient of an event: the external id of a stored recipient, or an inline recipient,
#: created or updated with the event.
EventRecipient = Annotated[
    Annotated[ExternalId, Tag(BY_ID)] | Annotated[InlineRecipient, Tag(INLINE)],
    Discriminator(_recipient_form),
]


class EventIn(RequestBody):
    """One event: it becomes a notification to each of its recipients."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["recipient"]}, {"required": ["recipients"]}],
        }
    )

    id: EventId
    type: EventTypeKey = Field(description="The key of one of the organization's event types.")
    recipient: EventRecipient | None = Field(
        default=None,
        description="An external id, or an inline recipient (external_id and contact fields), "
        "created or updated with the event: fields given replace the stored ones.",
    )
    recipients: list[EventRecipient] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_RECIPIENTS,
        description="Several recipients, each as in recipient: one notification each.",
    )
    data: EventData = Field(default_factory=dict)
    send_at: SendAt | None = Field(
        default=None,
        description="RFC 3339 with an offset. Absent means now, or after the type's delay.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> EventIn:
        if (self.recipient is None) == (self.recipients is None):
            raise ValueError("give exactly one of 'recipient' or 'recipients'")
        return self

    def people(self) -> list[str | InlineRecipient]:
        """The event's recipients, in the order given."""
        return [self.recipient] if self.recipient is not None else list(self.recipients or [])


class EventAnswer(BaseModel):
    id: str
    type: str
    status: Literal["accepted", "duplicate"] = Field(
        description="'duplicate': the id was seen before; these are the original messages, "
        "and nothing was created."
    )
    messages: list[Notification]


class EventBatchIn(BaseModel):
    # Not a RequestBody: each event is validated on its own, so that a bad one (even one with
    # a NUL character) is refused alone and the others are accepted.
    model_config = ConfigDict(extra="forbid")

    events: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"Up to {MAX_BATCH} events, each as the body of POST /v1/events.",
    )


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="Where in the event (not in the whole batch).")
    message: str
    type: str


class EventProblem(BaseModel):
    title: str
    errors: list[FieldProblem]


class EventResult(BaseModel):
    index: int = Field(description="The event's place in the batch, from 0.")
    id: str | None = Field(description="The event's id, if it could be read.")
    type: str | None = Field(
        default=None, description="The event type it was accepted as (not when refused)."
    )
    status: Literal["accepted", "duplicate", "refused"]
    messages: list[Notification] | None = None
    problem: EventProblem | None = Field(default=None, description="Why it was refused.")


class EventBatchAnswer(BaseModel):
    results: list[EventResult]
    accepted: int
    duplicates: int
    refused: int
