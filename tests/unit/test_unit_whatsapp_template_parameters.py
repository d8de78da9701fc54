"""Template parameters are made acceptable to the Cloud API before they are sent.

Meta refuses a text parameter with a new-line, a tab or more than four consecutive spaces
(error 132018), an empty one, and one longer than the template allows (1024 characters in a
body with other components; ``TextParameter.maxLength`` 32768 in Meta's OpenAPI description).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bulletin.channels.base import WhatsAppTemplate
from bulletin.channels.configs import WhatsAppCloudConfig
from bulletin.channels.whatsapp import (
    EMPTY_PARAMETER,
    TEMPLATE_PARAMETER_LIMIT,
    WhatsAppCloudProvider,
    template_parameter,
)
from support.outbound import outbound_message

#: What Meta refuses with 132018.
REFUSED = re.compile(r"[\n\r\t]| {5,}")


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def assert_acceptable(text: str, limit: int = TEMPLATE_PARAMETER_LIMIT) -> None:
    assert REFUSED.search(text) is None, text
    assert text, "an empty parameter is refused"
    assert text == text.strip()
    assert not any(char.isspace() and char != " " for char in text), text
    assert not any(unicodedata.category(char) == "Cc" for char in text), text
    assert utf16_length(text) <= limit


ANNOUNCEMENT = (
    "Water outage\n\n"
    "The main on Elm Street burst this morning.\r\n"
    "Repairs\tshould be done     by 15:00.\n"
    "\n \n"
    "What to do\n"
    "- fill a bucket\n"
    "- boil tap water  for a day\n"
)


def test_a_multi_paragraph_announcement_goes_out_on_one_readable_line() -> None:
    assert template_parameter(ANNOUNCEMENT) == (
        "Water outage · The main on Elm Street burst this morning. Repairs should be done by"
        " 15:00. What to do · - fill a bucket · - boil tap water for a day"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ada", "Ada"),
        ("  Ada  Lovelace ", "Ada Lovelace"),
        ("line one,\nline two", "line one, line two"),
        ("Heading\nText", "Heading · Text"),
        ("a\u2028b\u2029c\x85d\x0be\x0cf", "a · b · c · d · e · f"),
        ("tab\there", "tab here"),
        ("nul\x00and\x7fdel", "nul and del"),
        ("wide\u3000\u00a0space", "wide space"),
        ("", EMPTY_PARAMETER),
        (" \n\t\r\n ", EMPTY_PARAMETER),
    ],
)
def test_whitespace_and_line_breaks(text: str, expected: str) -> None:
    assert template_parameter(text) == expected


def test_a_long_text_is_cut_at_the_limit_with_an_ellipsis() -> None:
    text = "word " * 400

    cut = template_parameter(text)

    assert utf16_length(cut) <= TEMPLATE_PARAMETER_LIMIT
    assert utf16_length(cut) >= TEMPLATE_PARAMETER_LIMIT - 2
    assert cut.endswith("word…") or cut.endswith("wor…") or cut.endswith("w…")
    assert text.startswith(cut.removesuffix("…"))


def test_a_text_at_the_limit_is_kept_whole() -> None:
    text = "x" * TEMPLATE_PARAMETER_LIMIT

    assert template_parameter(text) == text


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        # An emoji outside the Basic Multilingual Plane is two UTF-16 units: never half of one.
        ("ab😀😀😀", 5, "ab😀…"),
        ("ab😀😀😀", 4, "ab…"),
        # A family emoji is joined by zero-width joiners: never cut between its members.
        ("ok 👨\u200d👩\u200d👧 there", 9, "ok…"),
        # An accent written as a combining mark stays with its letter.
        ("cafe\u0301 au lait", 5, "caf…"),
        # A flag is a pair of regional indicators.
        ("go 🇿🇦🇿🇦🇿🇦", 8, "go 🇿🇦…"),
        # A skin tone modifier stays with its emoji.
        ("hi 👋🏽👋🏽", 8, "hi 👋🏽…"),
        ("hi 👋🏽👋🏽", 7, "hi…"),
    ],
)
def test_a_cut_never_splits_what_draws_as_one_character(
    text: str, limit: int, expected: str
) -> None:
    assert template_parameter(text, limit) == expected


@given(st.text(), st.integers(min_value=1, max_value=TEMPLATE_PARAMETER_LIMIT))
@example(ANNOUNCEMENT, TEMPLATE_PARAMETER_LIMIT)
@example("\n" * 3 + "x" * 5000 + "\t", 7)
@example("a" + " " * 10 + "b", 3)
def test_whatever_the_text_the_parameter_is_acceptable(text: str, limit: int) -> None:
    assert_acceptable(template_parameter(text, limit), limit)


@given(st.text(alphabet=st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=200))
def test_text_that_is_already_acceptable_keeps_its_words(text: str) -> None:
    words = text.split()

    assert template_parameter(text).split() == (words or [EMPTY_PARAMETER])


@pytest.fixture
async def provider() -> AsyncIterator[WhatsAppCloudProvider]:
    config = WhatsAppCloudConfig.model_validate(
        {"phone_number_id": "106540352242922", "access_token": "EAAG-token"}
    )
    async with aiohttp.ClientSession() as session:
        yield WhatsAppCloudProvider(config, session)


async def test_the_template_payload_carries_acceptable_parameters(
    provider: WhatsAppCloudProvider,
) -> None:
    message = outbound_message(
        "whatsapp",
        delivery_id=7,
        address="+27821234567",
        title="Water outage",
        body=ANNOUNCEMENT,
        whatsapp_template=WhatsAppTemplate(
            "announcement", "en", ("Water outage", ANNOUNCEMENT, "x" * 5000)
        ),
    )

    [component] = provider.payload(message)["template"]["components"]

    texts = [parameter["text"] for parameter in component["parameters"]]
    assert texts[0] == "Water outage"
    assert texts[1] == template_parameter(ANNOUNCEMENT)
    assert texts[2] == "x" * (TEMPLATE_PARAMETER_LIMIT - 1) + "…"
    for text in texts:
        assert_acceptable(text)
