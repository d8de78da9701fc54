"""Normalizing what people type about recipients."""

from __future__ import annotations

import pytest

from bulletin.channels.addressing import normalize_email, normalize_phone
from bulletin.recipients.validation import (
    check_category,
    check_clock,
    check_group,
    check_locale,
    check_timezone,
)


@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("+27 82 123 4567", "+27821234567"),  # South Africa, mobile
        ("+27821234567", "+27821234567"),
        ("+27-82-123-4567", "+27821234567"),
        ("+44 7911 123456", "+447911123456"),  # UK, mobile
        ("+44 20 7031 3000", "+442070313000"),  # UK, London landline
        ("+1 650 253 0000", "+16502530000"),  # US
        ("+1 (650) 253-0000", "+16502530000"),
        ("+1.650.253.0000", "+16502530000"),
    ],
)
@pytest.mark.parametrize("region", [None, "ZA", "GB", "US"])
def test_international_numbers_normalize_to_e164_whatever_the_region(
    typed: str, e164: str, region: str | None
) -> None:
    assert normalize_phone(typed, region) == e164


@pytest.mark.parametrize(
    ("typed", "region", "e164"),
    [
        ("082 123 4567", "ZA", "+27821234567"),
        ("0821234567", "ZA", "+27821234567"),
        ("07911 123456", "GB", "+447911123456"),
        ("(650) 253-0000", "US", "+16502530000"),
        ("650-253-0000", "US", "+16502530000"),
    ],
)
def test_national_numbers_are_read_in_the_region(typed: str, region: str, e164: str) -> None:
    assert normalize_phone(typed, region) == e164


@pytest.mark.parametrize("typed", ["082 123 4567", "(650) 253-0000"])
def test_national_number_without_a_region_asks_for_the_country_code(typed: str) -> None:
    with pytest.raises(ValueError, match=r"\+country code"):
        normalize_phone(typed, None)


@pytest.mark.parametrize(
    ("typed", "region"),
    [
        ("+27 12", None),  # too short
        ("+1 555 0100", None),
        ("+27 82 123 4567 8901 23", None),  # too long
        ("hello", None),
        ("", None),
        ("", "ZA"),
        ("+999 123 456 789", None),  # no such country code
        ("123", "ZA"),
    ],
)
def test_invalid_numbers_raise(typed: str, region: str | None) -> None:
    with pytest.raises(ValueError, match="phone number"):
        normalize_phone(typed, region)


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("ada@example.org", "ada@example.org"),
        ("ada@EXAMPLE.ORG", "ada@example.org"),
        ("Ada.Lovelace@Example.Org", "Ada.Lovelace@example.org"),
        ("first+tag@mail.example.co.za", "first+tag@mail.example.co.za"),
    ],
)
def test_email_normalizes_the_domain(typed: str, normalized: str) -> None:
    assert normalize_email(typed) == normalized


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "ada",
        "ada@",
        "@example.org",
        "ada@example",
        "ada@@example.org",
        "ada lovelace@example.org",
        "ada@example.org ",
        "ada@exa mple.org",
    ],
)
def test_bad_email_raises(typed: str) -> None:
    with pytest.raises(ValueError, match="not an email address"):
        normalize_email(typed)


@pytest.mark.parametrize(
    "zone", ["Africa/Johannesburg", "UTC", "America/New_York", "Europe/London"]
)
def test_iana_zones_are_accepted(zone: str) -> None:
    assert check_timezone(zone) == zone


@pytest.mark.parametrize(
    "zone",
    ["Mars/Base", "../etc/passwd", "", "/etc/localtime", "Africa/", "Africa/Johannesburg "],
)
def test_other_zones_are_rejected(zone: str) -> None:
    with pytest.raises(ValueError, match="IANA time zone"):
        check_timezone(zone)


@pytest.mark.parametrize(
    ("tag", "normalized"),
    [
        ("en", "en"),
        ("fil", "fil"),
        ("pt-BR", "pt-BR"),
        ("pt_BR", "pt-BR"),
        ("zh-Hant-TW", "zh-Hant-TW"),
        ("zh_Hant_TW", "zh-Hant-TW"),
    ],
)
def test_locale_tags_are_accepted_with_hyphens(tag: str, normalized: str) -> None:
    assert check_locale(tag) == normalized


@pytest.mark.parametrize(
    "tag",
    ["", "e", "english", "en-", "en--US", "12", "en US", "pt-BR!", "en\n", "en-US\n"],
)
def test_bad_locale_tags_are_rejected(tag: str) -> None:
    with pytest.raises(ValueError, match="locale"):
        check_locale(tag)


@pytest.mark.parametrize("clock", ["00:00", "07:00", "12:30", "19:05", "23:59"])
def test_clock_times_are_accepted(clock: str) -> None:
    assert check_clock(clock) == clock


@pytest.mark.parametrize(
    "clock",
    ["24:00", "7:00", "12:60", "", "07:00:00", "0700", "07.00", " 07:00", "07:00 ", "07:00\n"],
)
def test_bad_clock_times_are_rejected(clock: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        check_clock(clock)


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("Sales", "Sales"),
        ("  Sales ", "Sales"),
        ("Cape Town / Site 2", "Cape Town / Site 2"),
        ("Entwicklung & Qualität", "Entwicklung & Qualität"),
        ("x" * 100, "x" * 100),
    ],
)
def test_group_names_are_trimmed(name: str, normalized: str) -> None:
    assert check_group(name) == normalized


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "a\tb", "a\x00b", "line\nbreak"])
def test_bad_group_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="group name"):
        check_group(name)


@pytest.mark.parametrize("category", ["payroll", "hr.announcements", "a", "0-day", "x_y", "a" * 64])
def test_categories_are_accepted(category: str) -> None:
    assert check_category(category) == category


@pytest.mark.parametrize(
    "category",
    ["", "Payroll", "_x", "-x", ".x", "a" * 65, "pay roll", "payroll\n", "café"],
)
def test_bad_categories_are_rejected(category: str) -> None:
    with pytest.raises(ValueError, match="not a category"):
        check_category(category)
