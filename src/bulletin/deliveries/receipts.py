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
``first``), exactly as a failure at send time does, except one saying that the person's
WhatsApp window was closed: that delivery is sent again, once, as the approved template.

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
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels.base import Inbound, Receipt
from bulletin.channels.keywords import classify
from bulletin.db import utcnow
from bulletin.deliveries import fallback, repository, suppressions
from bulletin.deliveries.models import Delivery
from bulletin.deliveries.outcomes import SENDING_TEMPLATE
from bulletin.deliveries.repository import Change
from bulletin.deliveries.states import (
    ACTIVE_STATES,
    DeliveryState,
    receipt_moves_forward,
    window_closed_resends,
)
from bulletin.recipients import repository as recipients
from bulletin.recipients.addresses import address_of, explicit_choice, set_choice

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


#: Providers whose receipts may name the message by the provider's id alone. Meta's status
#: webhooks need not carry ``biz_opaque_callback_data`` (its schema does not require it), and
#: their ``id`` is the ``wamid`` the send was answered with. Twilio's status callbacks for
#: Bulletin's sends carry the delivery id in the callback URL Bulletin gave them.
_MATCHED_BY_PROVIDER_ID = frozenset({"whatsapp_cloud"})
#: The width of ``deliveries.provider_message_id``: a longer id is no id of a stored send.
_MAX_PROVIDER_ID = 255


async def _find(session: AsyncSession, source: Source, receipt: Receipt) -> Delivery | None:
    # Every send passes the delivery id to the provider, which echoes it in its receipts
    # (WhatsApp's biz_opaque_callback_data, the status callback URL of Twilio). A WhatsApp
    # status without it is matched by its wamid (ix_deliveries_provider_message_id). Either
    # way the delivery must belong to this account, and it is one query per receipt.
    theirs = receipt.provider_message_id
    delivery_id = receipt.delivery_id
    if delivery_id is not None:
        if not 0 < delivery_id <= _MAX_ID:
            # Not an id of ours: no row has it, and the database could not even compare it.
            return None
    elif theirs is not None and source.provider in _MATCHED_BY_PROVIDER_ID:
        if len(theirs) > _MAX_PROVIDER_ID:
            return None
    else:
        log.warning(
            "receipts.without_delivery_id",
            provider=source.provider,
            provider_message_id=theirs,
        )
        return None
    found = await repository.named_by_receipt(
        session,
        orgs=source.orgs,
        channel=source.channel,
        provider=source.provider,
        account=source.account,
        delivery_id=delivery_id,
        provider_message_id=theirs,
    )
    # A provider id that more than one delivery claims names neither.
    if len(found) != 1:
        return None
    delivery = found[0]
    # The echoed delivery id must agree with the provider's reference, when both are known.
    mine = delivery.provider_message_id
    if mine is not None and theirs is not None and mine != theirs:
        return None
    return delivery


async def apply_receipts(
    session: AsyncSession, source: Source, receipts: Sequence[Receipt]
) -> Applied:
    """Apply receipts verified as coming from ``source``; others' deliveries are unmatched.

    A WhatsApp ``failed`` receipt saying the person's 24-hour window was closed (131047, how
    the Cloud API usually refuses free text outside it: a 200 with a ``wamid``, then this
    status) records the window as closed, so that the person's next messages go as the
    approved template, and, instead of failing the delivery, sends it again at once: the
    dispatcher finds the window closed and sends the template (or, when neither the message
    nor the configuration names one, fails it with that reason, and the person gets their next
    channel). See :func:`_send_template_instead`.
    """
    provider = source.provider
    result = Applied()
    now = utcnow()
    failed: list[int] = []
    closed: list[tuple[int, dt.datetime]] = []
    reopened: list[uuid.UUID] = []
    for receipt in receipts:
        delivery = await _find(session, source, receipt)
        if delivery is None:
            result.unmatched += 1
            continue
        current = DeliveryState(delivery.state)
        reported = DeliveryState(receipt.state.value)
        if _about_an_earlier_send(current, delivery, receipt) or not receipt_moves_forward(
            current, reported
        ):
            result.unchanged += 1
            continue
        result.moved += 1
        window_closed = reported == DeliveryState.FAILED and receipt.window_closed
        if window_closed and delivery.channel == "whatsapp":
            # Not newer than the send: a message the person wrote since keeps the window open.
            closed.append((delivery.recipient_id, delivery.sent_at or receipt.at))
            if window_closed_resends(current) and await fallback.may_send_template_instead(
                session, delivery
            ):
                await _send_template_instead(session, source, delivery, receipt, current, now)
                reopened.append(delivery.message_id)
                continue
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
                    await suppressions.add(
                        session, delivery.org_id, delivery.channel, address, detail, now
                    )
        elif reported in (DeliveryState.DELIVERED, DeliveryState.READ):
            delivery.fallback_at = None
        await repository.record_events(
            session, receipt.at, [Change(delivery.id, reported, delivery.attempt, detail)]
        )
    await session.flush()
    await recipients.close_windows_sent_before(session, closed)
    await repository.reopen_messages(session, reopened)
    if failed:
        await fallback.fall_back(session, failed, now)
    return result


def _about_an_earlier_send(current: DeliveryState, delivery: Delivery, receipt: Receipt) -> bool:
    """Whether ``receipt`` is about a send made before the delivery was put back to pending.

    A delivery waiting to be sent again, or being sent again, keeps the provider's id of its
    previous send until the next one is accepted: a receipt naming that id (a repeated or late
    131047, a late ``sent``) is news about a message that is over, and must not touch the send
    now under way.
    """
    mine = delivery.provider_message_id
    return current in ACTIVE_STATES and mine is not None and receipt.provider_message_id == mine


async def _send_template_instead(
    session: AsyncSession,
    source: Source,
    delivery: Delivery,
    receipt: Receipt,
    current: DeliveryState,
    now: dt.datetime,
) -> None:
    """Put a WhatsApp delivery whose free text failed for a closed window back to ``pending``,
    due now, to be sent as the approved template.

    G1 holds: a failed status is Meta saying it did not deliver the message, so sending it
    again as a template is no second copy; it is what Bulletin already does after any failed
    receipt, by falling back to the person's next channel. It happens once per delivery:
    :func:`~bulletin.deliveries.fallback.may_send_template_instead` lets it through only if
    no template was tried yet (the delivery's events say so), and a 131047 for the template
    then fails the delivery for good, which falls back as any failure does. The delivery keeps
    the failed send's ``wamid`` until the template is accepted, so that a repeat of this
    receipt is recognised as about that send (:func:`_about_an_earlier_send`).
    """
    detail = f"{SENDING_TEMPLATE} ({source.provider} reports failed: {receipt.detail})"
    if current in (DeliveryState.UNKNOWN, DeliveryState.SENDING):
        detail += f" (was {current.value})"
    delivery.state = DeliveryState.PENDING.value
    delivery.next_attempt_at = now
    delivery.lease_expires_at = None
    delivery.reason = detail
    delivery.updated_at = now
    delivery.provider = delivery.provider or source.provider
    delivery.provider_account = delivery.provider_account or source.account
    delivery.provider_message_id = delivery.provider_message_id or receipt.provider_message_id
    log.info(
        "receipts.window_closed",
        delivery_id=delivery.id,
        provider=source.provider,
        provider_message_id=receipt.provider_message_id,
    )
    await repository.record_events(
        session, now, [Change(delivery.id, DeliveryState.PENDING, delivery.attempt, detail)]
    )


async def _address(session: AsyncSession, delivery: Delivery) -> str | None:
    found = await recipients.by_ids(session, [delivery.recipient_id])
    return address_of(found[0], delivery.channel) if found else None


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
            if explicit_choice(person, inbound.channel) is enable:
                continue
            set_choice(person, inbound.channel, enable)
            person.updated_at = now
            changed += 1
        for org_id in {p.org_id for p in people}:
            if enable:
                await suppressions.remove(session, org_id, inbound.channel, inbound.address)
            else:
                await suppressions.add(
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
