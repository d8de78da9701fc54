"""One mapping of a recipient's address and choice per channel, in Python and in SQL."""

from __future__ import annotations

import pytest

from bulletin.recipients.addresses import (
    CHANNELS,
    address_column,
    address_of,
    addresses_of,
    choice_column,
    enabled,
    explicit_choice,
    set_choice,
)
from bulletin.recipients.models import Recipient


def _person() -> Recipient:
    return Recipient(email="ada@example.org", phone="+27821234567", whatsapp="+27829876543")


@pytest.mark.parametrize(
    ("channel", "address"),
    [("email", "ada@example.org"), ("sms", "+27821234567"), ("whatsapp", "+27829876543")],
)
def test_each_channel_has_its_own_address_and_choice(channel: str, address: str) -> None:
    person = _person()
    assert address_of(person, channel) == address
    assert getattr(person, address_column(channel).key) == address
    set_choice(person, channel, False)
    assert explicit_choice(person, channel) is False
    assert getattr(person, choice_column(channel).key) is False
    assert [c for c in CHANNELS if explicit_choice(person, c) is False] == [channel]


def test_without_a_choice_a_channel_is_on_where_there_is_an_address() -> None:
    person = Recipient(email="ada@example.org")
    assert [c for c in CHANNELS if enabled(person, c)] == ["email"]
    set_choice(person, "sms", True)
    set_choice(person, "email", False)
    assert [c for c in CHANNELS if enabled(person, c)] == ["sms"]
    assert addresses_of(person) == ["ada@example.org"]


def test_an_unknown_channel_has_no_address_and_no_choice() -> None:
    assert address_of(_person(), "pigeon") is None
    assert explicit_choice(_person(), "pigeon") is None
