"""Request and response bodies of the recipients API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, model_validator

from bulletin import jsonvalue
from bulletin.channels.addressing import normalize_email
from bulletin.recipients import validation
from bulletin.schemas import RequestBody

GroupName = Annotated[str, AfterValidator(validation.check_group)]
CategoryName = Annotated[str, AfterValidator(validation.check_category)]
ExternalId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f/]+$")]
ClockTime = Annotated[str, AfterValidator(validation.check_clock)]
TimeZone = Annotated[str, AfterValidator(validation.check_timezone)]
Attributes = Annotated[
    dict[str, Any],
    AfterValidator(validation.check_attributes),
    Field(
        description=(
            "Free data, available to templates. Limits: nested at most "
            f"{jsonvalue.MAX_DEPTH} levels, {jsonvalue.MAX_OBJECT_KEYS} keys per object "
            f"(of up to {jsonvalue.MAX_KEY_CHARACTERS} characters), "
            f"{jsonvalue.MAX_ARRAY_ITEMS} items per array, strings of up to "
            f"{jsonvalue.MAX_STRING_CHARACTERS} characters without control characters, "
            f"integers within ±{jsonvalue.MAX_SAFE_INTEGER}, no NaN or Infinity, "
            f"{jsonvalue.MAX_FIELD_BYTES} bytes in all."
        ),
        json_schema_extra={"maxProperties": jsonvalue.MAX_OBJECT_KEYS},
    ),
]


class ProfileFields(RequestBody):
    """A recipient's own fields. Phone numbers are normalized to E.164."""

    name: str | None = Field(default=None, max_length=255)
    email: Annotated[str, Field(max_length=320), AfterValidator(normalize_email)] | None = None
    phone: str | None = Field(
        default=None, max_length=40, description="Any format; stored as E.164."
    )
    whatsapp: str | None = Field(
        default=None, max_length=40, description="WhatsApp number; defaults to the phone."
    )
    timezone: TimeZone | None = Field(
        default=None, description="IANA name, such as Africa/Johannesburg."
    )
    locale: Annotated[str, Field(max_length=35), AfterValidator(validation.check_locale)] | None = (
        None
    )
    attributes: Attributes = Field(default_factory=dict)


class RecipientFields(ProfileFields):
    """A recipient as the organization describes them. Phone numbers are normalized to E.164."""

    groups: list[GroupName] = Field(default_factory=list, max_length=100)


class InlineRecipient(ProfileFields):
    """A recipient described where they are sent to (an event names its people this way).

    Fields given replace the stored ones (``null`` clears one, ``{}`` the attributes); fields
    absent are kept, or empty for a new recipient. A WhatsApp number given as ``null``, or
    absent for a new recipient, is the phone given with it (as in PUT). Groups are not set
    here. A deactivated recipient is neither changed nor sent to.
    """

    external_id: ExternalId


class RecipientPut(RecipientFields):
    """Body of ``PUT /v1/recipients/{external_id}``; ``external_id`` may be repeated here."""

    external_id: ExternalId | None = None


class RecipientRow(RecipientFields):
    """One row of a batch import."""

    external_id: ExternalId


class RecipientBatch(RequestBody):
    # Rows are validated one by one by the service, so that every bad row's reasons can be
    # listed; the OpenAPI document still says what a row is.
    recipients: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=10_000,
        description="Up to 10,000 recipients, as in PUT.",
        json_schema_extra={"items": RecipientRow.model_json_schema()},
    )


class Recipient(BaseModel):
    external_id: str
    name: str | None
    email: str | None
    phone: str | None
    whatsapp: str | None
    timezone: str | None
    locale: str | None
    groups: list[str]
    # As stored: PostgreSQL gives a float written with an exponent back as an integer.
    attributes: Annotated[dict[str, Any], BeforeValidator(jsonvalue.as_read)]
    active: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class RecipientPage(BaseModel):
    items: list[Recipient]
    next_cursor: str | None


class BatchResult(BaseModel):
    created: int
    updated: int


class ChannelPreferences(RequestBody):
    whatsapp: bool | None = None
    email: bool | None = None
    sms: bool | None = None


class QuietHours(RequestBody):
    """A daily window, in the recipient's time zone, when only urgent messages are sent."""

    start: ClockTime
    end: ClockTime

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours need different start and end times")
        return self


class PreferencesIn(RequestBody):
    channels: ChannelPreferences = Field(default_factory=ChannelPreferences)
    categories: dict[CategoryName, bool] = Field(default_factory=dict, max_length=200)
    quiet_hours: QuietHours | None = None


class OwnPreferencesIn(PreferencesIn):
    """Preferences as the person sets them from their preference link: those of the API, and
    the time zone their quiet hours are in (``None`` leaves it as it is)."""

    timezone: TimeZone | None = None


class Preferences(BaseModel):
    """Effective preferences: a channel not chosen explicitly is on when there is an address."""

    channels: dict[str, bool]
    categories: dict[str, bool]
    quiet_hours: QuietHours | None
