"""Decisions the engine makes about one delivery, as pure functions of their inputs.

* :func:`decide` runs at dispatch: is the person still reachable on this channel, have they
  opted out, is it their quiet time? It answers :class:`Send`, :class:`Suppress` or
  :class:`Defer`.
* :func:`after_transient` is the retry policy: when to try again, or that it is over.
* :func:`in_doubt` applies a channel's in-doubt policy to a send whose outcome is unknown.
* :func:`window_closed` answers a WhatsApp refusal for a closed 24-hour window: send the
  template instead, or fail.

:func:`~bulletin.worker.outcomes.outcome_after_send` applies these to every answer a provider
call can end with.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from bulletin.config import Settings
from bulletin.deliveries.outcomes import SENDING_TEMPLATE, CloseWindow, Outcome
from bulletin.deliveries.states import DeliveryState
from bulletin.messages.templates import MessageTemplates
from bulletin.recipients.addresses import address_of, unusable
from bulletin.recipients.models import Recipient


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """The parts of a message that dispatch and sending need; messages never change them."""

    id: uuid.UUID
    org_id: uuid.UUID
    title: str
    body: str
    channels: tuple[str, ...]
    routing: str
    category: str | None
    urgent: bool
    #: Compiled templates of title, body and per-channel content; ``None`` until needed.
    templates: MessageTemplates | None = None


@dataclass(frozen=True, slots=True)
class Send:
    channel: str
    address: str


@dataclass(frozen=True, slots=True)
class Suppress:
    reason: str


@dataclass(frozen=True, slots=True)
class Defer:
    until: dt.datetime
    reason: str


Decision = Send | Suppress | Defer


def decide(
    *,
    channel: str,
    message: MessageFacts,
    recipient: Recipient,
    is_suppressed: Callable[[str, str], bool],
    taken: frozenset[str],
    now: dt.datetime,
    default_timezone: str,
    stay: bool = False,
) -> Decision:
    """What to do with a claimed delivery of ``message`` to ``recipient`` on ``channel``.

    With ``routing: "first"`` a channel that has become unusable since the audience was
    resolved gives way to the next usable one in the message's order, skipping ``taken``
    (channels this person already has a delivery on for this message). Unless ``stay``: an
    earlier attempt on this channel may have reached the person, and only its provider would
    recognise a repeat, so the delivery is suppressed rather than moved.
    """
    if not recipient.active:
        return Suppress("recipient deactivated")
    if message.category and recipient.categories.get(message.category) is False:
        return Suppress(f"opted out of category {message.category!r}")
    why_not = unusable(recipient, channel, is_suppressed)
    if why_not is not None:
        if message.routing != "first":
            return Suppress(why_not)
        if stay:
            return Suppress(f"{why_not}; an earlier attempt may have arrived, so it is not moved")
        reasons = {channel: why_not}
        for other in message.channels:
            if other == channel or other in taken:
                continue
            other_why = unusable(recipient, other, is_suppressed)
            if other_why is None:
                channel = other
                break
            reasons[other] = other_why
        else:
            detail = "; ".join(f"{c}: {r}" for c, r in reasons.items())
            return Suppress(f"no usable channel ({detail})")
    address = address_of(recipient, channel)
    assert address is not None
    if not message.urgent and recipient.quiet_start and recipient.quiet_end:
        zone = recipient.timezone or default_timezone
        until = quiet_until(now, zone, recipient.quiet_start, recipient.quiet_end)
        if until is not None:
            return Defer(until, f"quiet hours until {recipient.quiet_end} {zone}")
    return Send(channel, address)


def _clock(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


def quiet_until(now: dt.datetime, zone: str, start: str, end: str) -> dt.datetime | None:
    """When the quiet hours that contain ``now`` end (UTC), or ``None`` outside them.

    The window is in the recipient's local time and may cross midnight (21:00 to 08:00).
    """
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    begins, ends, moment = _clock(start), _clock(end), local.time().replace(tzinfo=None)
    if begins < ends:
        inside = begins <= moment < ends
        end_day = local.date()
    else:
        inside = moment >= begins or moment < ends
        end_day = local.date() + dt.timedelta(days=1) if moment >= begins else local.date()
    if not inside:
        return None
    until = _first_instant_at(dt.datetime.combine(end_day, ends), tz)
    return until if until > now else None


def _first_instant_at(wall: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The first instant (UTC) at which the local clock shows ``wall`` or later.

    Usually just ``wall`` in ``tz``. When ``wall`` does not exist because the clocks jump
    forward over it, it is the moment of the jump.
    """
    early = wall.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    late = wall.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
    if late.astimezone(tz).replace(tzinfo=None) == wall or early >= late:
        return late
    # In a gap, reading ``wall`` with the offsets before and after the jump brackets it.
    while (late - early) > dt.timedelta(seconds=1):
        middle = early + (late - early) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            late = middle
        else:
            early = middle
    # Offsets change on whole seconds, so the jump is the whole second at or just before.
    whole = late.replace(microsecond=0)
    return whole if whole.astimezone(tz).replace(tzinfo=None) >= wall else late


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_base_seconds, settings.retry_max_seconds)

    def after_transient(
        self,
        send_attempts: int,
        now: dt.datetime,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> dt.datetime | None:
        """When to try again after the ``send_attempts``-th attempt failed, or ``None``: over.

        Exponential backoff with jitter (half fixed, half random, so retries of many
        deliveries spread out but none comes back too soon), never sooner than the
        provider's ``Retry-After``.
        """
        if send_attempts >= self.max_attempts:
            return None
        doublings = min(max(0, send_attempts - 1), 64)  # beyond that the cap applies anyway
        delay = min(self.max_seconds, self.base_seconds * 2.0**doublings)
        delay = delay / 2 + (rng or random).uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return now + dt.timedelta(seconds=delay)


def in_doubt(
    *,
    delivery_id: int,
    attempt: int,
    send_attempts: int,
    deduplicates: bool,
    policy: RetryPolicy,
    now: dt.datetime,
    why: str,
    channel: str | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """The outcome of a send that may or may not have reached the provider.

    Only a provider that recognises a repeated delivery id may be tried again; for any other,
    the delivery becomes ``unknown`` and is never resent automatically. ``rng`` draws the
    retry's jitter.
    """
    if deduplicates:
        retry_at = policy.after_transient(send_attempts, now, rng=rng)
        if retry_at is not None:
            return Outcome(
                delivery_id,
                attempt,
                DeliveryState.PENDING,
                detail=f"{why}; the provider deduplicates, so it will be sent again",
                next_attempt_at=retry_at,
                channel=channel,
            )
    return Outcome(
        delivery_id,
        attempt,
        DeliveryState.UNKNOWN,
        detail=f"{why}; the provider may or may not have it, so it is not resent",
        channel=channel,
    )


def window_closed(
    *,
    delivery_id: int,
    attempt: int,
    recipient_id: int,
    seen_inbound_at: dt.datetime | None,
    sent_template: bool,
    template_available: bool,
    now: dt.datetime,
    why: str,
    channel: str | None = None,
) -> Outcome:
    """The outcome of a WhatsApp send refused because the person's 24-hour window is closed.

    Nothing was sent, so sending again breaks no promise of one send. A free-form message
    records the window as closed (as of ``seen_inbound_at``, the person's last message when the
    send was decided), so that this and later messages go as the approved template; this one is
    sent again at once if there is a template to send, and fails otherwise (falling back to the
    next channel like any failure). A template refused the same way fails: sending it again
    would be refused again.
    """
    if sent_template:
        return Outcome(delivery_id, attempt, DeliveryState.FAILED, detail=why, channel=channel)
    close = None if seen_inbound_at is None else CloseWindow(recipient_id, seen_inbound_at)
    if template_available:
        return Outcome(
            delivery_id,
            attempt,
            DeliveryState.PENDING,
            detail=SENDING_TEMPLATE,
            next_attempt_at=now,
            channel=channel,
            close_window=close,
        )
    return Outcome(
        delivery_id,
        attempt,
        DeliveryState.FAILED,
        detail=(
            f"{why}: the person's 24-hour window had closed, and neither the message nor the "
            "WhatsApp configuration names an approved template to send instead"
        ),
        channel=channel,
        close_window=close,
    )
