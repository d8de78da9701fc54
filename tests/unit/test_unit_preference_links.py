"""Preference-link tokens: short, bound to one person of one organization, and unforgeable."""

from __future__ import annotations

import uuid

import pytest

from bulletin.recipients.links import (
    MAC_BYTES,
    base36,
    form_check,
    preference_token,
    token_is_valid,
    token_recipient_id,
    unsubscribe_url,
)

KEY = b"installation-one-key"
OTHER_KEY = b"installation-two-key"
ORG = uuid.UUID("0190aaaa-0000-7000-8000-000000000001")


def test_base36_round_trips() -> None:
    for number in (0, 1, 35, 36, 123_456_789, 2**63 - 1):
        assert int(base36(number), 36) == number
    with pytest.raises(ValueError, match="non-negative"):
        base36(-1)


def test_a_token_round_trips_and_is_short_enough_for_an_sms() -> None:
    token = preference_token(KEY, ORG, 123_456)
    assert token_recipient_id(token) == 123_456
    assert token_is_valid(KEY, token, ORG)
    assert MAC_BYTES * 8 >= 96
    assert len(token) <= 13 + 1 + 16
    assert len(f"https://b.example/p/{token}") < 50


def test_a_token_edited_to_another_recipient_is_refused() -> None:
    token = preference_token(KEY, ORG, 1000)
    _, mac = token.split(".")
    edited = f"{base36(1001)}.{mac}"
    assert token_recipient_id(edited) == 1001  # well formed, so only the MAC can refuse it
    assert not token_is_valid(KEY, edited, ORG)


def test_a_truncated_or_extended_token_is_refused() -> None:
    token = preference_token(KEY, ORG, 77)
    for bad in (token[:-1], token[:-8], token.split(".")[0], token + "A", token + "/", ""):
        assert not token_is_valid(KEY, bad, ORG)
    assert token_recipient_id(token[:-1]) is None


def test_a_token_of_another_installation_or_organization_is_refused() -> None:
    token = preference_token(KEY, ORG, 77)
    assert not token_is_valid(OTHER_KEY, token, ORG)
    assert not token_is_valid(KEY, token, uuid.uuid4())
    assert not token_is_valid(KEY, token, None)


def test_one_changed_character_of_the_mac_is_refused() -> None:
    token = preference_token(KEY, ORG, 5)
    for i in range(token.index(".") + 1, len(token)):
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert not token_is_valid(KEY, changed, ORG)


def test_an_id_beyond_the_database_range_is_malformed() -> None:
    assert token_recipient_id(f"{base36(2**63)}.{'A' * 16}") is None
    assert token_recipient_id(f"ABC.{'A' * 16}") is None  # ids are lower case


def test_the_form_check_differs_from_the_link_and_per_link() -> None:
    one, two = preference_token(KEY, ORG, 1), preference_token(KEY, ORG, 2)
    assert form_check(KEY, one) != form_check(KEY, two)
    assert form_check(KEY, one) not in one


def test_the_unsubscribe_link_names_the_category_when_there_is_one() -> None:
    assert unsubscribe_url("https://b.example/p/x.y", None) == "https://b.example/p/x.y/unsubscribe"
    assert (
        unsubscribe_url("https://b.example/p/x.y", "payroll")
        == "https://b.example/p/x.y/unsubscribe?category=payroll"
    )
