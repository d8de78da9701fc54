"""Reading deliveries: one with its history, or a message's, page by page."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import utcnow
from bulletin.deliveries import repository, schemas
from bulletin.deliveries.models import Delivery
from bulletin.deliveries.states import DeliveryState
from bulletin.errors import Conflict, NotFound
from bulletin.ids import decode_cursor, encode_cursor
from bulletin.messages import repository as messages
from bulletin.messages.states import MessageState
from bulletin.recipients import repository as recipients


def to_schema(delivery: Delivery, external_id: str) -> schemas.Delivery:
    return schemas.Delivery(
        id=delivery.id,
        message_id=delivery.message_id,
        recipient=external_id,
        channel=delivery.channel,
        state=DeliveryState(delivery.state),
        reason=delivery.reason,
        attempts=delivery.send_attempts,
        next_attempt_at=(
            delivery.next_attempt_at if delivery.state == DeliveryState.PENDING else None
        ),
        provider=delivery.provider,
        provider_message_id=delivery.provider_message_id,
        created_at=delivery.created_at,
        updated_at=delivery.updated_at,
        sent_at=delivery.sent_at,
    )


async def get(session: AsyncSession, org_id: uuid.UUID, delivery_id: int) -> schemas.DeliveryDetail:
    delivery = await repository.get(session, org_id, delivery_id)
    if delivery is None:
        raise NotFound(f"There is no delivery {delivery_id}.")
    recipient = await recipients.by_id(session, delivery.recipient_id)
    assert recipient is not None
    events = await repository.events(session, delivery.id)
    return schemas.DeliveryDetail(
        **to_schema(delivery, recipient.external_id).model_dump(),
        events=[
            schemas.DeliveryEvent(at=e.at, state=e.state, attempt=e.attempt, detail=e.detail)
            for e in events
        ],
    )


async def page_for_message(
    session: AsyncSession,
    message_id: uuid.UUID,
    *,
    state: DeliveryState | None,
    cursor: str | None,
    limit: int,
) -> schemas.DeliveryPage:
    after = int(decode_cursor(cursor, int)) if cursor else None
    rows = await repository.page_for_message(
        session, message_id, state=state.value if state else None, after_id=after, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return schemas.DeliveryPage(
        items=[to_schema(d, external_id) for d, external_id in rows],
        next_cursor=encode_cursor(rows[-1][0].id) if more else None,
    )


async def resend_unknown(session: AsyncSession, org_id: uuid.UUID, delivery_id: int) -> Delivery:
    """Send an ``unknown`` delivery again, deliberately: its first send may have arrived, so
    only an operator decides this, never the engine. Other states are a 409."""
    delivery = await repository.get(session, org_id, delivery_id)
    if delivery is None:
        raise NotFound(f"There is no delivery {delivery_id}.")
    message = await messages.by_id(session, delivery.message_id)
    if message is not None and message.state == MessageState.CANCELLED.value:
        raise Conflict("The message was cancelled; its deliveries are not sent again.")
    reopened = await repository.reopen_unknown(
        session, org_id, delivery_id, utcnow(), "resent by an operator"
    )
    if reopened is None:
        raise Conflict(
            f"Delivery {delivery_id} is {delivery.state}; only an unknown one can be resent."
        )
    return reopened
