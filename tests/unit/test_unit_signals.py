"""Wake-ups by kind of work: who is poked, and how a NOTIFY payload is read."""

from __future__ import annotations

from bulletin.worker.signals import EVERY_KIND, Hub, Wakeup, Work, parse_payload, payload


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


def test_processes_have_distinct_origins() -> None:
    assert Hub().origin != Hub().origin
