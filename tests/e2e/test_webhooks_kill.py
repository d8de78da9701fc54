"""Killing workers loses no webhook event: ``bulletin worker`` processes are SIGKILLed at
random moments while they send deliveries and webhooks; then every status change recorded
in the database has reached the receiver, signed, and the receiver (deduplicating by
``webhook-id``) counts none missing and none it should not have."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from sqlalchemy import select

from bulletin.db import Database
from bulletin.deliveries.models import Delivery, DeliveryEvent
from bulletin.messages.models import Message
from bulletin.subscriptions import kinds
from bulletin.subscriptions import service as endpoints
from bulletin.subscriptions.models import WebhookMessage
from bulletin.subscriptions.schemas import EndpointIn
from support.db_factories import insert_announcement, insert_people, new_org, person_row
from support.processes import Process, environment
from support.waiting import eventually
from support.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

PEOPLE = 1000
KILLS = 4


async def expected_events(db: Database, message_id: object) -> set[tuple[str, int | str]]:
    """Every change the database recorded that the endpoint subscribed to: (kind, subject)."""
    async with db.read() as session:
        rows = await session.execute(
            select(DeliveryEvent.delivery_id, DeliveryEvent.state)
            .join(Delivery, Delivery.id == DeliveryEvent.delivery_id)
            .where(Delivery.message_id == message_id)
        )
        told: set[tuple[str, int | str]] = {
            (kinds.DELIVERY_KINDS[state], delivery_id)
            for delivery_id, state in rows
            if state in kinds.DELIVERY_KINDS
        }
        message = await session.get(Message, message_id)
        assert message is not None
        if message.state == "completed":
            told.add((kinds.MESSAGE_COMPLETED, str(message_id)))
        return told


def received_events(receiver: Receiver) -> set[tuple[str, int | str]]:
    found: set[tuple[str, int | str]] = set()
    for payload in receiver.payloads():
        data = payload["data"]
        subject = (
            data["delivery_id"] if payload["type"].startswith("delivery.") else data["message_id"]
        )
        found.add((payload["type"], subject))
    return found


async def test_sigkilled_workers_lose_no_webhook_event(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    rng = random.Random(11)
    receiver = Receiver()
    # A slow receiver that fails some first tries, so that kills land mid-request and
    # between a failure and its retry.
    failing_first: set[str] = set()

    async def slow() -> None:
        await asyncio.sleep(0.01 + rng.random() * 0.02)

    def answer(webhook_id: str, nth: int) -> int:
        if nth == 1 and rng.random() < 0.2:
            failing_first.add(webhook_id)
            return 500
        return 200

    receiver.answer = answer
    receiver.before_answer = slow
    await receiver.start()
    org = await new_org(db)
    async with db.transaction() as session:
        made = await endpoints.create_endpoint(
            session,
            None,
            org,
            EndpointIn(url=receiver.url, kinds=list(kinds.KINDS)),
            allow_private=True,
        )
    assert made.secret is not None
    receiver.secret = made.secret
    await insert_people(db, org, [person_row(i) for i in range(PEOPLE)])
    message = await insert_announcement(db, org, channels=["email"])

    env = environment(
        database_url,
        BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES="true",
        BULLETIN_WEBHOOK_TIMEOUT_SECONDS="1",
        BULLETIN_WEBHOOK_LEASE_SECONDS="7",
        BULLETIN_WEBHOOK_RETRY_DELAYS="0s,0s,0s,0s,0s,0s",
        BULLETIN_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT="4",
        BULLETIN_LEASE_SECONDS="6",
        BULLETIN_SEND_TIMEOUT_SECONDS="1",
        BULLETIN_CLAIM_BATCH_SIZE="50",
        BULLETIN_IDLE_POLL_SECONDS="0.2",
    )
    worker: Process | None = None
    kills = 0
    try:
        for _ in range(KILLS):
            worker = Process(["worker"], env, tmp_path)
            await asyncio.to_thread(worker.wait_for, "worker.started")
            await asyncio.sleep(0.3 + rng.random())
            worker.kill()
            kills += 1
            worker = None
        # Some webhooks were sent and some not yet, each time: the kills fell mid-run.
        assert 0 < len(receiver.by_id) < len(await expected_events(db, message.id))
        worker = Process(["worker"], env, tmp_path)

        async def everything_told() -> bool:
            expected = await expected_events(db, message.id)
            done = (kinds.MESSAGE_COMPLETED, str(message.id)) in expected
            return done and expected <= received_events(receiver)

        await eventually(everything_told, timeout=120, interval=0.2)

        async def outbox_settled() -> bool:
            async with db.read() as session:
                states = set((await session.execute(select(WebhookMessage.state))).scalars())
            return states == {"delivered"}

        await eventually(outbox_settled, timeout=60, interval=0.2)
        await asyncio.to_thread(worker.terminate)
        worker = None
    finally:
        if worker is not None:
            worker.kill()
        await receiver.close()

    assert kills == KILLS
    assert receiver.refused == []
    expected = await expected_events(db, message.id)
    assert received_events(receiver) == expected, "a webhook event was lost, or one not recorded"
    assert len({d for kind, d in expected if kind == "delivery.sent"}) == PEOPLE
    # Retries went out under the same id; some ids were sent more than once after kills.
    assert failing_first
    assert all(len(receiver.by_id[i]) >= 2 for i in failing_first)
