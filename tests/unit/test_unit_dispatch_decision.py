"""``decide``: at dispatch, send, suppress (and why) or defer a claimed delivery."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from bulletin.recipients.models import Recipient
from bulletin.worker.policy import (
    Decision,
    Defer,
    MessageFacts,
    Send,
    Suppress,
    decide,
    quiet_until,
)

NOON = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
EMAIL = "ada@example.org"
PHONE = "+27821234567"
WHATSAPP = "+27829876543"
ALL_CHANNELS = ("whatsapp", "email", "sms")


def recipient(
    *,
    active: bool = True,
    email: str | None = EMAIL,
    phone: str | None = PHONE,
    whatsapp: str | None = WHATSAPP,
    pref_whatsapp: bool | None = None,
    pref_email: bool | None = None,
    pref_sms: bool | None = None,
    categories: dict[str, bool] | None = None,
    quiet_start: str | None = None,
    quiet_end: str | None = None,
    timezone: str | None = None,
) -> Recipient:
    """A recipient in memory, with every attribute ``decide`` reads set explicitly."""
    return Recipient(
        active=active,
        email=email,
        phone=phone,
        whatsapp=whatsapp,
        pref_whatsapp=pref_whatsapp,
        pref_email=pref_email,
        pref_sms=pref_sms,
        categories=categories if categories is not None else {},
        quiet_start=quiet_start,
        quiet_end=quiet_end,
        timezone=timezone,
    )


def message(
    *,
    channels: tuple[str, ...] = ALL_CHANNELS,
    routing: str = "first",
    category: str | None = None,
    urgent: bool = False,
) -> MessageFacts:
    return MessageFacts(
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        title="Office closed",
        body="The office is closed on Friday.",
        channels=channels,
        routing=routing,
        category=category,
        urgent=urgent,
    )


class SuppressionList:
    """A fake suppression list that records what it was asked."""

    def __init__(self, *entries: tuple[str, str]) -> None:
        self.entries = set(entries)
        self.asked: list[tuple[str, str]] = []

    def __call__(self, channel: str, address: str) -> bool:
        self.asked.append((channel, address))
        return (channel, address) in self.entries


def run(
    person: Recipient,
    msg: MessageFacts,
    *,
    channel: str = "whatsapp",
    suppressed: SuppressionList | None = None,
    taken: frozenset[str] = frozenset(),
    now: dt.datetime = NOON,
    default_timezone: str = "UTC",
) -> Decision:
    return decide(
        channel=channel,
        message=msg,
        recipient=person,
        is_suppressed=suppressed or SuppressionList(),
        taken=taken,
        now=now,
        default_timezone=default_timezone,
    )


def reason_of(decision: Decision) -> str:
    assert isinstance(decision, Suppress), decision
    return decision.reason


@pytest.mark.parametrize("channel", ALL_CHANNELS)
def test_reachable_recipient_is_sent_to_on_the_claimed_channel(channel: str) -> None:
    expected = {"whatsapp": WHATSAPP, "email": EMAIL, "sms": PHONE}[channel]
    assert run(recipient(), message(), channel=channel) == Send(channel, expected)


def test_deactivated_recipient_is_suppressed() -> None:
    decision = run(recipient(active=False), message(urgent=True))
    assert "deactivated" in reason_of(decision)


def test_category_opted_out_is_suppressed() -> None:
    person = recipient(categories={"payroll": False})
    decision = run(person, message(category="payroll"))
    assert "payroll" in reason_of(decision)


@pytest.mark.parametrize(
    "categories",
    [
        pytest.param({}, id="absent"),
        pytest.param({"payroll": True}, id="opted-in"),
        pytest.param({"social": False}, id="other-category-off"),
    ],
)
def test_category_not_opted_out_is_sent(categories: dict[str, bool]) -> None:
    decision = run(recipient(categories=categories), message(category="payroll"))
    assert decision == Send("whatsapp", WHATSAPP)


def test_message_without_category_ignores_category_opt_outs() -> None:
    decision = run(recipient(categories={"payroll": False}), message(category=None))
    assert decision == Send("whatsapp", WHATSAPP)


@pytest.mark.parametrize(
    ("channel", "missing", "noun"),
    [
        ("whatsapp", "whatsapp", "WhatsApp number"),
        ("email", "email", "email address"),
        ("sms", "phone", "phone number"),
    ],
)
def test_routing_all_without_an_address_is_suppressed_naming_it(
    channel: str, missing: str, noun: str
) -> None:
    person = recipient()
    setattr(person, missing, None)
    decision = run(person, message(routing="all"), channel=channel)
    assert noun in reason_of(decision)


@pytest.mark.parametrize(
    ("channel", "pref"),
    [("whatsapp", "pref_whatsapp"), ("email", "pref_email"), ("sms", "pref_sms")],
)
def test_channel_turned_off_by_the_recipient_is_suppressed(channel: str, pref: str) -> None:
    person = recipient()
    setattr(person, pref, False)
    reason = reason_of(run(person, message(routing="all"), channel=channel))
    assert channel in reason
    assert "turned off" in reason


@pytest.mark.parametrize("choice", [True, None])
def test_channel_chosen_or_left_default_is_sent(choice: bool | None) -> None:
    decision = run(recipient(pref_email=choice), message(routing="all"), channel="email")
    assert decision == Send("email", EMAIL)


def test_suppressed_address_is_suppressed() -> None:
    suppressed = SuppressionList(("sms", PHONE))
    decision = run(recipient(), message(routing="all"), channel="sms", suppressed=suppressed)
    assert "suppression list" in reason_of(decision)
    assert suppressed.asked == [("sms", PHONE)]


def test_suppression_is_per_channel() -> None:
    # The same number on the suppression list for SMS does not block WhatsApp.
    suppressed = SuppressionList(("sms", WHATSAPP))
    decision = run(recipient(), message(routing="all"), channel="whatsapp", suppressed=suppressed)
    assert decision == Send("whatsapp", WHATSAPP)


def test_routing_first_moves_to_the_next_usable_channel() -> None:
    decision = run(recipient(whatsapp=None), message(), channel="whatsapp")
    assert decision == Send("email", EMAIL)


def test_routing_first_follows_the_messages_order() -> None:
    msg = message(channels=("whatsapp", "sms", "email"))
    decision = run(recipient(whatsapp=None), msg, channel="whatsapp")
    assert decision == Send("sms", PHONE)


def test_routing_first_skips_taken_channels() -> None:
    decision = run(
        recipient(whatsapp=None), message(), channel="whatsapp", taken=frozenset({"email"})
    )
    assert decision == Send("sms", PHONE)


def test_routing_first_skips_channels_that_are_unusable_too() -> None:
    suppressed = SuppressionList(("email", EMAIL))
    decision = run(recipient(whatsapp=None), message(), channel="whatsapp", suppressed=suppressed)
    assert decision == Send("sms", PHONE)


def test_routing_first_never_moves_to_a_channel_the_message_does_not_use() -> None:
    msg = message(channels=("whatsapp", "email"))
    decision = run(recipient(whatsapp=None, pref_email=False), msg, channel="whatsapp")
    assert isinstance(decision, Suppress)


def test_routing_all_does_not_move_to_another_channel() -> None:
    decision = run(recipient(whatsapp=None), message(routing="all"), channel="whatsapp")
    assert isinstance(decision, Suppress)


def test_routing_first_with_nothing_usable_lists_every_channels_reason() -> None:
    person = recipient(whatsapp=None, pref_email=False)
    suppressed = SuppressionList(("sms", PHONE))
    reason = reason_of(run(person, message(), channel="whatsapp", suppressed=suppressed))
    assert "whatsapp: no WhatsApp number" in reason
    assert "email: email turned off by the recipient" in reason
    assert "sms: phone number is on the suppression list" in reason


def test_routing_first_with_the_rest_taken_is_suppressed() -> None:
    taken = frozenset({"email", "sms"})
    reason = reason_of(run(recipient(whatsapp=None), message(), channel="whatsapp", taken=taken))
    assert "WhatsApp number" in reason


QUIET_NOW = dt.datetime(2026, 6, 15, 20, 0, tzinfo=dt.UTC)  # 22:00 in Johannesburg


def quiet_person(timezone: str | None = "Africa/Johannesburg") -> Recipient:
    return recipient(quiet_start="21:00", quiet_end="07:00", timezone=timezone)


def test_quiet_hours_defer_until_they_end() -> None:
    decision = run(quiet_person(), message(), now=QUIET_NOW)
    assert isinstance(decision, Defer)
    expected = quiet_until(QUIET_NOW, "Africa/Johannesburg", "21:00", "07:00")
    assert decision.until == expected
    assert decision.until == dt.datetime(2026, 6, 16, 5, 0, tzinfo=dt.UTC)
    assert "07:00" in decision.reason


def test_quiet_hours_apply_to_the_channel_routing_moved_to() -> None:
    person = quiet_person()
    person.whatsapp = None
    decision = run(person, message(), now=QUIET_NOW)
    assert isinstance(decision, Defer)


def test_urgent_message_is_sent_in_quiet_hours() -> None:
    decision = run(quiet_person(), message(urgent=True), now=QUIET_NOW)
    assert decision == Send("whatsapp", WHATSAPP)


def test_outside_quiet_hours_is_sent() -> None:
    decision = run(quiet_person(), message(), now=NOON)
    assert decision == Send("whatsapp", WHATSAPP)


def test_suppression_wins_over_quiet_hours() -> None:
    person = quiet_person()
    person.pref_whatsapp = False
    decision = run(person, message(routing="all"), now=QUIET_NOW)
    assert isinstance(decision, Suppress)


def test_default_timezone_is_used_when_the_recipient_has_none() -> None:
    # 19:30 UTC is 21:30 in Johannesburg (quiet) but 19:30 in UTC (not quiet).
    now = dt.datetime(2026, 6, 15, 19, 30, tzinfo=dt.UTC)
    person = quiet_person(timezone=None)
    in_johannesburg = run(person, message(), now=now, default_timezone="Africa/Johannesburg")
    assert isinstance(in_johannesburg, Defer)
    assert in_johannesburg.until == dt.datetime(2026, 6, 16, 5, 0, tzinfo=dt.UTC)
    assert run(person, message(), now=now, default_timezone="UTC") == Send("whatsapp", WHATSAPP)


def test_recipients_own_timezone_wins_over_the_default() -> None:
    now = dt.datetime(2026, 6, 15, 19, 30, tzinfo=dt.UTC)
    person = quiet_person(timezone="UTC")
    decision = run(person, message(), now=now, default_timezone="Africa/Johannesburg")
    assert decision == Send("whatsapp", WHATSAPP)
