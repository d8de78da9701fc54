"""Every query of the webhook endpoints API: endpoints, their subscription rows, and the
outbox rows and attempts an endpoint's deliveries list shows. (The outbox insert and the
sender's claim are in :mod:`bulletin.subscriptions.outbox_repository`.)

Every lookup is by the organization as well as the id, so that another organization's id is
not found, as an unknown one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.subscriptions.models import (
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
    WebhookSubscription,
)


async def add_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    session.add(endpoint)
    await session.flush()


async def get_endpoint(
    session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID, *, for_update: bool = False
) -> WebhookEndpoint | None:
    """The organization's endpoint as stored now; ``for_update`` locks its row (PostgreSQL)
    so that a sender marking it failing waits for this transaction, or this one for it."""
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.org_id == org_id)
        .execution_options(populate_existing=True)
    )
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def page_endpoints(
    session: AsyncSession, org_id: uuid.UUID, after: uuid.UUID | None, limit: int
) -> list[WebhookEndpoint]:
    """Up to ``limit`` of the organization's endpoints after ``after``, oldest first."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    if after is not None:
        query = query.where(WebhookEndpoint.id > after)
    rows = await session.execute(query.order_by(WebhookEndpoint.id).limit(limit))
    return list(rows.scalars())


async def count_endpoints(session: AsyncSession, org_id: uuid.UUID) -> int:
    rows = await session.execute(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    )
    return int(rows.scalar_one())


async def delete_endpoint(session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    """Delete the endpoint; its subscriptions, outbox rows and attempts go with it (cascade)."""
    result = await session.execute(
        delete(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.org_id == org_id
        )
    )
    return bool(cast("CursorResult[Any]", result).rowcount)


async def set_subscriptions(
    session: AsyncSession, endpoint_id: uuid.UUID, org_id: uuid.UUID, kinds: Sequence[str]
) -> None:
    """Make the endpoint's subscription rows exactly ``kinds`` (none: it is told nothing)."""
    await session.execute(
        delete(WebhookSubscription).where(WebhookSubscription.endpoint_id == endpoint_id)
    )
    if kinds:
        await session.execute(
            insert(WebhookSubscription),
            [{"endpoint_id": endpoint_id, "org_id": org_id, "kind": k} for k in kinds],
        )


async def subscribed_kinds(session: AsyncSession, endpoint_id: uuid.UUID) -> list[str]:
    rows = await session.execute(
        select(WebhookSubscription.kind).where(WebhookSubscription.endpoint_id == endpoint_id)
    )
    return sorted(rows.scalars())


async def add_message(session: AsyncSession, message: WebhookMessage) -> None:
    session.add(message)
    await session.flush()


async def get_message(
    session: AsyncSession, endpoint_id: uuid.UUID, message_id: int, *, for_update: bool = False
) -> WebhookMessage | None:
    """An outbox row of the endpoint (check the endpoint's organization first), as stored now."""
    query = (
        select(WebhookMessage)
        .where(WebhookMessage.id == message_id, WebhookMessage.endpoint_id == endpoint_id)
        .execution_options(populate_existing=True)
    )
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def page_messages(
    session: AsyncSession,
    endpoint_id: uuid.UUID,
    before: int | None,
    limit: int,
    state: str | None = None,
) -> list[WebhookMessage]:
    """Up to ``limit`` outbox rows of the endpoint older than ``before``, newest first."""
    query = select(WebhookMessage).where(WebhookMessage.endpoint_id == endpoint_id)
    if before is not None:
        query = query.where(WebhookMessage.id < before)
    if state is not None:
        query = query.where(WebhookMessage.state == state)
    rows = await session.execute(query.order_by(WebhookMessage.id.desc()).limit(limit))
    return list(rows.scalars())


async def attempts_of(
    session: AsyncSession, message_ids: Sequence[int]
) -> dict[int, list[WebhookAttempt]]:
    """The attempts of each outbox row, oldest first, in one statement."""
    found: dict[int, list[WebhookAttempt]] = {m: [] for m in message_ids}
    if not message_ids:
        return found
    rows = await session.execute(
        select(WebhookAttempt)
        .where(WebhookAttempt.webhook_message_id.in_(list(message_ids)))
        .order_by(WebhookAttempt.webhook_message_id, WebhookAttempt.id)
    )
    for attempt in rows.scalars():
        found[attempt.webhook_message_id].append(attempt)
    return found


async def make_due(session: AsyncSession, message_id: int, now: dt.datetime) -> None:
    """Make an outbox row pending again, due at ``now``.

    ``attempts`` is left as it is: the sender's claims use it as a fencing token, which must
    never go back (a claim from before could otherwise match a later one).
    """
    await session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.id == message_id)
        .values(
            state="pending",
            next_attempt_at=now,
            lease_expires_at=None,
            finished_at=None,
        )
    )
