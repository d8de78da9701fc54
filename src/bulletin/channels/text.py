"""Fitting text into a provider's length limit without breaking what a reader sees.

Providers count length in UTF-16 code units (Twilio's 1600-character ``Body``) or in
characters (Meta's 4096-character text, 1024-character template parameters). Counting UTF-16
units is never less than counting characters, so a text cut to a limit in units fits either
way. A cut never falls inside a sequence drawn as one character (an accent, an emoji with its
modifiers or joiners, a flag), and the text ends with an ellipsis to show it was cut.
"""

from __future__ import annotations

import unicodedata

ELLIPSIS = "…"
_ZWJ = "\u200d"


def utf16_length(text: str) -> int:
    """The length of ``text`` in UTF-16 code units (a character beyond the BMP counts two)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def shorten(text: str, limit: int, *, keep_end: str = "") -> str:
    """``text`` cut to at most ``limit`` UTF-16 units, ending with ``…`` when it was cut.

    ``keep_end``, when ``text`` ends with it, survives the cut whole (a preference link after
    the body, say): the cut is made in what comes before it.
    """
    if utf16_length(text) <= limit:
        return text
    tail = keep_end if keep_end and text.endswith(keep_end) else ""
    head = text[: len(text) - len(tail)] if tail else text
    budget = limit - utf16_length(ELLIPSIS) - utf16_length(tail)
    end = used = 0
    while end < len(head) and used + (size := 2 if ord(head[end]) > 0xFFFF else 1) <= budget:
        used += size
        end += 1
    while end > 0 and _joins_previous(head, end):
        end -= 1
    return head[:end].rstrip() + ELLIPSIS + tail


def _joins_previous(text: str, index: int) -> bool:
    """Whether ``text[index]`` is drawn together with the character before it."""
    if index >= len(text):
        return False
    char, before = text[index], text[index - 1]
    code = ord(char)
    if before == _ZWJ or char == _ZWJ or unicodedata.category(char) in ("Mn", "Mc", "Me"):
        return True
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:  # variation selectors
        return True
    if 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:  # skin tones, flag tags
        return True
    if _regional_indicator(char):
        # A flag is a pair of regional indicators: the second of a pair joins the first.
        run = 0
        while run < index and _regional_indicator(text[index - 1 - run]):
            run += 1
        return run % 2 == 1
    return False


def _regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def preferences_line(url: str) -> str:
    """What a text message (SMS, WhatsApp free text) ends with when it carries the person's
    preference link."""
    return f"\n\nPreferences: {url}"


def fit(text: str, limit: int, preferences_url: str | None) -> str:
    """``text`` within ``limit``, keeping its preference link whole if it ends with one."""
    keep = preferences_line(preferences_url) if preferences_url else ""
    return shorten(text, limit, keep_end=keep)
