"""What an SMS costs: its text as the SMS providers send it, and its length in segments.

A text in the GSM 03.38 alphabet packs 160 characters in one segment, 153 per segment once
split (the rest carries the concatenation header); anything else goes as UCS-2, 70 and 67.
GSM extension characters take two units, and so do characters outside the BMP in UCS-2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True, slots=True)
class SmsLength:
    """How long a text is as an SMS."""

    characters: int
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int


def sms_text(title: str, body: str) -> str:
    """The text an SMS provider sends for a message: the title on its own line, then the body."""
    return f"{title}\n{body}" if title else body


def measure(text: str) -> SmsLength:
    """The length of ``text`` in characters and in SMS segments."""
    if all(char in _GSM_BASIC or char in _GSM_EXTENSION for char in text):
        units = sum(2 if char in _GSM_EXTENSION else 1 for char in text)
        encoding, single, multi = "GSM-7", 160, 153
    else:
        units = sum(2 if ord(char) > 0xFFFF else 1 for char in text)
        encoding, single, multi = "UCS-2", 70, 67
    segments = 1 if units <= single else math.ceil(units / multi)
    return SmsLength(characters=len(text), encoding=encoding, segments=segments)
