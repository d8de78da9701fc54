"""The canonical form of an address on a channel: a phone number in E.164, an email address.

A recipient's numbers and email address, and a provider's sending number and From address, are
all written this way, so that an address typed twice in two ways is one address (suppression,
replies matched to people). Each function returns the canonical form or raises ``ValueError``
with a sentence meant for the API caller.
"""

from __future__ import annotations

import functools

import phonenumbers
from email_validator import EmailNotValidError, validate_email


@functools.lru_cache(maxsize=4096)
def normalize_phone(value: str, region: str | None) -> str:
    """E.164 form of a phone number; without ``+`` it is read in ``region``, if one is set.

    Remembered (a pure function, and parsing is slow): an event's inline person is checked,
    rendered for and stored, each with the same number.
    """
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        hint = "" if region else " (write it with its +country code)"
        raise ValueError(f"{value!r} is not a phone number{hint}") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{value!r} is not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalize_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not an email address: {exc}") from exc
