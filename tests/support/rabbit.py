"""The RabbitMQ server on this machine, for the consumer's tests: a queue of one's own,
publishing events into it, and reading what is left in it and in its dead-letter queue.

Outside CI a test skips, saying how to start the server, when none answers; in CI it fails
(:mod:`support.ci`), since ``.ci/run`` starts one.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bulletin.consumers.rabbitmq import safe_url
from support.ci import unavailable

AMQP_URL = os.environ.get("BULLETIN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
HINT = (
    "RabbitMQ is not reachable at {where} ({error}). Start it with "
    "'rabbitmq-server -detached', or point BULLETIN_TEST_AMQP_URL at a server."
)


class Rabbit:
    """A connection to the test server and one queue (and its ``.dead``) named for one test."""

    def __init__(self, connection: AbstractConnection, channel: AbstractChannel) -> None:
        self.connection = connection
        self.channel = channel
        self.url = AMQP_URL
        self.queue = f"bulletin.test.{uuid.uuid4().hex[:12]}"
        self.dead = self.queue + ".dead"

    @classmethod
    async def open(cls) -> Rabbit:
        """Connect, or skip the test (fail it in CI) when no server answers."""
        try:
            connection = await aio_pika.connect(AMQP_URL, timeout=5)
        except (aio_pika.exceptions.AMQPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            unavailable(HINT.format(where=safe_url(AMQP_URL), error=error))
        channel = await connection.channel(publisher_confirms=True)
        return cls(connection, channel)

    async def close(self) -> None:
        """Delete the test's queues and disconnect."""
        try:
            channel = await self.connection.channel()
            for name in (self.queue, self.dead):
                await channel.queue_delete(name)
        finally:
            await self.connection.close()

    async def publish(
        self,
        events: Iterable[bytes | Mapping[str, Any]],
        *,
        headers: Mapping[str, Any] | None = None,
        queue: str | None = None,
    ) -> int:
        """Publish ``events`` (a mapping as JSON), persistent, confirmed; how many."""
        name = queue or self.queue
        await self.channel.declare_queue(name, durable=True)
        bodies = [e if isinstance(e, bytes) else json.dumps(e).encode() for e in events]
        for start in range(0, len(bodies), 500):
            await asyncio.gather(
                *(
                    self.channel.default_exchange.publish(
                        aio_pika.Message(
                            body,
                            headers=dict(headers or {}),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=name,
                    )
                    for body in bodies[start : start + 500]
                )
            )
        return len(bodies)

    async def waiting(self, queue: str | None = None) -> int:
        """Messages ready in ``queue`` (the test's by default): not delivered, or given back.
        Ones delivered and not yet acknowledged are not counted."""
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue or self.queue, passive=True)
            count = declared.declaration_result.message_count
            return int(count or 0)
        finally:
            await channel.close()

    async def consumers(self) -> int:
        """Consumers reading the test's queue (0 until it is declared)."""
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(self.queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            if not channel.is_closed:
                await channel.close()

    async def take(self, queue: str | None = None) -> list[AbstractIncomingMessage]:
        """Every message ready in ``queue`` (the dead-letter queue by default), acknowledged."""
        channel = await self.connection.channel()
        taken: list[AbstractIncomingMessage] = []
        try:
            source = await channel.declare_queue(queue or self.dead, passive=True)
            while True:
                message = await source.get(fail=False, timeout=5)
                if message is None:
                    return taken
                await message.ack()
                taken.append(message)
        finally:
            await channel.close()
