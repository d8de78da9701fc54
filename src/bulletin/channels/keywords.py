"""The opt-out, opt-in and help keywords people text back, read the way carriers read them.

A reply counts only when the keyword is the whole message: "STOP", " stop! " and "Opt-Out."
are opt-outs, "stop sending me this" is a conversation. Case, surrounding whitespace and
punctuation, and full-width or other compatibility forms of the letters do not matter. The same
rules serve SMS and WhatsApp replies.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

Keyword = Literal["stop", "start", "help"]

_KEYWORDS: dict[str, Keyword] = {
    **dict.fromkeys(
        (
            "stop",
            "stopall",
            "unsubscribe",
            "cancel",
            "end",
            "quit",
            "revoke",
            "optout",
            "opt-out",
            "opt out",
        ),
        "stop",
    ),
    **dict.fromkeys(("start", "yes", "unstop", "optin", "subscribe"), "start"),
    **dict.fromkeys(("help", "info"), "help"),
}


def _is_trimmable(char: str) -> bool:
    # Unicode categories rather than string.punctuation, so "¡STOP!" and "STOP。" count too.
    return char.isspace() or unicodedata.category(char).startswith(("P", "Z", "C"))


def classify(text: str) -> Keyword | None:
    """Which keyword the whole message is, or ``None`` when it is not exactly one of them."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    start, end = 0, len(folded)
    while start < end and _is_trimmable(folded[start]):
        start += 1
    while end > start and _is_trimmable(folded[end - 1]):
        end -= 1
    # "OPT  OUT" typed with two spaces, or a line break, is still "opt out".
    words = " ".join(folded[start:end].split())
    return _KEYWORDS.get(words)
