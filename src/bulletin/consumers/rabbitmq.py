"""The RabbitMQ source (aio-pika): a durable queue, and ``<queue>.dead`` for refused events.

Both queues are declared durable, with no other arguments, so that a producer declaring the
queue the plain way (``durable=True``) agrees with the consumer. Events are consumed with
manual acknowledgement and a prefetch (``basic.qos``) as large as a batch: the broker hands
over at most that many unacknowledged events, and the consumer acknowledges each batch with
one ``basic.ack`` (``multiple``) once its outcome is committed. A refused event is published,
persistent, to the dead-letter queue through the default exchange, as it came (body,
headers, content type, message id) plus ``x-bulletin-reason`` and ``x-bulletin-errors``
headers, and the publication is confirmed by the broker before the event is acknowledged.

A connection is not "robust" (aio-pika's reconnecting kind): when the link breaks, every
delivery not yet acknowledged is void (the broker delivers it again), so the source says
:class:`~bulletin.consumers.port.SourceUnavailable` and the consume loop opens it anew.
Everything aio-pika and aiormq raise is mapped to that exception here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from bulletin.consumers.port import (
    LINK_LOST,
    Batch,
    DeadLetter,
    Item,
    SourceUnavailable,
    gather_batch,
)

log = structlog.get_logger("bulletin.consumers.rabbitmq")

#: Suffix of the queue that takes the refused events of a queue.
DEAD_SUFFIX = ".dead"
#: Header of a dead letter: why it was refused, in one line.
REASON_HEADER = "x-bulletin-reason"
#: Header of a dead letter: the field errors, as JSON (a list of {loc, message, type}).
ERRORS_HEADER = "x-bulletin-errors"

#: Longest ``x-bulletin-errors`` header, in characters.
MAX_ERRORS_CHARACTERS = 16_000
#: What the broker or the link can raise, and a broker answer that never comes.
_BROKER_ERRORS = (*CONNECTION_EXCEPTIONS, TimeoutError)


def safe_url(url: str) -> str:
    """``url`` without its password, to name the server in logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path or '/'}"


class RabbitSource:
    """Events from one RabbitMQ queue (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        prefetch: int,
        batch_wait: float,
        connect_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._password = urlsplit(url).password
        self.queue = queue
        self.dead_queue = queue + DEAD_SUFFIX
        self._prefetch = prefetch
        self._batch_wait = batch_wait
        self._timeout = connect_timeout
        self.name = f"{safe_url(url)} queue {queue}"
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._consumed: tuple[AbstractQueue, str] | None = None
        self._buffer: asyncio.Queue[Any] = asyncio.Queue()

    def _unavailable(self, what: str, exc: BaseException) -> SourceUnavailable:
        detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        if self._password:
            detail = detail.replace(self._password, "***")
        return SourceUnavailable(f"{what}: {detail}")

    async def open(self) -> None:
        await self.close()
        # Deliveries of an earlier link cannot be acknowledged any more: a new buffer.
        buffer: asyncio.Queue[Any] = asyncio.Queue()
        self._buffer = buffer

        def lost(*_: object) -> None:
            buffer.put_nowait(LINK_LOST)

        async def received(message: AbstractIncomingMessage) -> None:
            buffer.put_nowait(message)

        try:
            connection = await aio_pika.connect(
                self._url,
                timeout=self._timeout,
                client_properties={"connection_name": "bulletin consume"},
            )
            self._connection = connection
            connection.close_callbacks.add(lost)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._channel = channel
            channel.close_callbacks.add(lost)
            await channel.set_qos(prefetch_count=self._prefetch, timeout=self._timeout)
            await channel.declare_queue(self.dead_queue, durable=True, timeout=self._timeout)
            queue = await channel.declare_queue(self.queue, durable=True, timeout=self._timeout)
            tag = await queue.consume(received, no_ack=False, timeout=self._timeout)
            self._consumed = (queue, tag)
        except _BROKER_ERRORS as exc:
            error = self._unavailable(f"cannot consume {self.name}", exc)
            await self.close()
            raise error from None

    async def batches(self, stopping: asyncio.Event) -> AsyncGenerator[Batch, None]:
        while True:
            messages = await gather_batch(
                self._buffer, stopping, limit=self._prefetch, wait=self._batch_wait
            )
            if messages is None:
                return
            yield Batch(
                [
                    Item(
                        body=m.body,
                        headers=dict(m.headers or {}),
                        handle=m,
                        redelivered=bool(m.redelivered),
                    )
                    for m in messages
                ]
            )

    async def ack(self, batch: Batch) -> None:
        if not batch.items:
            return
        last: AbstractIncomingMessage = batch.items[-1].handle
        try:
            await last.ack(multiple=True)
        except _BROKER_ERRORS as exc:
            raise self._unavailable("cannot acknowledge", exc) from None

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        channel = self._channel
        if channel is None or channel.is_closed:
            raise SourceUnavailable("cannot dead-letter: the channel is closed")
        exchange = channel.default_exchange
        try:
            await asyncio.gather(
                *(
                    exchange.publish(
                        _dead_letter(letter.item.handle, letter.reason, letter.errors),
                        routing_key=self.dead_queue,
                        mandatory=True,
                        timeout=self._timeout,
                    )
                    for letter in letters
                )
            )
        except _BROKER_ERRORS as exc:
            raise self._unavailable(f"cannot dead-letter to {self.dead_queue}", exc) from None

    async def close(self) -> None:
        """Cancel the consumer and close the connection; unacknowledged deliveries go back."""
        consumed, self._consumed = self._consumed, None
        channel, self._channel = self._channel, None
        connection, self._connection = self._connection, None
        if consumed is not None and channel is not None and not channel.is_closed:
            queue, tag = consumed
            with contextlib.suppress(*_BROKER_ERRORS):
                await queue.cancel(tag, timeout=self._timeout)
        if connection is not None:
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()


def errors_header(errors: Sequence[Mapping[str, Any]]) -> str:
    """``errors`` as JSON, at most :data:`MAX_ERRORS_CHARACTERS` long: the first ones, then a
    last saying how many more there were. Every header of a message travels in one frame
    (128 KiB by default), so an event with a thousand bad recipients must not outgrow it."""
    kept: list[Mapping[str, Any]] = []
    size = 2
    for n, error in enumerate(errors):
        text = json.dumps(error, ensure_ascii=False, default=str)
        if size + len(text) + 2 > MAX_ERRORS_CHARACTERS - 200:
            more = len(errors) - n
            kept.append({"loc": [], "message": f"and {more} more", "type": "more_errors"})
            break
        kept.append(error)
        size += len(text) + 2  # with the ", " before it
    return json.dumps(kept, ensure_ascii=False, default=str)


def _dead_letter(
    message: AbstractIncomingMessage, reason: str, errors: Sequence[Mapping[str, Any]]
) -> aio_pika.Message:
    headers = dict(message.headers or {})
    headers[REASON_HEADER] = reason
    headers[ERRORS_HEADER] = errors_header(errors)
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
