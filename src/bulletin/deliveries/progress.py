"""A message as its deliveries show it: how far it has got, and stopping it.

The message itself is the :mod:`bulletin.messages` package's; what it has become (deliveries
counted by state, the first few of a notification), cancelling what is left of it (G5) and
waiting for the sends already under way, and how many people an audience reaches now, are
answered from the deliveries.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import Database, utcnow
from bulletin.deliveries import audience as audiences
from bulletin.deliveries import repository
from bulletin.errors import Conflict, NotFound
from bulletin.messages import repository as message_rows
from bulletin.messages import schemas
from bulletin.messages import service as messages
from bulletin.messages.models import Message
from bulletin.messages.states import MessageState
from bulletin.recipients import repository as recipients
from bulletin.subscriptions import outbox_repository as outbox
from bulletin.subscriptions.kinds import MESSAGE_CANCELLED

_FINISHED = (MessageState.COMPLETED.value, MessageState.CANCELLED.value)


async def count_audience(
    session: AsyncSession, org_id: uuid.UUID, audience: schemas.Audience
) -> tuple[int, list[str]]:
    """How many people ``audience`` reaches now, and the named external ids that do not exist."""
    if audience.recipients:
        wanted = list(dict.fromkeys(audience.recipients))
        found = await recipients.existing_external_ids(session, org_id, wanted)
        return len(found), [e for e in wanted if e not in found]
    return await audiences.count_audience(
        session, org_id, audience.model_dump(exclude_none=True)
    ), []


async def announcement(
    session: AsyncSession, org_id: uuid.UUID, message_id: uuid.UUID
) -> schemas.Announcement:
    message = await messages.require(session, org_id, message_id, messages.ANNOUNCEMENT)
    return messages.as_announcement(message, await repository.count_by_state(session, message.id))


async def notification(
    session: AsyncSession, org_id: uuid.UUID, message_id: uuid.UUID
) -> schemas.Notification:
    message = await messages.require(session, org_id, message_id, messages.NOTIFICATION)
    rows = await repository.page_for_message(
        session, message.id, state=None, after_id=None, limit=10
    )
    briefs = [
        schemas.DeliveryBrief(id=d.id, channel=d.channel, state=d.state, reason=d.reason)
        for d, _ in rows
    ]
    return messages.as_notification(message, briefs)


async def cancel(
    session: AsyncSession, org_id: uuid.UUID, message_id: uuid.UUID, kind: str
) -> tuple[Message, int]:
    """Cancel a message: no delivery of it starts once this commits (G5).

    Returns the message and how many deliveries were cancelled. A message whose every
    delivery is already settled cannot be cancelled (409).
    """
    message = await message_rows.lock_for_cancel(session, org_id, message_id, kind)
    if message is None:
        raise NotFound(f"There is no {kind} {message_id}.")
    counts = await repository.count_by_state(session, message.id)
    nothing_left = message.state == MessageState.SENDING.value and not (
        counts["pending"] or counts["sending"]
    )
    if message.state in _FINISHED or nothing_left:
        state = "cancelled" if message.state == MessageState.CANCELLED.value else "finished"
        raise Conflict(f"The {kind} is already {state}; there is nothing left to cancel.")
    now = utcnow()
    message.state = MessageState.CANCELLED.value
    message.cancelled_at = now
    cancelled = await repository.cancel_pending(session, message.id, now)
    await outbox.record_message_events(session, [message.id], MESSAGE_CANCELLED, now)
    await session.flush()
    return message, cancelled


async def wait_for_in_flight(db: Database, message_id: uuid.UUID, timeout: float) -> int:
    """Wait until sends of the message that had started before a cancel have ended.

    Returns how many are still running when ``timeout`` seconds have passed (normally 0).
    """
    deadline = time.monotonic() + timeout
    while True:
        async with db.read() as session:
            running = await repository.count_in_flight(session, message_id)
        if running == 0 or time.monotonic() >= deadline:
            return running
        await asyncio.sleep(0.05)
