"""Wake-ups by kind of work: who is poked, and how a NOTIFY payload is read."""

from __future__ import annotations

from bulletin.db import Database
from bulletin.signals import (
    CHANNEL,
    EVERY_KIND,
    Hub,
    Listener,
    Wakeup,
    Work,
    parse_payload,
    payload,
)


async def poked(*wakeups: Wakeup) -> list[bool]:
    """Which of ``wakeups`` were poked (a wait of 0 s returns at once either way)."""
    return [await w.wait(0) for w in wakeups]


async def test_a_wakeup_pokes_only_the_loops_that_take_its_kind_of_work() -> None:
    hub = Hub()
    scheduler = hub.subscribe(Work.MESSAGES)
    dispatcher = hub.subscribe(Work.DELIVERIES)
    everything = hub.subscribe()
    hub.poke([Work.DELIVERIES])
    assert await poked(scheduler, dispatcher, everything) == [False, True, True]
    hub.poke([Work.MESSAGES])
    assert await poked(scheduler, dispatcher, everything) == [True, False, True]
    hub.poke_all()
    assert await poked(scheduler, dispatcher, everything) == [True, True, True]


def test_a_payload_names_its_sender_and_its_kinds_of_work() -> None:
    hub = Hub()
    text = payload(hub.origin, [Work.DELIVERIES])
    assert parse_payload(text) == (hub.origin, frozenset({Work.DELIVERIES}))
    assert parse_payload(payload("a", Work)) == ("a", EVERY_KIND)


def test_a_payload_without_kinds_wakes_every_loop() -> None:
    # An empty payload (a plain NOTIFY), or kinds this version does not know of.
    assert parse_payload("") == (None, EVERY_KIND)
    assert parse_payload("sender") == ("sender", EVERY_KIND)
    assert parse_payload("sender receipts") == ("sender", EVERY_KIND)
    assert parse_payload("sender receipts messages") == ("sender", frozenset({Work.MESSAGES}))


async def test_a_process_does_not_hear_its_own_wakeups_again_but_hears_another_process() -> None:
    # Its own NOTIFY woke its loops when it was sent; hearing it back must poke nothing.
    hub = Hub()
    dispatcher = hub.subscribe(Work.DELIVERIES)
    db = Database("postgresql+asyncpg://bulletin@127.0.0.1:1/bulletin")  # never connected
    try:
        listener = Listener(db, hub)
        listener._heard(None, 0, CHANNEL, payload(hub.origin, [Work.DELIVERIES]))
        assert await poked(dispatcher) == [False]
        listener._heard(None, 0, CHANNEL, payload(Hub().origin, [Work.DELIVERIES]))
        assert await poked(dispatcher) == [True]
    finally:
        await db.dispose()
