"""Where a recipient is reached on each channel, and what they chose for it.

A recipient has one address and one explicit choice per channel: ``whatsapp`` is their
WhatsApp number and ``pref_whatsapp``, ``email`` their email address and ``pref_email``,
``sms`` their ``phone`` and ``pref_sms``. A choice is ``True`` (on), ``False`` (turned off by
the person, by a STOP or an unsubscribe) or ``None`` (never made: on wherever there is an
address). Every part of Bulletin that asks which address or which choice goes with a channel
asks here, in Python or in SQL, so that the answer is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import InstrumentedAttribute

from bulletin.recipients.models import Recipient

#: Per channel, the recipient's address column and the column of their explicit choice.
_COLUMNS: dict[
    str, tuple[InstrumentedAttribute[str | None], InstrumentedAttribute[bool | None]]
] = {
    "whatsapp": (Recipient.whatsapp, Recipient.pref_whatsapp),
    "email": (Recipient.email, Recipient.pref_email),
    "sms": (Recipient.phone, Recipient.pref_sms),
}
_ADDRESS = {channel: address.key for channel, (address, _) in _COLUMNS.items()}
_CHOICE = {channel: choice.key for channel, (_, choice) in _COLUMNS.items()}

#: The channels a recipient has an address and a choice for, in Bulletin's usual order.
CHANNELS: tuple[str, ...] = tuple(_COLUMNS)

#: What an address on each channel is called, in sentences about it.
_NOUN = {"whatsapp": "WhatsApp number", "email": "email address", "sms": "phone number"}


def address_of(recipient: Recipient, channel: str) -> str | None:
    """The recipient's address on ``channel``; ``None`` when they have none (or there is no
    such channel)."""
    name = _ADDRESS.get(channel)
    return None if name is None else getattr(recipient, name)


def addresses_of(recipient: Recipient) -> list[str]:
    """Every address the recipient has, on any channel."""
    return [a for channel in CHANNELS if (a := address_of(recipient, channel)) is not None]


def explicit_choice(recipient: Recipient, channel: str) -> bool | None:
    """What the recipient chose for ``channel``: on, off, or ``None`` when they never chose."""
    name = _CHOICE.get(channel)
    return None if name is None else getattr(recipient, name)


def set_choice(recipient: Recipient, channel: str, choice: bool | None) -> None:
    """Record the recipient's choice for ``channel`` (``None`` forgets it)."""
    setattr(recipient, _CHOICE[channel], choice)


def enabled(recipient: Recipient, channel: str) -> bool:
    """Whether the recipient receives ``channel``: their explicit choice, else whether they
    have an address on it. Suppression is not considered (see :func:`unusable`)."""
    choice = explicit_choice(recipient, channel)
    return choice if choice is not None else address_of(recipient, channel) is not None


def address_column(channel: str) -> InstrumentedAttribute[str | None]:
    """The column of recipients' addresses on ``channel``, for queries."""
    return _COLUMNS[channel][0]


def choice_column(channel: str) -> InstrumentedAttribute[bool | None]:
    """The column of recipients' explicit choices for ``channel``, for queries."""
    return _COLUMNS[channel][1]


def unusable(
    recipient: Recipient, channel: str, is_suppressed: Callable[[str, str], bool]
) -> str | None:
    """Why the recipient cannot be reached on ``channel``, or ``None`` when they can.

    ``is_suppressed(channel, address)`` says whether the address is on the suppression list.
    """
    address = address_of(recipient, channel)
    if address is None:
        return f"no {_NOUN.get(channel, channel + ' address')}"
    if explicit_choice(recipient, channel) is False:
        return f"{channel} turned off by the recipient"
    if is_suppressed(channel, address):
        return f"{_NOUN[channel]} is on the suppression list"
    return None
