"""Request bodies of the recipients API: what a caller may send, and how it is normalized."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bulletin.recipients.schemas import (
    ChannelPreferences,
    PreferencesIn,
    QuietHours,
    RecipientPut,
    RecipientRow,
)


def error_types(exc: ValidationError) -> set[str]:
    return {str(error["type"]) for error in exc.errors()}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (RecipientPut, {"nmae": "Ada"}),
        (RecipientRow, {"external_id": "p1", "phone_number": "+27821234567"}),
        (QuietHours, {"start": "22:00", "end": "07:00", "zone": "UTC"}),
        (ChannelPreferences, {"fax": True}),
        (PreferencesIn, {"channel": {"sms": False}}),
        (PreferencesIn, {"channels": {"pigeon": True}}),
    ],
)
def test_unknown_fields_are_rejected(model: type[Any], body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    assert "extra_forbidden" in error_types(caught.value)


def test_recipient_fields_are_normalized() -> None:
    put = RecipientPut.model_validate(
        {
            "name": "Ada",
            "email": "Ada@Example.ORG",
            "timezone": "Africa/Johannesburg",
            "locale": "pt_BR",
            "groups": ["  Sales ", "Cape Town"],
        }
    )
    assert put.email == "Ada@example.org"
    assert put.timezone == "Africa/Johannesburg"
    assert put.locale == "pt-BR"
    assert put.groups == ["Sales", "Cape Town"]
    assert put.external_id is None


def test_empty_put_is_valid_with_defaults() -> None:
    put = RecipientPut.model_validate({})
    assert put.groups == []
    assert put.attributes == {}
    assert put.email is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "not-an-email"),
        ("timezone", "Mars/Base"),
        ("locale", "english!"),
        ("groups", [""]),
        ("groups", ["x"] * 101),
        ("name", "x" * 256),
    ],
)
def test_bad_recipient_fields_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        RecipientPut.model_validate({field: value})
    assert {error["loc"][0] for error in caught.value.errors()} == {field}


@pytest.mark.parametrize("external_id", ["", "a/b", "tab\there", "x" * 256])
def test_bad_external_ids_are_rejected(external_id: str) -> None:
    with pytest.raises(ValidationError, match=r"(?m)^external_id\n"):
        RecipientRow.model_validate({"external_id": external_id})


def test_batch_row_needs_an_external_id() -> None:
    with pytest.raises(ValidationError) as caught:
        RecipientRow.model_validate({"name": "Ada"})
    assert "missing" in error_types(caught.value)


def test_quiet_hours_may_cross_midnight() -> None:
    hours = QuietHours.model_validate({"start": "22:00", "end": "07:00"})
    assert (hours.start, hours.end) == ("22:00", "07:00")


def test_quiet_hours_with_equal_start_and_end_are_rejected() -> None:
    with pytest.raises(ValidationError, match="different start and end"):
        QuietHours.model_validate({"start": "22:00", "end": "22:00"})


@pytest.mark.parametrize(("start", "end"), [("24:00", "07:00"), ("22:00", "7:00"), ("", "07:00")])
def test_quiet_hours_need_hh_mm(start: str, end: str) -> None:
    with pytest.raises(ValidationError, match="HH:MM"):
        QuietHours.model_validate({"start": start, "end": end})


def test_preferences_are_parsed() -> None:
    prefs = PreferencesIn.model_validate(
        {
            "channels": {"sms": False, "email": True},
            "categories": {"payroll": False},
            "quiet_hours": {"start": "21:00", "end": "06:30"},
        }
    )
    assert prefs.channels == ChannelPreferences(whatsapp=None, email=True, sms=False)
    assert prefs.categories == {"payroll": False}
    assert prefs.quiet_hours == QuietHours(start="21:00", end="06:30")


def test_preferences_reject_a_bad_category_name() -> None:
    with pytest.raises(ValidationError, match="not a category"):
        PreferencesIn.model_validate({"categories": {"Payroll": False}})
