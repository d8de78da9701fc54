"""Request and response bodies of announcements and notifications."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from bulletin.channels.configs import WhatsAppTemplateRef
from bulletin.recipients.schemas import CategoryName, ExternalId, GroupName
from bulletin.schemas import RequestBody

Channel = Literal["whatsapp", "email", "sms"]
Routing = Literal["first", "all"]
DEFAULT_CHANNELS: list[Channel] = ["whatsapp", "email", "sms"]


def _unique_channels(channels: list[Channel]) -> list[Channel]:
    if len(set(channels)) != len(channels):
        raise ValueError("each channel may be named once")
    return channels


Channels = Annotated[list[Channel], Field(min_length=1), AfterValidator(_unique_channels)]


def _representable_in_utc(value: dt.datetime) -> dt.datetime:
    # 0001-01-01T00:00+14:00 parses, but has no UTC form: converting it later would be a 500.
    try:
        value.astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValueError("the time is outside the range that can be stored") from exc
    return value


SendAt = Annotated[AwareDatetime, AfterValidator(_representable_in_utc)]


class Audience(RequestBody):
    """Who an announcement goes to: exactly one of everyone, groups, or named recipients."""

    model_config = ConfigDict(
        # "Exactly one of", as the validator below enforces it, for the OpenAPI document.
        json_schema_extra={
            "oneOf": [
                {"required": ["all"], "properties": {"all": {"const": True}}},
                {"required": ["groups"], "properties": {"groups": {"type": "array"}}},
                {"required": ["recipients"], "properties": {"recipients": {"type": "array"}}},
            ]
        }
    )

    all: Literal[True] | None = Field(default=None, description="Every active recipient.")
    groups: list[GroupName] | None = Field(
        default=None, min_length=1, max_length=1000, description="Members of any of these groups."
    )
    recipients: list[ExternalId] | None = Field(
        default=None, min_length=1, max_length=100_000, description="These recipients."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Audience:
        given = [name for name in ("all", "groups", "recipients") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'all': true, 'groups' or 'recipients'")
        return self


_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """Seconds in a duration written like '90s', '15m', '2h' or '1d'."""
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError("write a duration as a number and a unit: '90s', '15m', '2h' or '1d'")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > 30 * 86400:
        raise ValueError("at most 30 days")
    return seconds


def _check_duration(value: str) -> str:
    duration_seconds(value)
    return value


Duration = Annotated[str, AfterValidator(_check_duration)]


class TextContent(RequestBody):
    """Channel-specific text; what is left out comes from the message."""

    title: str | None = Field(default=None, min_length=1, max_length=500)
    body: str | None = Field(default=None, min_length=1, max_length=20_000)


class EmailContent(TextContent):
    html: str | None = Field(
        default=None,
        min_length=1,
        max_length=200_000,
        description="HTML part (Jinja2, autoescaped; may use title and body).",
    )


class SmsContent(RequestBody):
    body: str = Field(min_length=1, max_length=1600, description="The whole SMS text.")


class WhatsAppContent(TextContent):
    template: WhatsAppTemplateRef | None = Field(
        default=None, description="Send as this approved template, always."
    )


class Overrides(RequestBody):
    """Per-channel content, for example a shorter SMS or an HTML email."""

    whatsapp: WhatsAppContent | None = None
    email: EmailContent | None = None
    sms: SmsContent | None = None


class _MessageIn(RequestBody):
    title: str = Field(min_length=1, max_length=500)
    body: str = Field(min_length=1, max_length=20_000)
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
    send_at: SendAt | None = Field(
        default=None, description="RFC 3339 with an offset. Absent means now."
    )
    urgent: bool = Field(default=False, description="Send even in the recipient's quiet hours.")
    overrides: Overrides | None = Field(
        default=None, description="Channel-specific content. Title and body may use Jinja2."
    )
    fallback_after: Duration | None = Field(
        default=None,
        description="With routing 'first': if the channel has not reported delivery within "
        "this time ('15m'), move on to the person's next channel.",
    )

    @model_validator(mode="after")
    def _fallback_needs_first(self) -> _MessageIn:
        if self.fallback_after is not None and self.routing != "first":
            raise ValueError("fallback_after needs routing 'first'")
        return self


class AnnouncementIn(_MessageIn):
    audience: Audience


class NotificationIn(_MessageIn):
    recipient: ExternalId


DeliveryCounts = dict[str, int]


class Message(BaseModel):
    id: uuid.UUID
    kind: Literal["announcement", "notification"]
    state: Literal["scheduled", "resolving", "sending", "completed", "cancelled"]
    title: str
    body: str
    channels: list[str]
    routing: str
    category: str | None
    urgent: bool
    send_at: dt.datetime
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    completed_at: dt.datetime | None
    cancelled_at: dt.datetime | None
    audience_size: int | None = Field(description="Recipients resolved so far.")
    overrides: dict[str, Any] = Field(default_factory=dict)
    fallback_after: str | None = None


class Announcement(Message):
    audience: Audience
    deliveries: DeliveryCounts | None = Field(
        default=None, description="Deliveries per state (on the single-announcement view)."
    )


class Notification(Message):
    recipient: str
    deliveries: list[DeliveryBrief] | None = None


class DeliveryBrief(BaseModel):
    id: int
    channel: str
    state: str
    reason: str | None


class AnnouncementPage(BaseModel):
    items: list[Announcement]
    next_cursor: str | None


class CancelResult(BaseModel):
    message: Announcement | Notification
    cancelled: int = Field(description="Deliveries that will now never start.")
    in_flight: int = Field(
        description="Sends that had already started and were still running when this answered."
    )
