"""Request bodies of announcements and notifications."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from bulletin.messages.schemas import AnnouncementIn, Audience, NotificationIn


def announcement(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"title": "Office closed", "body": "Closed on Friday."}
    body["audience"] = {"all": True}
    body.update(fields)
    return body


def test_minimal_announcement_gets_the_documented_defaults() -> None:
    parsed = AnnouncementIn.model_validate(announcement())
    assert parsed.channels == ["whatsapp", "email", "sms"]
    assert parsed.routing == "first"
    assert parsed.urgent is False
    assert parsed.send_at is None
    assert parsed.category is None
    assert parsed.audience == Audience(all=True)


def test_default_channels_are_not_shared_between_messages() -> None:
    first = AnnouncementIn.model_validate(announcement())
    first.channels.remove("sms")
    assert AnnouncementIn.model_validate(announcement()).channels == ["whatsapp", "email", "sms"]


@pytest.mark.parametrize(
    "body",
    [
        announcement(titel="typo"),
        announcement(audience={"all": True, "everyone": True}),
        {"title": "t", "body": "b", "recipient": "p1", "priority": "high"},
    ],
)
def test_unknown_fields_are_rejected(body: dict[str, Any]) -> None:
    model = NotificationIn if "recipient" in body else AnnouncementIn
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    assert "extra_forbidden" in {error["type"] for error in caught.value.errors()}


@pytest.mark.parametrize(
    "audience",
    [
        {"all": True},
        {"groups": ["Sales"]},
        {"groups": ["Sales", "Cape Town"]},
        {"recipients": ["p1", "p2"]},
    ],
)
def test_audience_with_exactly_one_kind_is_accepted(audience: dict[str, Any]) -> None:
    assert AnnouncementIn.model_validate(announcement(audience=audience)).audience == Audience(
        **audience
    )


@pytest.mark.parametrize(
    "audience",
    [
        pytest.param({}, id="none"),
        pytest.param({"all": None}, id="all-null"),
        pytest.param({"all": False}, id="all-false"),
        pytest.param({"all": True, "groups": ["Sales"]}, id="all-and-groups"),
        pytest.param({"all": True, "recipients": ["p1"]}, id="all-and-recipients"),
        pytest.param({"groups": ["Sales"], "recipients": ["p1"]}, id="groups-and-recipients"),
        pytest.param({"groups": []}, id="empty-groups"),
        pytest.param({"recipients": []}, id="empty-recipients"),
        pytest.param({"groups": [""]}, id="blank-group"),
        pytest.param({"recipients": ["a/b"]}, id="bad-external-id"),
    ],
)
def test_audience_without_exactly_one_kind_is_rejected(audience: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"(?m)^audience\b"):
        AnnouncementIn.model_validate(announcement(audience=audience))


def test_audience_is_required_on_announcements() -> None:
    body = announcement()
    del body["audience"]
    with pytest.raises(ValidationError, match=r"(?m)^audience\n  Field required"):
        AnnouncementIn.model_validate(body)


@pytest.mark.parametrize("channels", [["sms"], ["email", "whatsapp"], ["sms", "email", "whatsapp"]])
def test_channels_keep_their_order(channels: list[str]) -> None:
    assert AnnouncementIn.model_validate(announcement(channels=channels)).channels == channels


@pytest.mark.parametrize(
    "channels",
    [
        pytest.param([], id="empty"),
        pytest.param(["sms", "sms"], id="duplicate"),
        pytest.param(["email", "sms", "email"], id="duplicate-apart"),
        pytest.param(["fax"], id="unknown"),
    ],
)
def test_bad_channel_lists_are_rejected(channels: list[str]) -> None:
    with pytest.raises(ValidationError, match=r"(?m)^channels\b"):
        AnnouncementIn.model_validate(announcement(channels=channels))


def test_duplicate_channels_are_explained() -> None:
    with pytest.raises(ValidationError, match="each channel may be named once"):
        NotificationIn.model_validate(
            {"title": "t", "body": "b", "recipient": "p1", "channels": ["sms", "sms"]}
        )


@pytest.mark.parametrize("routing", ["first", "all"])
def test_routing_values(routing: str) -> None:
    assert AnnouncementIn.model_validate(announcement(routing=routing)).routing == routing


def test_unknown_routing_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"(?m)^routing\n  Input should be 'first' or 'all'"):
        AnnouncementIn.model_validate(announcement(routing="any"))


@pytest.mark.parametrize(
    ("send_at", "utc"),
    [
        ("2026-05-01T09:00:00+02:00", dt.datetime(2026, 5, 1, 7, 0, tzinfo=dt.UTC)),
        ("2026-05-01T07:00:00Z", dt.datetime(2026, 5, 1, 7, 0, tzinfo=dt.UTC)),
        ("2026-05-01T03:00:00-04:00", dt.datetime(2026, 5, 1, 7, 0, tzinfo=dt.UTC)),
    ],
)
def test_send_at_with_an_offset_is_accepted(send_at: str, utc: dt.datetime) -> None:
    parsed = AnnouncementIn.model_validate(announcement(send_at=send_at))
    assert parsed.send_at == utc
    assert parsed.send_at is not None
    assert parsed.send_at.utcoffset() is not None


@pytest.mark.parametrize("send_at", ["2026-05-01T09:00:00", "2026-05-01 09:00"])
def test_send_at_without_an_offset_is_rejected(send_at: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AnnouncementIn.model_validate(announcement(send_at=send_at))
    assert [error["loc"] for error in caught.value.errors()] == [("send_at",)]
    with pytest.raises(ValidationError, match=r"(?m)^send_at\n  Input should have timezone"):
        AnnouncementIn.model_validate_json(json.dumps(announcement(send_at=send_at)))


def test_naive_datetime_object_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"(?m)^send_at\n  Input should have timezone"):
        AnnouncementIn.model_validate(announcement(send_at=dt.datetime(2026, 5, 1, 9, 0)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", ""),
        ("body", ""),
        ("title", "x" * 501),
        ("category", "Payroll"),
        ("urgent", "very"),
    ],
)
def test_bad_message_fields_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        AnnouncementIn.model_validate(announcement(**{field: value}))
    assert {error["loc"][0] for error in caught.value.errors()} == {field}


def test_notification_needs_a_recipient() -> None:
    parsed = NotificationIn.model_validate({"title": "t", "body": "b", "recipient": "p1"})
    assert parsed.recipient == "p1"
    with pytest.raises(ValidationError, match=r"(?m)^recipient\n  Field required"):
        NotificationIn.model_validate({"title": "t", "body": "b"})
