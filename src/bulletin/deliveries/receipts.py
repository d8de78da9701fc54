"""What providers tell us after a send: receipts move deliveries forward, replies change
preferences.

Everything here comes from one verified provider account, a :class:`Source`: a receipt moves
only a delivery of the same channel, sent by the same provider through that same account, of
an organization the account serves. Anything else is counted ``unmatched`` and changes nothing.

Receipts arrive late, out of order and more than once. Each is applied only when it moves the
delivery forward (``sent -> delivered -> read``, or to ``failed`` before delivery), so a
repeat or a latecomer changes nothing. That is also their replay protection: providers give a
status no id of its own (WhatsApp repeats the message's ``wamid``, Twilio its ``MessageSid``),
so (delivery, state) is the receipt's identity, and the state machine already applies each
at most once. A receipt settles an ``unknown`` delivery: the provider
had it after all. A ``failed`` receipt falls back to the person's next channel (routing
``first``), exactly as a failure at send time does.

Inbound messages: a stop keyword turns the channel off for that person (and suppresses the
address), a start keyword turns it back on, and any WhatsApp message opens the person's
24-hour window for free-form messages. The caller (the webhook service) hands over only
messages it has not seen before, by their provider ids, so a replay changes nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels.base import Inbound, Receipt
from bulletin.channels.keywords import classify
from bulletin.db import dialect_name, utcnow
from bulletin.deliveries import repository
from bulletin.deliveries.models import Delivery, Suppression
from bulletin.deliveries.states import DeliveryState, receipt_moves_forward
from bulletin.recipients import repository as recipients
from bulletin.worker.policy import address_of

log = structlog.get_logger("bulletin.receipts")

#: Delivery ids are positive 64-bit integers.
_MAX_ID = 2**63 - 1


@dataclass
class Applied:
    """How many receipts moved a delivery, changed nothing, or matched no delivery."""

    moved: int = 0
    unchanged: int = 0
    unmatched: int = 0


@dataclass(frozen=True)
class Source:
    """The provider account whose secret verified a webhook, and what it may speak for.

    ``provider`` is the name stored on the deliveries it sends (``whatsapp_cloud``,
    ``twilio``), ``channel`` the channel it sends on, ``account`` its webhook account key (an
    organization id, or ``default``), ``orgs`` the organizations it serves on that channel.
    """

    provider: str
    channel: str
    account: str
    orgs: Sequence[uuid.UUID]


async def _find(session: AsyncSession, source: Source, receipt: Receipt) -> Delivery | None:
    # Every send passes the delivery id to the provider, which echoes it in its receipts
    # (WhatsApp's biz_opaque_callback_data, the status callback URL of Twilio). Matching on it
    # alone keeps the deliveries table free of an index on the provider's ids.
    if receipt.delivery_id is None:
        log.warning(
            "receipts.without_delivery_id",
            provider=source.provider,
            provider_message_id=receipt.provider_message_id,
        )
        return None
    if not 0 < receipt.delivery_id <= _MAX_ID:
        # Not an id of ours: no row has it, and the database could not even compare it.
        return None
    query = select(Delivery).where(
        Delivery.id == receipt.delivery_id,
        Delivery.org_id.in_(list(source.orgs)),
        Delivery.channel == source.channel,
        or_(
            # Sent through this very account.
            and_(
                Delivery.provider_account == source.account,
                Delivery.provider == source.provider,
            ),
            # No account recorded (a send whose outcome was never written, or one from before
            # accounts were recorded): the account serving the organization now is the one.
            and_(
                Delivery.provider_account.is_(None),
                or_(Delivery.provider.is_(None), Delivery.provider == source.provider),
            ),
        ),
    )
    if dialect_name(session) == "postgresql":
        query = query.with_for_update()
    delivery = (await session.execute(query)).scalars().first()
    if delivery is None:
        return None
    # The echoed delivery id must agree with the provider's reference, when both are known.
    mine, theirs = delivery.provider_message_id, receipt.provider_message_id
    if mine is not None and theirs is not None and mine != theirs:
        return None
    return delivery


async def apply_receipts(
    session: AsyncSession, source: Source, receipts: Sequence[Receipt]
) -> Applied:
    """Apply receipts verified as coming from ``source``; others' deliveries are unmatched."""
    provider = source.provider
    result = Applied()
    now = utcnow()
    failed: list[int] = []
    for receipt in receipts:
        delivery = await _find(session, source, receipt)
        if delivery is None:
            result.unmatched += 1
            continue
        current = DeliveryState(delivery.state)
        reported = DeliveryState(receipt.state.value)
        if not receipt_moves_forward(current, reported):
            result.unchanged += 1
            continue
        result.moved += 1
        delivery.state = reported.value
        delivery.updated_at = now
        delivery.lease_expires_at = None
        delivery.provider = delivery.provider or provider
        delivery.provider_account = delivery.provider_account or source.account
        delivery.provider_message_id = delivery.provider_message_id or receipt.provider_message_id
        if delivery.sent_at is None:
            delivery.sent_at = receipt.at
        detail = f"{provider} reports {reported.value}"
        if receipt.detail:
            detail += f": {receipt.detail}"
        if current in (DeliveryState.UNKNOWN, DeliveryState.SENDING):
            detail += f" (was {current.value})"
        if reported == DeliveryState.FAILED:
            delivery.reason = detail
            failed.append(delivery.id)
            if receipt.suppress_address:
                address = await _address(session, delivery)
                if address is not None:
                    await repository.add_suppression(
                        session, delivery.org_id, delivery.channel, address, detail, now
                    )
        elif reported in (DeliveryState.DELIVERED, DeliveryState.READ):
            delivery.fallback_at = None
        await repository.add_events(
            session,
            [
                {
                    "delivery_id": delivery.id,
                    "at": receipt.at,
                    "state": reported.value,
                    "attempt": delivery.attempt,
                    "detail": detail,
                }
            ],
        )
    await session.flush()
    if failed:
        await repository.fall_back(session, failed, now)
    return result


async def _address(session: AsyncSession, delivery: Delivery) -> str | None:
    found = await recipients.by_ids(session, [delivery.recipient_id])
    return address_of(found[0], delivery.channel) if found else None


_PREFERENCE = {"whatsapp": "pref_whatsapp", "sms": "pref_sms"}


async def apply_inbound(session: AsyncSession, source: Source, messages: Sequence[Inbound]) -> int:
    """Act on people's messages to ``source``'s number, for the organizations it serves.

    Returns how many people's preferences changed. Replays must be filtered out before (see
    :mod:`bulletin.webhooks.service`): a STOP replayed after a START would turn the channel
    off again.
    """
    changed = 0
    now = utcnow()
    for inbound in messages:
        if inbound.channel != source.channel:
            continue
        people = await recipients.with_number(
            session, list(source.orgs), inbound.channel, inbound.address
        )
        if inbound.channel == "whatsapp":
            for person in people:
                if person.whatsapp_inbound_at is None or person.whatsapp_inbound_at < inbound.at:
                    person.whatsapp_inbound_at = inbound.at
        keyword = classify(inbound.text)
        if keyword not in ("stop", "start"):
            continue
        enable = keyword == "start"
        for person in people:
            # A repeated reply (or the provider retrying its webhook) changes nothing.
            if getattr(person, _PREFERENCE[inbound.channel]) is enable:
                continue
            setattr(person, _PREFERENCE[inbound.channel], enable)
            person.updated_at = now
            changed += 1
        for org_id in {p.org_id for p in people}:
            if enable:
                await session.execute(
                    delete(Suppression).where(
                        Suppression.org_id == org_id,
                        Suppression.channel == inbound.channel,
                        Suppression.address == inbound.address,
                    )
                )
            else:
                await repository.add_suppression(
                    session,
                    org_id,
                    inbound.channel,
                    inbound.address,
                    f"the person replied {inbound.text.strip()!r}",
                    now,
                )
        log.info(
            "receipts.inbound_keyword",
            channel=inbound.channel,
            keyword=keyword,
            people=len(people),
        )
    await session.flush()
    return changed


def window_open(inbound_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether WhatsApp's 24-hour customer-service window is open for free-form messages."""
    # A minute's margin: the send must reach Meta while the window is still open.
    return inbound_at is not None and now - inbound_at < dt.timedelta(hours=24, minutes=-1)
