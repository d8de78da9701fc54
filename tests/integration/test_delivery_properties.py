"""The delivery state machine under random interleavings, on the real engine and databases.

A hypothesis rule-based state machine plays an organization's traffic against the real
services, repository, scheduler, dispatchers and completers on a database made by the real
migrations: messages are created (now or later, to everyone, to overlapping groups or to named
people, with routing ``first``, fallbacks and categories); several workers claim batches and
their providers answer in any order (accepted, transient, permanent, in doubt, or not at all: a
worker frozen past its lease, or killed); leases run out and are reaped; receipts arrive late,
out of order, twice, or for deliveries nobody knows; people change their preferences, reply
STOP and are deactivated; messages are cancelled. After every step the guarantees of
docs/architecture.md are checked against what the database holds and what the providers saw, and at
the end everything is drained: every delivery must then say what happened to it.

Time: the engine reads the wall clock, so the machine moves time forward by moving every
stored deadline (due times, leases, fallback deadlines, send times) back by the same amount.
Every duration the engine uses here is minutes long and a step takes milliseconds, so what is
due depends only on the steps taken, never on how fast they ran.

A provider call does not end by itself: the provider holds it until the machine decides how it
ends. A call still held when its lease has been taken over is a frozen worker; when it is
finally answered, the worker's completion is a zombie's. (In production the send timeout ends
a call well inside its lease; freezing is what a paused process or a stalled machine does.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import hypothesis
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text, update

from bulletin.bootstrap import running
from bulletin.channels.base import (
    Accepted,
    Inbound,
    OutboundMessage,
    Provider,
    Receipt,
    ReportedState,
)
from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.deliveries import progress, queue, receipts, repository
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery, DeliveryEvent, Suppression
from bulletin.deliveries.outcomes import Outcome, SuppressAddress
from bulletin.deliveries.states import DeliveryState
from bulletin.errors import Conflict, InDoubtSendError, PermanentSendError, TransientSendError
from bulletin.messages import schemas as message_schemas
from bulletin.messages import service as messages
from bulletin.messages.models import Message
from bulletin.messages.states import MessageState
from bulletin.recipients import schemas as recipient_schemas
from bulletin.recipients import service as recipients
from bulletin.signals import Hub, Notifier, Wakeup
from bulletin.worker.completer import Completer
from bulletin.worker.dispatcher import Dispatcher
from bulletin.worker.scheduler import Scheduler
from conftest import make_settings
from support.ci import IN_CI
from support.db_factories import insert_announcement, insert_people, new_org, person_row

T = TypeVar("T")

#: Who acts next, weighted: work flows through workers and providers most of the time.
ACTORS_WEIGHTED = (
    ["worker"] * 4
    + ["provider"] * 3
    + ["organization"] * 2
    + ["time"] * 2
    + ["scheduler", "person"]
)
ACTORS = {
    "worker": "worker_acts",
    "provider": "provider_acts",
    "organization": "organization_acts",
    "time": "time_passes",
    "scheduler": "scheduler_acts",
    "person": "person_acts",
}

CHANNELS = ("whatsapp", "email", "sms")
GROUPS = ("ops", "north", "south")
CATEGORY = "social"
WORKERS = ("worker-a", "worker-b", "worker-c")

# Durations of the engine, in minutes, and the steps time takes. Retries come back within 5
# minutes, leases last 15, fallback deadlines and scheduled messages come after 30: a 6-minute
# step makes retries due and nothing else, a 20-minute one also ends leases.
LEASE_MINUTES = 15
FALLBACK = "30m"
SCHEDULED_MINUTES = 30
TIME_STEPS = (6, 20, 120)

S = DeliveryState
#: Every move a delivery may make in one step (docs/architecture.md, "States").
EDGES: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.SENDING, S.CANCELLED}),
    S.SENDING: frozenset(
        {S.PENDING, S.SENT, S.DELIVERED, S.READ, S.FAILED, S.UNKNOWN, S.SUPPRESSED}
    ),
    # Proof of acceptance or a receipt settles an unknown; so does a hand-back (the claim
    # ended without calling the provider) written after the reaper had given up on it.
    S.UNKNOWN: frozenset({S.SENT, S.DELIVERED, S.READ, S.FAILED, S.PENDING, S.SUPPRESSED}),
    S.SENT: frozenset({S.DELIVERED, S.READ, S.FAILED}),
    S.DELIVERED: frozenset({S.READ}),
    S.READ: frozenset(),
    S.FAILED: frozenset(),
    S.SUPPRESSED: frozenset(),
    S.CANCELLED: frozenset(),
}


def _reachable() -> dict[S, frozenset[S]]:
    reach = {s: {s, *EDGES[s]} for s in S}
    changed = True
    while changed:
        changed = False
        for s in S:
            more = set().union(*(reach[t] for t in reach[s]))
            if not more <= reach[s]:
                reach[s] |= more
                changed = True
    return {s: frozenset(r) for s, r in reach.items()}


#: Where a delivery may be found later, given where it is now: states never move backwards.
REACHABLE = _reachable()
ACTIVE = frozenset({S.PENDING, S.SENDING})
#: States in which the person may have the message (or soon will).
REACHED = frozenset({S.SENDING, S.SENT, S.DELIVERED, S.READ, S.UNKNOWN})
#: States that must say why.
EXPLAINED = frozenset({S.FAILED, S.SUPPRESSED, S.CANCELLED})
_RECEIPT_LADDER = {S.SENDING: 0, S.UNKNOWN: 0, S.SENT: 1, S.DELIVERED: 2, S.READ: 3}


def receipt_should_move(current: S, reported: S) -> bool:
    """docs/architecture.md: receipts only move forward; a failure counts only before delivery."""
    if reported == S.FAILED:
        return current in {S.SENDING, S.SENT, S.UNKNOWN}
    return current in _RECEIPT_LADDER and _RECEIPT_LADDER[reported] > _RECEIPT_LADDER[current]


# --- What the providers saw -----------------------------------------------------------------


class Verdict(StrEnum):
    """How a provider call ends."""

    ACCEPT = "accept"  # taken, and the answer says so
    TRANSIENT = "transient"  # not taken; a later attempt may work
    PERMANENT = "permanent"  # refused for good
    BOUNCE = "bounce"  # refused for good, and the address must not be used again
    TAKEN_IN_DOUBT = "taken-in-doubt"  # taken, but the answer was lost
    LOST_IN_DOUBT = "lost-in-doubt"  # not taken, and the answer was lost
    KILLED = "killed"  # the worker died during the call


ANSWERS = [v for v in Verdict if v != Verdict.KILLED]


@dataclass(eq=False)
class SendRecord:
    """One call to a provider, in the order calls were made."""

    seq: int
    delivery_id: int
    attempt: int
    message_id: uuid.UUID
    provider: ScriptedProvider
    worker: str = ""
    verdict: Verdict | None = None
    #: Whether this call gave the person the message (a deduplicated repeat does not).
    took: bool = False
    answer: asyncio.Future[Verdict] = field(repr=False, kw_only=True)
    task: asyncio.Task[Any] | None = field(repr=False, kw_only=True)

    @property
    def held(self) -> bool:
        return self.verdict is None and not self.answer.done()

    def __repr__(self) -> str:
        return (
            f"<call {self.seq}: delivery {self.delivery_id} attempt {self.attempt} "
            f"on {self.provider.name} by {self.worker}>"
        )


class ScriptedProvider(Provider):
    """A provider whose every call waits until the test says how it ends.

    It is consistent about one message, as real providers are: a deduplicating provider
    answers a repeat of a delivery it took with the same acceptance, and a delivery refused
    for good is refused again.
    """

    def __init__(
        self, channel: str, deduplicates: bool, calls: list[SendRecord], moved: asyncio.Event
    ) -> None:
        self.name = f"{channel}-provider"
        self.account = self.name
        self.deduplicates = deduplicates
        self._calls = calls
        self._moved = moved
        #: Provider message id of every delivery this provider took.
        self.taken: dict[int, str] = {}
        self._refused: set[int] = set()

    async def send(self, message: OutboundMessage) -> Accepted:
        record = SendRecord(
            seq=len(self._calls),
            delivery_id=message.delivery_id,
            attempt=message.attempt,
            message_id=message.message_id,
            provider=self,
            answer=asyncio.get_running_loop().create_future(),
            task=asyncio.current_task(),
        )
        self._calls.append(record)
        self._moved.set()
        try:
            verdict = await record.answer
        except asyncio.CancelledError:
            record.verdict = Verdict.KILLED
            raise
        delivery = message.delivery_id
        if delivery in self._refused:
            verdict = Verdict.PERMANENT
        elif self.deduplicates and delivery in self.taken and verdict != Verdict.TAKEN_IN_DOUBT:
            verdict = Verdict.ACCEPT
        record.verdict = verdict
        if verdict in (Verdict.ACCEPT, Verdict.TAKEN_IN_DOUBT):
            record.took = not (self.deduplicates and delivery in self.taken)
            self.taken.setdefault(delivery, f"{self.name}-{delivery}-{message.attempt}")
        if verdict == Verdict.ACCEPT:
            return Accepted(self.taken[delivery])
        if verdict == Verdict.TRANSIENT:
            raise TransientSendError("busy, try later")
        if verdict in (Verdict.PERMANENT, Verdict.BOUNCE):
            self._refused.add(delivery)
            raise PermanentSendError("refused", suppress_address=verdict == Verdict.BOUNCE)
        raise InDoubtSendError("no answer")


class WatchedCompleter(Completer):
    """The real completer, also keeping what its next flush will write, for the checks."""

    def __init__(self, db: Database, moved: asyncio.Event) -> None:
        super().__init__(db, flush_seconds=0)
        self.queued: list[Outcome] = []
        self._moved = moved

    def add(self, outcome: Outcome) -> None:
        self.queued.append(outcome)
        self._moved.set()
        super().add(outcome)


@dataclass
class Worker:
    """One worker process: its dispatcher and the completer that writes its outcomes."""

    name: str
    dispatcher: Dispatcher
    completer: WatchedCompleter


# --- The model ------------------------------------------------------------------------------


@dataclass
class PersonModel:
    """What the test knows of a recipient: addresses, groups, choices."""

    external_id: str
    id: int
    email: str | None
    phone: str | None
    groups: frozenset[str]
    active: bool = True
    choices: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(CHANNELS))
    opted_out: bool = False  # of CATEGORY

    def address(self, channel: str) -> str | None:
        return self.email if channel == "email" else self.phone


@dataclass
class MessageModel:
    """What the test knows of a message, and what happened to it."""

    id: uuid.UUID
    kind: str
    routing: str
    channels: list[str]
    fallback: bool
    audience: dict[str, Any]
    due_at: int  # minutes on the machine's clock
    #: The people it was resolved to, once resolved.
    resolved_to: set[int] | None = None
    #: When cancel returned: the last delivery event and the number of provider calls.
    cancelled_at: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"<{self.kind} {str(self.id)[-6:]} {self.routing} {self.channels}>"


@dataclass(frozen=True)
class Row:
    """A delivery as stored, detached from any session."""

    id: int
    message_id: uuid.UUID
    recipient_id: int
    channel: str
    state: S
    attempt: int
    send_attempts: int
    lease_expires_at: dt.datetime | None
    next_attempt_at: dt.datetime
    fallback_at: dt.datetime | None
    reason: str | None
    provider_message_id: str | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class EventRow:
    id: int
    delivery_id: int
    state: S
    attempt: int | None


@dataclass
class Snapshot:
    rows: dict[int, Row]
    events: list[EventRow]
    message_states: dict[uuid.UUID, str]

    def events_of(self) -> dict[int, list[EventRow]]:
        by_delivery: dict[int, list[EventRow]] = defaultdict(list)
        for event in self.events:
            by_delivery[event.delivery_id].append(event)
        return by_delivery

    @property
    def last_event_id(self) -> int:
        return self.events[-1].id if self.events else 0


_ROW_COLUMNS = [getattr(Delivery, name) for name in Row.__dataclass_fields__]


async def snapshot(db: Database, only: set[int] | None = None) -> Snapshot:
    """The deliveries, their events and the messages' states, as stored now (``only``: just
    these deliveries and their events). Plain rows, no ORM objects: it runs after every step."""
    deliveries = select(*_ROW_COLUMNS)
    events = select(
        DeliveryEvent.id, DeliveryEvent.delivery_id, DeliveryEvent.state, DeliveryEvent.attempt
    ).order_by(DeliveryEvent.id)
    if only is not None:
        deliveries = deliveries.where(Delivery.id.in_(only))
        events = events.where(DeliveryEvent.delivery_id.in_(only))
    async with db.read() as session:
        rows = {}
        for values in await session.execute(deliveries):
            row = Row(*values)
            rows[row.id] = dataclasses.replace(row, state=S(row.state))
        found = [
            EventRow(i, d, S(state), attempt)
            for i, d, state, attempt in await session.execute(events)
        ]
        states = {i: s for i, s in await session.execute(select(Message.id, Message.state))}
    return Snapshot(rows, found, states)


async def empty(db: Database) -> None:
    """Delete every row of a PostgreSQL database, keeping the schema the migrations made."""
    async with db.transaction() as session:
        tables = (
            await session.execute(
                text(
                    "SELECT tablename FROM pg_tables "
                    "WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
                )
            )
        ).scalars()
        names = ", ".join(f'"{t}"' for t in tables)
        await session.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def engine_settings(database_url: str) -> Settings:
    return make_settings(
        database_url,
        lease_seconds=LEASE_MINUTES * 60,
        send_timeout_seconds=10 * 60,
        retry_base_seconds=60,
        retry_max_seconds=5 * 60,
        max_attempts=3,
        max_in_flight=1000,
        resolve_chunk_size=2,
        completion_flush_ms=0,
    )


class DeliveryMachine(RuleBasedStateMachine):
    """One organization with its people and messages, a scheduler, three workers, a provider
    per channel, and a model of what must be true."""

    def __init__(self, database_url: str, *, empty_first: bool = False) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.settings = engine_settings(database_url)
        # Durability across power loss is not what this test is about; NORMAL spares fsyncs.
        self.db = Database(database_url, sqlite_synchronous="NORMAL")
        if empty_first:
            self.run(empty(self.db))
        self.ready = False
        self.org_id = uuid.UUID(int=0)
        self.people: list[PersonModel] = []
        self.messages: list[MessageModel] = []
        self.calls: list[SendRecord] = []
        #: Set whenever a provider is called or a worker keeps an outcome.
        self.moved = asyncio.Event()
        self.providers: dict[str, ScriptedProvider] = {}
        self.workers: dict[str, Worker] = {}
        self.clock = 0  # minutes moved forward so far
        self.last: Snapshot | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def rows(self) -> list[Row]:
        """The deliveries as the last check saw them, which is as they are between steps."""
        return list(self.last.rows.values()) if self.last is not None else []

    # --- setting up -------------------------------------------------------------------------

    @initialize(
        people=st.lists(
            st.tuples(
                st.sampled_from(["email and phone", "email and phone", "email", "phone", "none"]),
                st.frozensets(st.sampled_from(GROUPS), max_size=3),
            ),
            min_size=2,
            max_size=5,
        ),
        deduplicating=st.frozensets(st.sampled_from(CHANNELS)),
    )
    def set_up(
        self,
        people: list[tuple[str, frozenset[str]]],
        deduplicating: frozenset[str],
    ) -> None:
        """People with or without email and phone, in overlapping groups; providers per channel."""
        self.providers = {
            c: ScriptedProvider(c, c in deduplicating, self.calls, self.moved) for c in CHANNELS
        }
        self.registry = ChannelRegistry(self.providers["email"], dict(self.providers))
        self.scheduler = Scheduler(
            self.db, self.registry, self.settings, Wakeup(), Notifier(self.db, Hub())
        )
        self.workers = {name: self._new_worker(name) for name in WORKERS}
        rows = [
            person_row(
                n,
                email=f"p{n}@example.com" if "email" in addresses else None,
                phone=f"+2782555{n:04d}" if "phone" in addresses else None,
                whatsapp=f"+2782555{n:04d}" if "phone" in addresses else None,
                groups=sorted(groups),
            )
            for n, (addresses, groups) in enumerate(people)
        ]

        async def make() -> dict[str, int]:
            self.org_id = await new_org(self.db)
            return await insert_people(self.db, self.org_id, rows)

        ids = self.run(make())
        self.people = [
            PersonModel(r["external_id"], ids[r["external_id"]], r["email"], r["phone"], g)
            for r, (_, g) in zip(rows, people, strict=True)
        ]
        self.ready = True

    def _new_worker(self, name: str) -> Worker:
        dispatcher = Dispatcher(self.db, self.registry, self.settings, Wakeup())
        completer = WatchedCompleter(self.db, self.moved)
        dispatcher.completer = completer
        return Worker(name, dispatcher, completer)

    # --- messages ---------------------------------------------------------------------------

    channel_lists = st.permutations(CHANNELS).flatmap(
        lambda order: st.integers(1, 3).map(lambda n: list(order[:n]))
    )

    @precondition(lambda self: self.ready)
    @rule(data=st.data(), actor=st.sampled_from(ACTORS_WEIGHTED))
    def next_happens(self, data: st.DataObject, actor: str) -> None:
        """What happens next, and to whom. One rule draws the actor, with weights, so that
        every run has all of them at work (hypothesis would otherwise leave some rules out of
        many runs, and the budget of runs is small)."""
        getattr(self, ACTORS[actor])(data)

    def organization_acts(self, data: st.DataObject) -> None:
        """Through the API: an announcement to everyone, to groups (which overlap) or to named
        people (perhaps named twice), a notification to one person, or a cancel."""
        action = data.draw(
            st.sampled_from(["announces", "announces", "notifies", "cancels"]), label="action"
        )
        if action == "cancels" and self.messages:
            # Mostly a message with sends in flight: the case where cancelling is delicate.
            sending = {r.message_id for r in self.rows() if r.state == S.SENDING}
            busy = [m for m in self.messages if m.id in sending]
            among = self.messages
            prefer_busy: bool = data.draw(st.booleans(), label="one with sends in flight")
            if busy and prefer_busy:
                among = busy
            self._cancel(data.draw(st.sampled_from(among), label="message"))
            return
        channels = data.draw(self.channel_lists, label="channels")
        fallback = data.draw(st.booleans(), label="fallback")
        scheduled = data.draw(st.booleans(), label="scheduled")
        if action == "notifies":
            who = data.draw(st.sampled_from(self.people), label="recipient")
            audience = {"recipients": [who.external_id]}
            self._create("notification", audience, channels, "first", fallback, False, scheduled)
            if data.draw(st.booleans(), label="the scheduler resolves at once"):
                self.run(self._resolve())
            return
        routing = data.draw(st.sampled_from(["first", "all"]), label="routing")
        social = data.draw(st.booleans(), label="social")
        audience = data.draw(
            st.one_of(
                st.just({"all": True}),
                st.frozensets(st.sampled_from(GROUPS), min_size=1).map(
                    lambda g: {"groups": sorted(g)}
                ),
                st.lists(st.sampled_from(self.people), min_size=1, max_size=6).map(
                    lambda named: {"recipients": [p.external_id for p in named]}
                ),
            ),
            label="audience",
        )
        self._create("announcement", audience, channels, routing, fallback, social, scheduled)
        if data.draw(st.booleans(), label="the scheduler resolves at once"):
            self.run(self._resolve())

    def _create(
        self,
        kind: str,
        audience: dict[str, Any],
        channels: list[str],
        routing: str,
        fallback: bool,
        social: bool,
        scheduled: bool,
    ) -> None:
        fields: dict[str, Any] = {
            "title": "Hello {{ recipient.name }}",
            "body": "Body",
            "channels": channels,
            "routing": routing,
        }
        if fallback and routing == "first":
            fields["fallback_after"] = FALLBACK
        if social:
            fields["category"] = CATEGORY
        if scheduled:
            later = utcnow() + dt.timedelta(minutes=SCHEDULED_MINUTES)
            fields["send_at"] = later.isoformat()

        async def make() -> Message:
            async with self.db.transaction() as session:
                if kind == "notification":
                    body = message_schemas.NotificationIn.model_validate(
                        {**fields, "recipient": audience["recipients"][0]}
                    )
                    return await messages.create_notification(session, self.org_id, body)
                announcement = message_schemas.AnnouncementIn.model_validate(
                    {**fields, "audience": audience}
                )
                return await messages.create_announcement(session, self.org_id, announcement)

        made = self.run(make())
        self.messages.append(
            MessageModel(
                made.id,
                kind,
                routing,
                channels,
                "fallback_after" in fields,
                audience,
                self.clock + (SCHEDULED_MINUTES if scheduled else 0),
            )
        )

    def _audience(self, message: MessageModel) -> set[int]:
        """Who the message reaches if resolved now: named people as named, groups as active."""
        if "recipients" in message.audience:
            named = set(message.audience["recipients"])
            return {p.id for p in self.people if p.external_id in named}
        groups = set(message.audience.get("groups", GROUPS))
        everyone = message.audience.get("all", False)
        return {p.id for p in self.people if p.active and (everyone or p.groups & groups)}

    def _first_channel(self, message: MessageModel, who: PersonModel) -> str:
        for channel in message.channels:
            if who.address(channel) is not None and who.choices[channel] is not False:
                return channel
        return message.channels[0]

    # --- the scheduler ----------------------------------------------------------------------

    def scheduler_acts(self, data: st.DataObject) -> None:
        """One duty of the scheduler, or a whole round of them."""
        duty = data.draw(
            st.sampled_from(["resolve", "reap", "fall back", "finish", "tick"]), label="duty"
        )
        if duty == "resolve":
            self.run(self._resolve())
        elif duty == "reap":
            self.run(self._reap())
        elif duty == "fall back":
            self.run(self.scheduler.fall_back_due())
        elif duty == "finish":
            self.run(self.scheduler.finish_messages())
        else:
            self.run(self._resolve())
            self.run(self.scheduler.tick())

    async def _resolve(self) -> None:
        """G2: a due audience becomes one delivery per person (per channel with routing all)."""
        waiting = [m for m in self.messages if m.resolved_to is None and m.cancelled_at is None]
        due = [m for m in waiting if m.due_at <= self.clock]
        expected = {m.id: self._audience(m) for m in due}
        await self.scheduler.resolve_due()
        after = await snapshot(self.db)
        by_person = {p.id: p for p in self.people}
        for m in waiting:
            made = {
                (r.recipient_id, r.channel) for r in after.rows.values() if r.message_id == m.id
            }
            if m not in due:
                assert made == set(), f"{m} was resolved before it was due"
                continue
            m.resolved_to = expected[m.id]
            if m.routing == "all":
                wanted = {(p, c) for p in expected[m.id] for c in m.channels}
            else:
                wanted = {(p, self._first_channel(m, by_person[p])) for p in expected[m.id]}
            assert made == wanted, f"{m} resolved to {sorted(made)}, not {sorted(wanted)}"
            assert after.message_states[m.id] == MessageState.SENDING

    async def _reap(self) -> None:
        """Sends whose lease ran out become unknown, or pending again where the provider
        deduplicates; nothing else changes."""
        before = await snapshot(self.db)
        now = utcnow()
        await self.scheduler.reap_expired()
        after = await snapshot(self.db)
        for row in before.rows.values():
            lease = row.lease_expires_at
            if row.state == S.SENDING and lease is not None and lease < now:
                settled = {S.UNKNOWN, self._retried(S.PENDING, row)}
                assert after.rows[row.id].state in settled, after.rows[row.id]
            else:
                assert after.rows[row.id] == row, (
                    f"the reaper changed {row} to {after.rows[row.id]}"
                )

    def time_passes(self, data: st.DataObject) -> None:
        """Time passes, and perhaps the scheduler then does a round of its duties."""
        self.run(self._advance(data.draw(st.sampled_from(TIME_STEPS), label="minutes")))
        if data.draw(st.booleans(), label="then the scheduler runs"):
            self.run(self._resolve())
            self.run(self._reap())
            self.run(self.scheduler.tick())

    async def _advance(self, minutes: int) -> None:
        delta = dt.timedelta(minutes=minutes)
        async with self.db.transaction() as session:
            for d in (await session.execute(select(Delivery))).scalars():
                d.next_attempt_at -= delta
                if d.lease_expires_at is not None:
                    d.lease_expires_at -= delta
                if d.fallback_at is not None:
                    d.fallback_at -= delta
            for m in (await session.execute(select(Message))).scalars():
                m.send_at -= delta
        self.clock += minutes

    # --- workers ----------------------------------------------------------------------------

    def worker_acts(self, data: st.DataObject) -> None:
        """A worker claims a batch and starts its sends (some providers answer at once, the
        other calls stay in flight), and perhaps writes the outcomes it has; or it writes them;
        or it dies (SIGKILL: calls in flight end unanswered and unwritten outcomes are lost,
        unless it wrote them just before). A new process takes a dead worker's place."""
        name = data.draw(st.sampled_from(WORKERS), label="worker")
        action = data.draw(
            st.sampled_from(["claims", "claims", "claims", "writes outcomes", "dies"]),
            label="action",
        )
        worker = self.workers[name]
        if action == "claims":
            minutes = data.draw(st.sampled_from([0, 0, TIME_STEPS[0]]), label="minutes before")
            if minutes:
                self.run(self._advance(minutes))
            if data.draw(st.booleans(), label="writes outcomes first"):
                self.run(self._flush(worker))
            calls = len(self.calls)
            self.run(self._claim(worker, data.draw(st.integers(1, 4), label="limit")))
            for record in self.calls[calls:]:
                verdict = data.draw(st.sampled_from([*ANSWERS, None, None]), label="answer")
                if verdict is not None:
                    self.run(self._answer(record, verdict))
            if data.draw(st.booleans(), label="then writes outcomes"):
                self.run(self._flush(worker))
        elif action == "writes outcomes":
            self.run(self._flush(worker))
        else:
            self.run(self._kill(worker, data.draw(st.booleans(), label="writes outcomes first")))
            self.workers[name] = self._new_worker(name)

    async def _claim(self, worker: Worker, limit: int) -> None:
        """Claim and dispatch a batch; returns once every send has reached its provider."""
        calls, queued = len(self.calls), len(worker.completer.queued)
        # The loop's own step, driven from here; the dispatcher has no public single step.
        claimed = await worker.dispatcher._claim_and_dispatch(limit)
        async with asyncio.timeout(10):
            while len(self.calls) - calls + len(worker.completer.queued) - queued < claimed:
                self.moved.clear()
                await self.moved.wait()
        for record in self.calls[calls:]:
            record.worker = worker.name

    async def _answer(self, record: SendRecord, verdict: Verdict) -> None:
        worker = self.workers[record.worker]
        queued = len(worker.completer.queued)
        record.answer.set_result(verdict)
        assert record.task is not None
        await record.task
        assert len(worker.completer.queued) == queued + 1, "the send's outcome was not kept"

    async def _flush(self, worker: Worker) -> None:
        """G1: the fence. An outcome applies only to the claim it came from; a zombie's
        (a claim since taken over) changes nothing, except that proof of acceptance or a
        hand-back settles an ``unknown`` left by the same attempt."""
        batch = list(worker.completer.queued)
        worker.completer.queued.clear()
        if not batch:
            return
        touched = {o.delivery_id for o in batch}
        before = await snapshot(self.db, touched)
        assert await worker.completer.drain(timeout=5.0), "outcomes could not be written"
        after = await snapshot(self.db, touched)
        applying: dict[int, Outcome] = {}
        for o in batch:
            row = before.rows[o.delivery_id]
            settles = o.state == S.SENT or o.gave_back
            holds = row.state == S.SENDING or (row.state == S.UNKNOWN and settles)
            if row.attempt == o.attempt and holds:
                applying[o.delivery_id] = o
        for o in batch:
            row, now = before.rows[o.delivery_id], after.rows[o.delivery_id]
            if o.delivery_id not in applying:
                assert now == row, f"the stale outcome {o} changed {row} to {now}"
                continue
            applied = applying[o.delivery_id]
            assert now.state == self._retried(applied.state, row), f"{applied} not applied: {now}"
            assert now.channel == (applied.channel or row.channel)
            assert now.lease_expires_at is None

    def _retried(self, state: S, row: Row) -> S:
        """Where an outcome of ``state`` leaves ``row``: a send that will be tried again is
        cancelled instead when its message has been cancelled (G5)."""
        message = next(m for m in self.messages if m.id == row.message_id)
        return S.CANCELLED if state == S.PENDING and message.cancelled_at else state

    async def _kill(self, worker: Worker, keep_outcomes: bool) -> None:
        if keep_outcomes:
            await self._flush(worker)
        tasks = [r.task for r in self.calls if r.held and r.worker == worker.name and r.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- receipts, people, cancels ----------------------------------------------------------

    def provider_acts(self, data: st.DataObject) -> None:
        """A provider ends a call in flight (any one, however old), or sends a receipt: for
        what it took, in any order and repeated, or for a delivery Bulletin never made."""
        action = data.draw(
            st.sampled_from(["answers", "answers", "answers", "reports"]), label="action"
        )
        held = [r for r in self.calls if r.held]
        if action == "answers" and held:
            record = data.draw(st.sampled_from(held), label="call")
            verdict = data.draw(st.sampled_from(ANSWERS), label="verdict")
            self.run(self._answer(record, verdict))
            return
        state = data.draw(st.sampled_from(ReportedState), label="state")
        taken = [(p, d, ref) for p in self.providers.values() for d, ref in p.taken.items()]
        if not taken or data.draw(st.booleans(), label="stranger"):
            provider, delivery_id, reference = self.providers["sms"], 10**9, "ref-unknown"
        else:
            provider, delivery_id, reference = data.draw(st.sampled_from(taken), label="taken")
        receipt = Receipt(
            provider_message_id=reference if data.draw(st.booleans(), label="ref") else None,
            delivery_id=delivery_id,
            state=state,
            at=utcnow(),
            detail="reported",
            suppress_address=state == ReportedState.FAILED
            and data.draw(st.booleans(), label="stop"),
        )
        self.run(self._report(provider, receipt))

    async def _report(self, provider: ScriptedProvider, receipt: Receipt) -> None:
        assert receipt.delivery_id is not None
        # For a delivery nobody knows, everything must stay as it was.
        known = any(r.id == receipt.delivery_id for r in self.rows())
        only = {receipt.delivery_id} if known else None
        before = await snapshot(self.db, only)
        async with self.db.transaction() as session:
            source = receipts.Source(
                provider.name, provider.name.removesuffix("-provider"), "default", [self.org_id]
            )
            result = await receipts.apply_receipts(session, source, [receipt])
        after = await snapshot(self.db, only)
        row = before.rows.get(receipt.delivery_id)
        reported = S(receipt.state.value)
        if row is None:
            assert result.unmatched == 1
            assert after.rows == before.rows
            assert after.events == before.events
            return
        ours, theirs = row.provider_message_id, receipt.provider_message_id
        matches = ours is None or theirs is None or ours == theirs
        now = after.rows[row.id]
        if matches and receipt_should_move(row.state, reported):
            assert result.moved == 1
            assert now.state == reported
            assert now.lease_expires_at is None
            return
        assert (result.unchanged, result.unmatched) == ((1, 0) if matches else (0, 1))
        assert now == row, f"a receipt {reported} that moves nothing changed {row} to {now}"
        assert [e for e in after.events if e.delivery_id == row.id] == [
            e for e in before.events if e.delivery_id == row.id
        ]

    def person_acts(self, data: st.DataObject) -> None:
        """New preferences (channels, a category opt-out), a STOP or START reply, or the
        organization deactivates the person."""
        how = data.draw(st.sampled_from(["preferences", "reply", "deactivated"]), label="action")
        who = data.draw(st.sampled_from(self.people), label="person")
        if how == "preferences":
            choice = st.sampled_from([None, True, False])
            choices = {c: data.draw(choice, label=c) for c in CHANNELS}
            opt_out = data.draw(st.booleans(), label="opt_out")
            body = recipient_schemas.PreferencesIn(
                channels=recipient_schemas.ChannelPreferences(**choices),
                categories={CATEGORY: False} if opt_out else {},
            )

            async def change() -> None:
                async with self.db.transaction() as session:
                    await recipients.put_preferences(session, self.org_id, who.external_id, body)

            self.run(change())
            who.choices, who.opted_out = choices, opt_out
        elif how == "reply" and who.phone is not None:
            channel = data.draw(st.sampled_from(["sms", "whatsapp"]), label="channel")
            keyword = data.draw(st.sampled_from(["STOP", "START"]), label="keyword")
            reply = Inbound(channel, who.phone, keyword, utcnow())

            async def deliver() -> None:
                async with self.db.transaction() as session:
                    provider = "twilio" if channel == "sms" else "whatsapp_cloud"
                    source = receipts.Source(provider, channel, "default", [self.org_id])
                    await receipts.apply_inbound(session, source, [reply])

            self.run(deliver())
            who.choices[channel] = keyword == "START"
        elif how == "deactivated":

            async def deactivate() -> None:
                async with self.db.transaction() as session:
                    await recipients.deactivate(session, self.org_id, who.external_id)

            self.run(deactivate())
            who.active = False

    def _cancel(self, message: MessageModel) -> None:
        """G5 starts here: once cancel returns, no delivery of the message starts."""
        before = self.run(snapshot(self.db))
        mine = [r for r in before.rows.values() if r.message_id == message.id]
        state = before.message_states[message.id]
        left = any(r.state in ACTIVE for r in mine)
        finished = state in (MessageState.COMPLETED, MessageState.CANCELLED) or (
            state == MessageState.SENDING and not left
        )

        async def cancel() -> int:
            async with self.db.transaction() as session:
                _, cancelled = await progress.cancel(session, self.org_id, message.id, message.kind)
                return cancelled

        try:
            cancelled = self.run(cancel())
        except Conflict:
            assert finished, f"{message} in state {state} could not be cancelled"
            return
        assert not finished, f"{message} in state {state} was cancelled"
        after = self.run(snapshot(self.db))
        pending = [r.id for r in mine if r.state == S.PENDING]
        assert cancelled == len(pending)
        assert all(after.rows[i].state == S.CANCELLED for i in pending)
        message.cancelled_at = (after.last_event_id, len(self.calls))

    # --- the guarantees, after every step ---------------------------------------------------

    @invariant()
    def guarantees_hold(self) -> None:
        if not self.ready:
            return
        now = self.run(snapshot(self.db))
        check_deliveries(now, self.last)
        self.check_routing(now)
        self.check_one_send(now)
        self.check_cancels(now)
        self.last = now

    def check_routing(self, now: Snapshot) -> None:
        """G2: one delivery per (message, person, channel); with routing first one channel
        at a time, and without a fallback deadline, one channel only."""
        keys = Counter((r.message_id, r.recipient_id, r.channel) for r in now.rows.values())
        assert max(keys.values(), default=1) == 1, "two deliveries share message, person, channel"
        by_id = {m.id: m for m in self.messages}
        per_person: dict[tuple[uuid.UUID, int], list[Row]] = defaultdict(list)
        for row in now.rows.values():
            per_person[row.message_id, row.recipient_id].append(row)
        for (message_id, _), rows in per_person.items():
            message = by_id[message_id]
            if message.routing != "first":
                continue
            assert sum(r.state in ACTIVE for r in rows) <= 1, f"{message}: {rows}"
            if not message.fallback:
                assert sum(r.state in REACHED for r in rows) <= 1, f"{message}: {rows}"

    def check_one_send(self, now: Snapshot) -> None:
        """G1: no provider takes a delivery twice, and no person gets one message twice; a
        provider that does not deduplicate is called again only after it said it had not
        taken the message."""
        calls: dict[int, list[SendRecord]] = defaultdict(list)
        for record in self.calls:
            calls[record.delivery_id].append(record)
        for delivery_id, records in calls.items():
            assert sum(r.took for r in records) <= 1, (
                f"delivery {delivery_id} sent twice: {records}"
            )
            for i, record in enumerate(records[:-1]):
                if not record.provider.deduplicates:
                    assert record.verdict == Verdict.TRANSIENT, (
                        f"{records[i + 1]} came after {record}, which ended "
                        f"{record.verdict or 'not yet'}"
                    )
        by_id = {m.id: m for m in self.messages}
        received: Counter[tuple[uuid.UUID, int]] = Counter()
        for delivery_id, records in calls.items():
            row = now.rows[delivery_id]
            if any(r.took for r in records) and row.state != S.FAILED:
                received[row.message_id, row.recipient_id] += 1
        for (message_id, person_id), n in received.items():
            message = by_id[message_id]
            if message.routing == "first" and not message.fallback:
                assert n == 1, f"person {person_id} got {message} {n} times"

    def check_cancels(self, now: Snapshot) -> None:
        """G5: after cancel returned, nothing of the message is claimed, sent or left waiting."""
        for message in self.messages:
            if message.cancelled_at is None:
                continue
            last_event, calls = message.cancelled_at
            mine = {r.id for r in now.rows.values() if r.message_id == message.id}
            claimed = [
                e
                for e in now.events
                if e.delivery_id in mine and e.id > last_event and e.state == S.SENDING
            ]
            assert claimed == [], f"{message} was claimed after it was cancelled: {claimed}"
            sent = [r for r in self.calls[calls:] if r.message_id == message.id]
            assert sent == [], f"{message} was sent after it was cancelled: {sent}"
            waiting = [now.rows[i] for i in mine if now.rows[i].state == S.PENDING]
            assert waiting == [], f"{message} is cancelled but has deliveries waiting: {waiting}"
            assert now.message_states[message.id] == MessageState.CANCELLED

    # --- the end: drain, then everything says what happened ---------------------------------

    def teardown(self) -> None:
        try:
            # After a failed step, report that failure rather than what it led to.
            if self.ready and sys.exc_info()[0] is None:
                self.run(self._drain())
                self.guarantees_hold()
                self.check_drained()
        finally:
            self.run(self._close())
            self.runner.close()

    async def _drain(self) -> None:
        """Every worker dies, time passes, fresh workers whose providers accept everything
        run with the scheduler until nothing is left to do."""
        for name, worker in list(self.workers.items()):
            await self._kill(worker, keep_outcomes=True)
            self.workers[name] = self._new_worker(name)
        for _ in range(20):
            await self._advance(120)
            await self._resolve()
            await self.scheduler.tick()
            for worker in self.workers.values():
                await self._claim(worker, 1000)
                for record in [r for r in self.calls if r.held]:
                    await self._answer(record, Verdict.ACCEPT)
                await self._flush(worker)
            await self.scheduler.finish_messages()
            now = await snapshot(self.db)
            busy = [r for r in now.rows.values() if r.state in ACTIVE]
            waiting = [
                s
                for s in now.message_states.values()
                if s not in (MessageState.COMPLETED, MessageState.CANCELLED)
            ]
            if not busy and not waiting:
                return
        raise AssertionError(f"no quiescence: {busy} {waiting}")

    def check_drained(self) -> None:
        """G4: every delivery is settled, with a reason where it failed, was suppressed or
        cancelled, and every person of every message that went out has a delivery."""
        now = self.run(snapshot(self.db))
        for row in now.rows.values():
            assert row.state not in ACTIVE, row
        for message in self.messages:
            state = now.message_states[message.id]
            reached = {r.recipient_id for r in now.rows.values() if r.message_id == message.id}
            if message.resolved_to is None:
                assert message.cancelled_at is not None, f"{message} was never resolved"
                assert state == MessageState.CANCELLED
                assert reached == set()
            else:
                assert reached == message.resolved_to, f"{message}: {reached}"

    async def _close(self) -> None:
        held = [r.task for r in self.calls if r.held and r.task is not None]
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await self.db.dispose()


def check_deliveries(now: Snapshot, before: Snapshot | None) -> None:
    """G4 and the state machine: each delivery is in a known state reached by allowed moves,
    every move recorded; ``sending`` exactly when leased; attempts count claims; nothing
    moved backwards since the last look."""
    events = now.events_of()
    for row in now.rows.values():
        assert (row.lease_expires_at is not None) == (row.state == S.SENDING), row
        if row.state in EXPLAINED:
            assert row.reason, f"{row} does not say why"
        assert row.send_attempts <= row.attempt
        state, attempt = S.PENDING, 0
        for i, event in enumerate(events[row.id]):
            first_of_fallback = i == 0 and event.state == S.PENDING
            assert first_of_fallback or event.state in EDGES[state], (
                f"delivery {row.id} moved {state} -> {event.state}: {events[row.id]}"
            )
            if event.state == S.SENDING:
                assert event.attempt == attempt + 1, f"claims out of order: {events[row.id]}"
                attempt += 1
            else:
                assert event.attempt in (None, attempt), f"a stale change: {events[row.id]}"
            state = event.state
        assert state == row.state, f"{row} but its last event says {state}"
        assert attempt == row.attempt, f"{row} after {attempt} claims"
        if before is not None and row.id in before.rows:
            was = before.rows[row.id].state
            assert row.state in REACHABLE[was], f"delivery {row.id} went back: {was} -> {row}"


#: Runs on SQLite; PostgreSQL gets half. On two idle cores that takes about 15 s and 10 s.
#: Set BULLETIN_PROPERTY_EXAMPLES higher to search longer.
EXAMPLES = int(os.environ.get("BULLETIN_PROPERTY_EXAMPLES", "30"))
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    # No example database in the repository; in CI the same runs every time.
    database=None,
    derandomize=IN_CI,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


def test_deliveries_keep_their_guarantees_in_any_interleaving(
    backend: str, make_database_url: Callable[[str], str]
) -> None:
    """G1, G2, G4, G5 and the state machine, on random interleavings of everything."""

    # SQLite: a fresh copy of the migrated database for every run. PostgreSQL: one migrated
    # database, emptied before every run, because making one takes longer than a run.
    shared = make_database_url(backend) if backend == "postgresql" else None

    class OnThisBackend(DeliveryMachine):
        def __init__(self) -> None:
            super().__init__(shared or make_database_url(backend), empty_first=bool(shared))

    examples = EXAMPLES if backend == "sqlite" else max(1, EXAMPLES // 2)
    run_state_machine_as_test(
        OnThisBackend, settings=hypothesis.settings(SETTINGS, max_examples=examples)
    )


async def test_a_stale_outcome_next_to_the_current_one_in_a_batch_is_fenced_out(
    db: Database,
) -> None:
    """A worker's batch may hold the outcome of a claim since taken over next to the outcome
    of the current claim of the same delivery (it claimed the delivery again after its lease
    ran out). Only the current one is applied, recorded and acted on."""
    org = await new_org(db)
    await insert_people(db, org, [person_row(1, phone="+27821234567")])
    message = await insert_announcement(db, org, channels=["email", "sms"])
    async with db.transaction() as session:
        loaded = await session.get(Message, message.id)
        assert loaded is not None
        await resolve_chunk(session, loaded, 10)

    async def claim() -> queue.ClaimedRow:
        now = utcnow()
        async with db.transaction() as session:
            [row] = await queue.claim(session, now, now + dt.timedelta(minutes=1), 10)
        return row

    async def complete(outcomes: list[Outcome]) -> list[Outcome]:
        async with db.transaction() as session:
            return await queue.complete(session, outcomes, utcnow())

    first = await claim()
    # The lease ran out and the in-doubt policy put the delivery back; it is claimed again.
    await complete([Outcome(first.id, first.attempt, S.PENDING, next_attempt_at=utcnow())])
    second = await claim()
    stale = Outcome(
        first.id,
        first.attempt,
        S.FAILED,
        detail="bounced",
        suppress=SuppressAddress(org, "email", "p1@example.com"),
    )
    current = Outcome(second.id, second.attempt, S.SENT, provider="p", provider_message_id="m2")

    assert await complete([stale, current]) == [current]

    async with db.read() as session:
        events = await repository.events(session, first.id)
        blocked = (await session.execute(select(Suppression))).scalars().all()
        deliveries = (await session.execute(select(Delivery))).scalars().all()
    assert [(e.state, e.attempt) for e in events] == [
        ("sending", 1),
        ("pending", 1),
        ("sending", 2),
        ("sent", 2),
    ]
    assert blocked == [], "the stale outcome's suppression was recorded"
    assert [d.channel for d in deliveries] == ["email"], "the stale failure fell back to SMS"


async def test_a_send_in_doubt_at_a_deduplicating_provider_is_not_moved_to_another_channel(
    settings: Settings, db: Database
) -> None:
    """A send in doubt is retried only because its provider recognises a repeat. If the
    person has turned that channel off meanwhile, moving the delivery to their next channel
    could reach them twice: it is suppressed instead, and says why."""
    org = await new_org(db)
    number = "+27821234567"
    ids = await insert_people(db, org, [person_row(1, email=None, phone=number, whatsapp=number)])
    async with db.transaction() as session:
        body = message_schemas.NotificationIn(
            title="Hello", body="Body", recipient="p1", channels=["whatsapp", "sms"]
        )
        note = await messages.create_notification(session, org, body)
    whatsapp = RecordingProvider(name="wa", deduplicates=True, behaviour=_in_doubt_once())
    sms = RecordingProvider(name="sms")
    registry = ChannelRegistry(sms, {"whatsapp": whatsapp, "sms": sms})
    # Retries wait an hour, so the person can change their mind before the retry.
    tuned = make_settings(settings.database_url, retry_base_seconds=3600, retry_max_seconds=3600)
    async with running(tuned, dispatch=True, schedule=True, db=db, registry=registry):
        await _eventually(lambda: _delivery_is(db, note.id, "pending", "sent again"))
        async with db.transaction() as session:
            await recipients.put_preferences(
                session,
                org,
                "p1",
                recipient_schemas.PreferencesIn(
                    channels=recipient_schemas.ChannelPreferences(whatsapp=False)
                ),
            )
            await session.execute(
                update(Delivery)
                .where(Delivery.recipient_id == ids["p1"])
                .values(next_attempt_at=utcnow() - dt.timedelta(seconds=1))
            )
        await _eventually(lambda: _delivery_is(db, note.id, "settled", ""))

    async with db.read() as session:
        [delivery] = (await session.execute(select(Delivery))).scalars().all()
    assert sum(whatsapp.calls.values()) == 1
    assert sms.calls == Counter(), "the person may now have it on WhatsApp and by SMS"
    assert delivery.state == "suppressed"
    assert "whatsapp turned off by the recipient" in (delivery.reason or "")


def _in_doubt_once() -> Callable[[OutboundMessage], None]:
    calls = Counter[int]()

    def behaviour(message: OutboundMessage) -> None:
        calls[message.delivery_id] += 1
        if calls[message.delivery_id] == 1:
            raise InDoubtSendError("timed out after sending")

    return behaviour


async def _eventually(check: Callable[[], Coroutine[Any, Any, bool]]) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _delivery_is(db: Database, message_id: uuid.UUID, state: str, why: str) -> bool:
    async with db.read() as session:
        rows = (
            await session.execute(select(Delivery).where(Delivery.message_id == message_id))
        ).scalars()
        return any(
            (d.state == state or (state == "settled" and d.state not in ACTIVE))
            and why in (d.reason or "")
            for d in rows
        )
