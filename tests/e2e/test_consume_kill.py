"""SIGKILL ``bulletin consume`` at random moments while it works, and start it again: in the
end every event published is accepted exactly once (one message each), none is lost, and
the queue is empty. Each kill leaves a batch unacknowledged, which the broker delivers again;
the case where that batch was already committed is shown deterministically by
tests/integration/test_consume.py (a link that breaks between commit and acknowledgement)."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bulletin.db import Database
from bulletin.events.models import Event
from bulletin.messages.models import Message
from bulletin.orgs.keys import Scope
from conftest import Api
from support.processes import BULLETIN, environment
from support.rabbit import Rabbit
from support.waiting import eventually

pytestmark = pytest.mark.slow

EVENTS = 3_000
KILLS = 5
TYPE = "ticket.updated"


@pytest.fixture
async def rabbit() -> AsyncIterator[Rabbit]:
    server = await Rabbit.open()
    yield server
    await server.close()


async def accepted(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(Event)) or 0)


class Consumer:
    """One ``bulletin consume`` process, its output in a file."""

    def __init__(self, env: dict[str, str], folder: Path, n: int) -> None:
        self.log = folder / f"consume-{n}.log"
        self._env = env
        self._folder = folder
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("w") as out:
            self.process = await asyncio.create_subprocess_exec(
                BULLETIN,
                "consume",
                env=self._env,
                cwd=self._folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def ensure_stopped(self) -> None:
        """SIGKILL it if it still runs (a failing test leaves no process behind)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self, how: str) -> int:
        assert self.process is not None
        if how == "kill":
            self.process.kill()
        else:
            self.process.terminate()
        async with asyncio.timeout(30):
            return await self.process.wait()


async def test_sigkill_at_any_moment_loses_no_event_and_makes_none_twice(
    api: Api, rabbit: Rabbit, database_url: str, tmp_path: Path
) -> None:
    answer = await api.put(
        f"/v1/event-types/{TYPE}",
        {
            "title": "Ticket {{ data.n }}",
            "body": "Ticket {{ data.n }} changed",
            "channels": ["email"],
        },
        scope=Scope.ADMIN,
    )
    assert answer.status_code in (200, 201), answer.text
    for n in range(5):
        answer = await api.put(f"/v1/recipients/p{n}", {"email": f"p{n}@example.com"})
        assert answer.status_code in (200, 201), answer.text
    ids = [f"ev-{n}" for n in range(EVENTS)]
    await rabbit.publish(
        {"id": event_id, "type": TYPE, "recipient": f"p{n % 5}", "data": {"n": n}}
        for n, event_id in enumerate(ids)
    )
    env = environment(
        database_url,
        BULLETIN_AMQP_URL=rabbit.url,
        BULLETIN_CONSUME_QUEUE=rabbit.queue,
        BULLETIN_CONSUME_ORG=str(api.org_id),
        # Small batches, many of them: every kill finds one in hand.
        BULLETIN_CONSUME_PREFETCH="60",
        BULLETIN_CONSUME_BATCH_MS="5",
        BULLETIN_LOG_FORMAT="json",
    )
    db = api.services.db
    started: list[Consumer] = []
    try:
        await _run(env, tmp_path, db, rabbit, started)
    finally:
        for consumer in started:
            await consumer.ensure_stopped()
    await _check(db, rabbit, ids)


async def _run(
    env: dict[str, str], tmp_path: Path, db: Database, rabbit: Rabbit, started: list[Consumer]
) -> None:
    """Kill consumers mid-work, then run one until the queue is empty."""
    rng = random.Random()
    killed_mid_work = 0
    for n in range(KILLS):
        consumer = Consumer(env, tmp_path, n)
        started.append(consumer)
        before = await accepted(db)
        await consumer.start()

        async def progressed(before: int = before) -> bool:
            return await accepted(db) > before

        await eventually(progressed, timeout=60)
        await asyncio.sleep(rng.uniform(0, 0.25))
        assert await consumer.stop("kill") == -9
        if await accepted(db) < EVENTS:
            killed_mid_work += 1
        else:
            break
    assert killed_mid_work >= 3, "the consumer finished too soon for the kills to mean much"

    # Run it to the end: until, stopped cleanly (SIGTERM), it leaves nothing in the queue.
    async def all_delivered() -> bool:
        return await rabbit.waiting() == 0

    for n in range(KILLS, KILLS + 10):
        last = Consumer(env, tmp_path, n)
        started.append(last)
        await last.start()
        await eventually(all_delivered, timeout=120)
        assert await last.stop("term") == 0, last.log.read_text()
        assert "Traceback" not in last.log.read_text()
        if await rabbit.waiting() == 0:
            break


async def _check(db: Database, rabbit: Rabbit, ids: list[str]) -> None:
    """Every event accepted once, one message each, and nothing left in the queues."""
    async with db.read() as session:
        rows = (await session.execute(select(Event.client_id, Event.message_ids))).all()
        messages = int(await session.scalar(select(func.count()).select_from(Message)) or 0)
    made = {client_id: message_ids for client_id, message_ids in rows}
    lost = set(ids) - set(made)
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:5]}"
    assert set(made) == set(ids)
    # None made twice: one message each, distinct, and no other message.
    assert all(len(message_ids) == 1 for message_ids in made.values())
    assert len({message_ids[0] for message_ids in made.values()}) == EVENTS
    assert messages == EVENTS
    assert await rabbit.waiting() == 0
    assert await rabbit.take() == []  # nothing dead-lettered
