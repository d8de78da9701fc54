"""Normalizing what people type about recipients: phone numbers, emails, time zones, times.

Each function returns the canonical form or raises ``ValueError`` with a sentence meant for the
API caller; Pydantic and the batch importer turn those into field errors. Phone numbers and
email addresses are normalized where every channel normalizes them:
:mod:`bulletin.channels.addressing`.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Any

from pydantic_core import PydanticCustomError

from bulletin import jsonvalue

__all__ = [
    "check_attributes",
    "check_category",
    "check_clock",
    "check_group",
    "check_locale",
    "check_timezone",
    "time_zones",
]

# Matched with fullmatch: ``$`` would also accept a trailing newline.
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def time_zones() -> list[str]:
    """Every IANA time zone name this system knows, sorted, for a person to choose from."""
    return sorted(_zones())


def check_timezone(value: str) -> str:
    if value not in _zones():
        raise ValueError(f"{value!r} is not an IANA time zone name, such as 'Africa/Johannesburg'")
    return value


def check_locale(value: str) -> str:
    if not _LOCALE.fullmatch(value):
        raise ValueError(f"{value!r} is not a locale tag, such as 'en' or 'pt-BR'")
    return value.replace("_", "-")


def check_clock(value: str) -> str:
    if not _CLOCK.fullmatch(value):
        raise ValueError(f"{value!r} is not a time of day as HH:MM (24-hour)")
    return value


def check_group(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 100 or not value.isprintable():
        raise ValueError("a group name is 1 to 100 printable characters")
    return value


def check_category(value: str) -> str:
    if not _CATEGORY.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a category: lower-case letters, digits, '_', '-', '.', up to 64"
        )
    return value


def check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    """A recipient's ``attributes`` within the limits of :mod:`bulletin.jsonvalue`.

    The error's type names the limit (``json_depth``, ``json_size`` ...) and its message says
    where in the value it was broken.
    """
    try:
        jsonvalue.check(value, "attributes")
    except jsonvalue.JsonLimitError as exc:
        raise PydanticCustomError(exc.kind, "{message}", {"message": exc.message}) from None
    return value
