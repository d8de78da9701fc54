"""Text cut to a provider's length limit: within the limit, never inside a character, and the
preference link kept whole."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulletin.channels.base import OutboundMessage
from bulletin.channels.configs import TwilioConfig, WhatsAppCloudConfig
from bulletin.channels.text import ELLIPSIS, fit, preferences_line, shorten, utf16_length
from bulletin.channels.twilio import BODY_LIMIT, TwilioProvider
from bulletin.channels.whatsapp import TEXT_LIMIT, WhatsAppCloudProvider
from bulletin.devservers.twilio import TwilioServer
from support.outbound import outbound_message

LINK = "https://bulletin.example.org/p/abc123"


@given(st.text(max_size=300), st.integers(min_value=2, max_value=200))
def test_a_shortened_text_is_within_the_limit_and_starts_like_the_original(
    text: str, limit: int
) -> None:
    cut = shorten(text, limit)
    assert utf16_length(cut) <= limit
    if utf16_length(text) <= limit:
        assert cut == text
    else:
        assert cut.endswith(ELLIPSIS)
        assert text.startswith(cut.removesuffix(ELLIPSIS))


@given(st.text(max_size=300), st.integers(min_value=0, max_value=120))
def test_the_preference_link_survives_the_cut(text: str, limit_extra: int) -> None:
    whole = text + preferences_line(LINK)
    limit = utf16_length(preferences_line(LINK)) + 1 + limit_extra
    cut = fit(whole, limit, LINK)
    assert utf16_length(cut) <= limit
    assert cut.endswith(preferences_line(LINK))


def test_utf16_length_counts_characters_beyond_the_bmp_twice() -> None:
    assert utf16_length("aé") == 2
    assert utf16_length("😀") == 2
    assert utf16_length("a😀b") == 4


@pytest.mark.parametrize(
    "drawn_as_one",
    ["👍🏽", "👩‍👩‍👧", "🇿🇦", "é", "1️⃣"],
    ids=["skin tone", "joined family", "flag", "combining accent", "keycap"],
)
def test_a_cut_never_splits_what_is_drawn_as_one_character(drawn_as_one: str) -> None:
    text = "x" * 7 + drawn_as_one * 5
    for limit in range(8, utf16_length(text)):
        kept = shorten(text, limit).removesuffix(ELLIPSIS)
        assert kept == "x" * 7 + drawn_as_one * ((len(kept) - 7) // len(drawn_as_one))


def message(channel: str, body: str, preferences_url: str | None = None) -> OutboundMessage:
    return outbound_message(
        channel,
        delivery_id=7,
        address="+27821234567",
        title="Notice",
        body=body,
        preferences_url=preferences_url,
    )


async def test_a_whatsapp_text_over_4096_characters_is_cut_and_keeps_its_link() -> None:
    config = WhatsAppCloudConfig(phone_number_id="1049", access_token="t")
    async with aiohttp.ClientSession() as session:
        provider = WhatsAppCloudProvider(config, session)
        long = message("whatsapp", "word " * 2000 + preferences_line(LINK), LINK)
        short = message("whatsapp", "A short notice.")
        sent = provider.payload(long)["text"]["body"]
        assert provider.payload(short)["text"]["body"] == "*Notice*\n\nA short notice."
    assert utf16_length(sent) <= TEXT_LIMIT == 4096
    assert sent.endswith(ELLIPSIS + preferences_line(LINK))


async def test_an_sms_over_1600_characters_is_cut_keeps_its_link_and_twilio_takes_it() -> None:
    # The stand-in refuses a Body over 1600 UTF-16 units with Twilio's 21617.
    async with TwilioServer(account_sid="AC" + "0" * 32, auth_token="token") as server:
        config = TwilioConfig(
            account_sid=server.account_sid,
            auth_token="token",
            from_number="+14155550100",
            base_url=server.base_url,
        )
        async with aiohttp.ClientSession() as session:
            provider = TwilioProvider(config, session)
            text = "Ümlaut 😀 " * 400 + preferences_line(LINK)
            await provider.send(message("sms", text, LINK))
            await provider.send(dataclasses.replace(message("sms", "Short."), delivery_id=8))
    [long, short] = server.accepted
    body = dict(long.pairs)["Body"]
    assert utf16_length(body) <= BODY_LIMIT == 1600
    assert body.endswith(ELLIPSIS + preferences_line(LINK))
    assert dict(short.pairs)["Body"] == "Notice\nShort."
