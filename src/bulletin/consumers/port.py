"""The source port: what the consume loop needs of a message broker, and nothing more.

A source hands over events in batches, in the order the broker gave them, and takes three
answers: :meth:`EventSource.ack` once a batch's outcome is committed, and
:meth:`EventSource.dead_letter` for an event that is refused, before that ack. What is not
acknowledged comes again (after a crash, or when the link to the broker breaks): the consume
loop relies on that, and on the events' ids, for "every event once".

Whatever a broker's client raises leaves an adapter as :class:`SourceUnavailable` (the link
is broken or cannot be made; the loop waits and opens the source again). RabbitMQ is the one
adapter (:mod:`bulletin.consumers.rabbitmq`); Kafka or NATS JetStream would be others: acking
a batch is committing its last offset there, and a dead letter is a record on another topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class SourceUnavailable(Exception):
    """The broker cannot be reached, or the link to it broke.

    Nothing is lost: what was not acknowledged is delivered again. The message says what
    happened in one line, without credentials.
    """


@dataclass(frozen=True, slots=True)
class Item:
    """One event as the broker delivered it: its bytes and headers, and the source's handle."""

    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    #: Whatever the source needs to acknowledge or dead-letter it (opaque to the loop).
    handle: Any = None
    #: The broker says it delivered this before (to this consumer or to one that died).
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    """Events in delivery order, handled in one transaction and acknowledged together."""

    items: Sequence[Item]

    def __len__(self) -> int:
        return len(self.items)

    def split(self) -> tuple[Batch, Batch]:
        """The first half and the rest, each still in delivery order."""
        middle = len(self.items) // 2
        return Batch(self.items[:middle]), Batch(self.items[middle:])


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An item to put where refused events go, and why: ``reason`` in one line, ``errors``
    as field errors (``{"loc": [...], "message": ..., "type": ...}``)."""

    item: Item
    reason: str
    errors: Sequence[Mapping[str, Any]] = ()


class EventSource(Protocol):
    """A broker's queue (or topic, or stream) of events, as the consume loop uses it."""

    #: Where the events come from, for log lines (never with credentials).
    name: str

    async def open(self) -> None:
        """Connect and make sure the queues exist; :class:`SourceUnavailable` if it cannot."""

    def batches(self, stopping: asyncio.Event) -> AsyncGenerator[Batch, None]:
        """Batches as they arrive, until ``stopping`` is set (then it ends) or the link breaks
        (then it raises :class:`SourceUnavailable`). The next batch is asked for only once
        the previous one is acknowledged."""
        ...

    async def ack(self, batch: Batch) -> None:
        """Acknowledge every item of ``batch`` (and so of every batch before it): none of
        them will come again."""

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Put each item where refused events go, unchanged, with its reason and errors
        attached; returns once the broker has them all. The items are still to be
        acknowledged (with their batch)."""

    async def close(self) -> None:
        """Let go of the broker; what was not acknowledged is delivered again."""


#: What a pushing source puts in its buffer when the link breaks: the items before it can no
#: longer be acknowledged.
LINK_LOST = object()


async def gather_batch(
    buffer: asyncio.Queue[Any], stopping: asyncio.Event, *, limit: int, wait: float
) -> list[Any] | None:
    """For sources whose client pushes deliveries into ``buffer``: the next batch.

    Waits for a first item (``None`` when ``stopping`` is set first), then takes more until
    there are ``limit`` or ``wait`` seconds have passed since the first. Raises
    :class:`SourceUnavailable` when :data:`LINK_LOST` is met.
    """
    if stopping.is_set():
        return None
    if buffer.empty():
        getting = asyncio.ensure_future(buffer.get())
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({getting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not getting.done():
                getting.cancel()  # a cancelled get takes nothing out of the queue
        if not getting.done() or getting.cancelled():
            return None
        first = getting.result()
    else:
        first = buffer.get_nowait()
    items = [first]
    deadline = time.monotonic() + wait
    while items[-1] is not LINK_LOST and len(items) < limit:
        if buffer.empty():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    items.append(await buffer.get())
            except TimeoutError:
                break
        else:
            items.append(buffer.get_nowait())
    if items[-1] is LINK_LOST:
        raise SourceUnavailable("the link to the broker broke")
    return items
