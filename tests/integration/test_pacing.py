"""Pacing holds across workers: a provider account's rate, a rate-limit pause, the pair rate.

Sends can never happen before their reserved slot, so these tests assert lower bounds on the
time sends take (which a slow machine only makes larger), never upper bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import time
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from sqlalchemy import select

from bulletin.bootstrap import running
from bulletin.channels.base import OutboundMessage
from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.errors import TransientSendError
from bulletin.messages import schemas as message_schemas
from bulletin.messages import service as messages
from bulletin.worker import pacing
from bulletin.worker import repository as pacing_rows
from bulletin.worker.models import PacingSlot
from bulletin.worker.pacing import Later
from conftest import make_settings
from integration.test_engine import message_state
from support.db_factories import (
    count_states,
    insert_announcement,
    insert_people,
    new_org,
    person_row,
)
from support.waiting import eventually


class TimedProvider(RecordingProvider):
    """Records when each send reached the provider, and which worker made it."""

    def __init__(self, rate: float | None, pair: float | None = None) -> None:
        super().__init__(name="paced")
        self.account = "paced:acct-1"
        self.rate_per_second = rate
        self.pair_interval_seconds = pair
        self.times: list[float] = []

    async def send(self, message: OutboundMessage) -> object:  # type: ignore[override]
        self.times.append(time.monotonic())
        return await super().send(message)


async def test_reservations_are_consecutive_and_bounded_by_the_horizon(db: Database) -> None:
    now = utcnow()
    horizon = dt.timedelta(seconds=1)
    async with db.transaction() as session:
        first, after = await pacing_rows.reserve(session, "a", 10.0, 4, now, horizon)
    assert [(t - now).total_seconds() for t in first] == pytest.approx([0, 0.1, 0.2, 0.3])
    async with db.transaction() as session:
        second, after = await pacing_rows.reserve(session, "a", 10.0, 20, now, horizon)
    # The second group starts where the first ended, and stops at the horizon.
    assert second[0] == first[-1] + dt.timedelta(seconds=0.1)
    assert len(second) == 7
    assert after == second[-1] + dt.timedelta(seconds=0.1)
    async with db.transaction() as session:
        other, _ = await pacing_rows.reserve(session, "b", 10.0, 1, now, horizon)
    assert other == [now]  # accounts are independent


async def test_a_pause_pushes_every_later_slot(db: Database) -> None:
    now = utcnow()
    async with db.transaction() as session:
        await pacing_rows.push_back(session, "a", now + dt.timedelta(seconds=30))
    async with db.transaction() as session:
        slots, after = await pacing_rows.reserve(
            session, "a", 10.0, 3, now, dt.timedelta(seconds=10)
        )
    assert slots == []
    assert after == now + dt.timedelta(seconds=30)


async def test_the_pair_slot_is_taken_once_per_interval(db: Database) -> None:
    now = utcnow()
    gap = dt.timedelta(seconds=6)
    async with db.transaction() as session:
        assert await pacing_rows.take_pair(session, "wa", "+27820000001", gap, now) is None
    async with db.transaction() as session:
        busy = await pacing_rows.take_pair(session, "wa", "+27820000001", gap, now)
    assert busy == now + gap
    async with db.transaction() as session:
        assert await pacing_rows.take_pair(session, "wa", "+27820000002", gap, now) is None
        assert await pacing_rows.take_pair(session, "wa", "+27820000001", gap, now + gap) is None


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_concurrent_reservations_never_share_a_slot(settings: Settings) -> None:
    databases = [Database(settings.database_url, pool_size=2) for _ in range(4)]
    now = utcnow()

    async def reserve(database: Database) -> list[dt.datetime]:
        found: list[dt.datetime] = []
        for _ in range(10):
            async with database.transaction() as session:
                slots, _ = await pacing_rows.reserve(
                    session, "shared", 100.0, 3, now, dt.timedelta(seconds=60)
                )
            found.extend(slots)
        return found

    results = await asyncio.gather(*(reserve(d) for d in databases))
    slots = sorted(s for r in results for s in r)
    assert len(slots) == len(set(slots)) == 120
    gaps = {round((b - a).total_seconds(), 6) for a, b in itertools.pairwise(slots)}
    assert gaps == {0.01}
    for database in databases:
        await database.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_the_rate_holds_across_several_worker_processes(settings: Settings) -> None:
    """Three dispatchers share one account limited to 20 messages a second."""
    setup = Database(settings.database_url)
    org = await new_org(setup)
    await insert_people(setup, org, [person_row(i) for i in range(60)])
    message = await insert_announcement(setup, org, channels=["email"])
    rate = 20.0
    databases = [Database(settings.database_url, pool_size=4) for _ in range(3)]
    providers = [TimedProvider(rate) for _ in databases]
    roles = [(True, True), (True, False), (True, False)]
    # Small claims, so that every worker has a share of the work.
    tuned = make_settings(settings.database_url, claim_batch_size=5, max_in_flight=5)
    async with contextlib.AsyncExitStack() as processes:
        for (dispatch, schedule), database, provider in zip(
            roles, databases, providers, strict=True
        ):
            await processes.enter_async_context(
                running(
                    tuned,
                    dispatch=dispatch,
                    schedule=schedule,
                    db=database,
                    registry=ChannelRegistry(provider),
                )
            )
        await eventually(message_state(setup, message.id, "completed"), timeout=60)
    times = sorted(t for p in providers for t in p.times)
    assert len(times) == 60
    assert sum(1 for p in providers if p.times) >= 2, "the work was not shared"
    # 60 sends at 20/s need 59 gaps of 50 ms, whichever worker made them (unpaced, they
    # take about 0.1 s). The margin allows for the first send starting late on a busy machine.
    assert times[-1] - times[0] >= (60 - 1) / rate - 0.25
    assert await count_states(setup, message.id) == {"sent": 60}
    for d in [setup, *databases]:
        await d.dispose()


async def test_a_rate_limit_answer_pauses_the_whole_account(
    settings: Settings, db: Database
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(5)])
    # Slots 100 ms apart: the other sends are still waiting for theirs when the answer comes.
    provider = TimedProvider(rate=10.0)
    failed_at: list[float] = []

    def first_call_is_throttled(message: OutboundMessage) -> None:
        if not failed_at:
            failed_at.append(time.monotonic())
            raise TransientSendError("130429: rate limit hit", retry_after=1.5, slow_down=True)

    provider.behaviour = first_call_is_throttled
    message = await insert_announcement(db, org, channels=["email"])
    tuned = make_settings(settings.database_url, retry_base_seconds=0.01)
    async with running(
        tuned, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        await eventually(message_state(db, message.id, "completed"))
    assert await count_states(db, message.id) == {"sent": 5}
    later = [t for t in provider.times if t > failed_at[0]]
    # Whatever was sent after the rate-limit answer waited for the pause to end.
    assert later
    assert min(later) - failed_at[0] >= 1.5 - 0.05


async def test_messages_to_one_person_are_spaced_by_the_pair_interval(
    settings: Settings, db: Database
) -> None:
    org = await new_org(db)
    await insert_people(db, org, [person_row(1)])
    provider = TimedProvider(rate=None, pair=0.5)
    async with running(
        settings, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        made = []
        for i in range(3):
            body = message_schemas.NotificationIn.model_validate(
                {"title": f"n{i}", "body": "b", "recipient": "p1", "channels": ["email"]}
            )
            async with db.transaction() as session:
                made.append(await messages.create_notification(session, org, body))
        for message in made:
            await eventually(message_state(db, message.id, "completed"))
    times = sorted(provider.times)
    assert len(times) == 3
    # The slot is taken just before the send, so a send delayed on a busy machine shortens the
    # gap after it by that delay; unpaced, the three would go out within milliseconds.
    assert all(b - a >= 0.5 * 0.8 for a, b in itertools.pairwise(times)), times


async def test_sends_waiting_for_a_slot_at_shutdown_go_back_to_the_queue(
    settings: Settings, db: Database
) -> None:
    """Cut off while waiting for its slot, a send was never made: pending, not unknown."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(i) for i in range(4)])
    provider = TimedProvider(rate=1.0)
    message = await insert_announcement(db, org, channels=["email"])
    tuned = make_settings(settings.database_url, shutdown_grace_seconds=0.1)
    async with running(
        tuned, dispatch=True, schedule=True, db=db, registry=ChannelRegistry(provider)
    ):
        await eventually(lambda: _called(provider))
    states = await count_states(db, message.id)
    assert states.get("sent") == len(provider.times)
    assert states.get("pending", 0) == 4 - len(provider.times)
    assert "unknown" not in states
    assert "sending" not in states


async def _called(provider: TimedProvider) -> bool:
    return bool(provider.times)


async def test_sends_given_back_for_lack_of_a_slot_come_due_one_after_the_other(
    db: Database,
) -> None:
    now = utcnow()
    gap = dt.timedelta(seconds=0.1)
    async with db.transaction() as session:
        first = await pacing_rows.queue_later(session, "a", 3, now, gap)
    assert first == [now, now + gap, now + 2 * gap]
    async with db.transaction() as session:  # another worker gives back two at the same moment
        second = await pacing_rows.queue_later(session, "a", 2, now, gap)
    assert second == [now + 3 * gap, now + 4 * gap]
    later = now + dt.timedelta(seconds=60)
    async with db.transaction() as session:
        assert await pacing_rows.queue_later(session, "a", 1, later, gap) == [later]
        assert await pacing_rows.queue_later(session, "b", 1, now, gap) == [now]
        # The account's own send slots are a schedule apart.
        slots, _ = await pacing_rows.reserve(session, "a", 10.0, 1, now, dt.timedelta(seconds=1))
    assert slots == [now]


async def test_sends_beyond_the_horizon_go_back_to_the_queue_at_different_times(
    db: Database,
) -> None:
    provider = TimedProvider(rate=10.0)
    pacer = pacing.Pacer(db, horizon_seconds=0.5)
    answers = await asyncio.gather(*(pacer.wait_turn(provider) for _ in range(12)))
    later = [a.at for a in answers if a is not None]
    # About half a second's worth of slots at 10/s was taken; the rest come due one by one.
    assert 5 <= len(later) <= 12
    assert len(set(later)) == len(later)


async def test_slots_are_spaced_a_little_wider_than_the_rate(db: Database) -> None:
    provider = TimedProvider(rate=100.0)
    now = utcnow()
    async with db.transaction() as session:
        _, start = await pacing_rows.reserve(
            session, provider.account, 100.0, 1, now, dt.timedelta(seconds=1)
        )
    pacer = pacing.Pacer(db)
    await asyncio.gather(*(pacer.wait_turn(provider) for _ in range(5)))
    async with db.read() as session:
        end = await session.scalar(
            select(PacingSlot.next_slot_at).where(PacingSlot.account == provider.account)
        )
    assert end is not None
    # Five slots, each (1 + SLACK) / rate; more only if a send missed its slot.
    assert (end - start).total_seconds() >= 5 * (1 + pacing.SLACK) / 100.0 - 1e-5


async def _late_for_a_slot_after(
    db: Database, provider: TimedProvider, slot: dt.datetime, pacer: pacing.Pacer
) -> tuple[Later | None, list[MutableMapping[str, Any]]]:
    """Wait for a turn whose slot comes after ``slot`` (the account's next free one), with
    the process busy (nothing else runs) from before that slot until 0.2 s after it; returns
    the answer and what was logged."""
    with structlog.testing.capture_logs() as logged:
        waiting = asyncio.create_task(pacer.wait_turn(provider))

        async def reserved() -> bool:
            return await _next_slot(db, provider.account) != slot

        await eventually(reserved)
        time.sleep(max(0.0, (slot - utcnow()).total_seconds()) + 0.2)  # noqa: ASYNC251
        answer = await waiting
    return answer, logged


async def test_a_send_that_cannot_start_on_time_does_not_use_its_slot(db: Database) -> None:
    """A process too busy to start a send at its slot takes a new one (or gives the send
    back): sent late, it would crowd into one second with the sends after it."""
    provider = TimedProvider(rate=10.0)
    async with db.transaction() as session:
        # The account is busy for the next second: the send's slot will be a second away.
        _, slot = await pacing_rows.reserve(
            session, provider.account, 1.0, 1, utcnow(), dt.timedelta(seconds=2)
        )
    _, logged = await _late_for_a_slot_after(
        db, provider, slot, pacing.Pacer(db, horizon_seconds=3.0)
    )
    missed = [e for e in logged if e["event"] == "pacing.slot_missed"]
    assert missed
    assert missed[0]["late_ms"] >= 150


async def test_a_late_send_goes_out_when_the_account_has_room(db: Database) -> None:
    """At a rate the workers do not fill, a send a busy process starts late cannot crowd a
    second: it is sent, not given back."""
    provider = TimedProvider(rate=1000.0)
    async with db.transaction() as session:
        # The send's slot will be 0.3 s away, with nothing reserved after it.
        _, slot = await pacing_rows.reserve(
            session, provider.account, 1 / 0.3, 1, utcnow(), dt.timedelta(seconds=1)
        )
    answer, logged = await _late_for_a_slot_after(db, provider, slot, pacing.Pacer(db))
    assert answer is None
    assert not [e for e in logged if e["event"] == "pacing.slot_missed"]


async def _next_slot(db: Database, account: str) -> dt.datetime | None:
    async with db.read() as session:
        return await session.scalar(
            select(PacingSlot.next_slot_at).where(PacingSlot.account == account)
        )
