"""Events in: events accepted per second by ``POST /v1/events/batch`` and by ``bulletin consume``
from RabbitMQ, and end to end until the WhatsApp stand-in has every send.

An organization on a fresh PostgreSQL database has an event type ``shift.changed`` (WhatsApp,
templates over the recipient and the event's ``data``) and ``--events-count`` / 2 stored
people; the events name one person each, half of them by external id and half inline
(``external_id``, name and WhatsApp number, created with the event). Bulletin runs at its
default settings; the only ones set are those every benchmark sets (the stand-ins are local)
and, for the queue, which queue and organization ``bulletin consume`` serves.

- **HTTP**: ``bulletin serve --no-worker`` takes the events in batches of 1,000 from
  ``--events-clients`` concurrent clients (bodies made before the clock starts). Accepted per
  second: events / (last answer - first request). CPU seconds are the API process's.
- **RabbitMQ**: the events are published (persistent, confirmed) to a queue of their own, then
  ``bulletin consume`` is started; the clock runs from the moment its consumer is attached to
  the queue until every event is committed (rows of ``events``, polled). CPU seconds are the
  consume process's.
- **End to end**, each route again on a fresh database with ``--events-workers`` worker
  processes running and ``--events-e2e-count`` events (by default as many): from the first
  request (HTTP) or the consumer attached (RabbitMQ) until the WhatsApp Cloud API stand-in
  (0 ms latency) has accepted every send. Each event is a notification of its own, which the
  scheduler resolves like any other message.

Ceilings, measured in the same run: the same batch bodies POSTed at the same concurrency to a
trivial aiohttp handler in its own process (it reads the body and answers ``{}``); and raw
aio-pika: the same messages published persistent with confirms to a queue, then consumed with
the consumer's prefetch and acknowledged in batches, with no database.

After each phase the database must hold one event and one message per event published:
``missing`` counts those that are not there, ``refused`` those answered refused or
dead-lettered.

Run alone: ``python -m benchmarks.events`` (RabbitMQ must be running for the queue route:
``rabbitmq-server -detached``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg

from benchmarks.chaos import receiver
from benchmarks.chaos.fleet import Fleet
from benchmarks.common import (
    NUMBER_ID,
    TOKEN,
    Result,
    add_people,
    cpu_seconds,
    database,
    free_port,
    person,
    provider,
    wait_ready,
    worker_env,
)
from bulletin.channels.configs import WhatsAppCloudConfig, WhatsAppTemplateRef
from bulletin.crypto import SecretBox, generate_key
from bulletin.db import Database
from bulletin.events import schemas as event_schemas
from bulletin.events import service as events
from bulletin.orgs import service as orgs
from bulletin.providers import service as channels

TARGET_EVENTS_PER_S = 2_000
EVENT_TYPE = "shift.changed"
PER_CALL = 1_000
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: The consumer's default prefetch (``BULLETIN_CONSUME_PREFETCH``), used by the raw ceiling.
PREFETCH = 1_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("events in")
    group.add_argument("--events-count", type=int, default=20_000, help="Events accepted.")
    group.add_argument(
        "--events-e2e-count",
        type=int,
        help="Events of the end-to-end runs (default: --events-count).",
    )
    group.add_argument(
        "--events-clients", type=int, default=4, help="Concurrent HTTP clients (batch route)."
    )
    group.add_argument(
        "--events-workers", type=int, default=2, help="Worker processes in the end-to-end runs."
    )
    group.add_argument(
        "--events-routes", default="http,rabbitmq", help="Routes to measure: http, rabbitmq."
    )
    group.add_argument("--events-amqp-url", default=AMQP_URL, help="The RabbitMQ server.")


# --- the organization and the events ---------------------------------------------------------


async def _organization(url: str, stored: int, provider_url: str, key: str) -> tuple[str, str]:
    """An organization with WhatsApp at ``provider_url``, ``stored`` people (``p0`` ...) and
    the event type; returns its id and its admin key."""
    db = Database(url)
    try:
        async with db.transaction() as session:
            org, admin = await orgs.create_organization(session, "bench")
            config = WhatsAppCloudConfig(
                phone_number_id=NUMBER_ID,
                access_token=TOKEN,
                base_url=provider_url,
                rate_per_second=10_000,
                pair_interval_seconds=0,
                template=WhatsAppTemplateRef(
                    name="notice", language="en", parameters=["{{ body }}"]
                ),
            )
            await channels.put(session, SecretBox(key), org.id, "whatsapp", config)
            definition = event_schemas.EventTypeIn.model_validate(
                {
                    "title": "Shift change at {{ data.site }}",
                    "body": "{{ recipient.name }}, your shift on {{ data.day }} starts at "
                    "{{ data.start }} (gate {{ data.gate }}).",
                    "channels": ["whatsapp"],
                }
            )
            await events.put_type(session, org.id, EVENT_TYPE, definition)
        await add_people(db, org.id, [person(i) for i in range(stored)])
        return str(org.id), admin.secret
    finally:
        await db.dispose()


def event(prefix: str, i: int) -> dict[str, Any]:
    """Event ``i``: even ones name a stored person, odd ones bring their own (inline)."""
    recipient: str | dict[str, Any]
    if i % 2 == 0:
        recipient = f"p{i // 2}"
    else:
        recipient = {"external_id": f"q{i}", "name": f"Guest {i}", "whatsapp": f"+2784{i:07d}"}
    return {
        "id": f"{prefix}-{i}",
        "type": EVENT_TYPE,
        "recipient": recipient,
        "data": {"site": "North yard", "day": "Monday", "start": f"{6 + i % 4}:00", "gate": i % 7},
    }


def batch_bodies(prefix: str, count: int) -> list[bytes]:
    return [
        json.dumps(
            {"events": [event(prefix, i) for i in range(start, min(count, start + PER_CALL))]}
        ).encode()
        for start in range(0, count, PER_CALL)
    ]


async def _rows(url: str) -> tuple[int, int]:
    """Events and messages in the database."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        counted = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM events) AS events, "
            "(SELECT count(*) FROM messages) AS messages"
        )
        assert counted is not None
        return int(counted["events"]), int(counted["messages"])
    finally:
        await conn.close()


async def _until_sent(http: aiohttp.ClientSession, control: str, count: int) -> float:
    """Wait until the stand-in has accepted ``count`` sends; when (``time.time()``)."""
    deadline = time.monotonic() + 600
    while True:
        async with http.get(control + "/count") as answer:
            accepted = (await answer.json())["whatsapp"]
        if accepted >= count:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {accepted} of {count} sends arrived")
        await asyncio.sleep(0.02)


# --- HTTP -------------------------------------------------------------------------------------


async def _post_all(
    http: aiohttp.ClientSession, url: str, bodies: list[bytes], clients: int, key: str | None
) -> tuple[float, float, dict[str, int]]:
    """POST every body, ``clients`` at a time, with the API key ``key`` (``None``: to the
    sink, which answers ``{}``); (first sent, last answered, the answers' counts)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    pending = list(reversed(bodies))
    counts = {"accepted": 0, "duplicates": 0, "refused": 0, "errors": 0}

    async def client() -> None:
        while pending:
            body = pending.pop()
            async with http.post(url, data=body, headers=headers) as answer:
                data = await answer.read()
                if answer.status != 200:
                    counts["errors"] += 1
                    print(f"events: {answer.status} {data[:300]!r}", file=sys.stderr, flush=True)
                    continue
                if key is not None:
                    parsed = json.loads(data)
                    for name in ("accepted", "duplicates", "refused"):
                        counts[name] += parsed[name]

    started = time.time()
    await asyncio.gather(*(client() for _ in range(clients)))
    return started, time.time(), counts


def _size(end_to_end: bool, args: argparse.Namespace) -> tuple[int, int]:
    """Events and worker processes of a phase."""
    if end_to_end:
        return args.events_e2e_count or args.events_count, args.events_workers
    return args.events_count, 0


async def _http_phase(
    end_to_end: bool, args: argparse.Namespace, folder: Path, sink: str
) -> dict[str, float]:
    count, workers = _size(end_to_end, args)
    bodies = batch_bodies("http", count)
    key = generate_key()
    async with (
        database("postgresql", folder) as url,
        provider(0) as fake,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http,
    ):
        _, api_key = await _organization(url, count // 2 + 1, fake["whatsapp"], key)
        fleet = Fleet(worker_env(url, key), folder, [free_port()], workers)
        fleet.start_all()
        try:
            await wait_ready(http, fleet.api_urls[0])
            if workers:
                await asyncio.sleep(2 + workers)  # the workers up and idle
            api = fleet.members[0].process
            assert api is not None
            cpu_before = cpu_seconds(api.pid)
            started, answered, counts = await _post_all(
                http, fleet.api_urls[0] + "/v1/events/batch", bodies, args.events_clients, api_key
            )
            cpu = cpu_seconds(api.pid) - cpu_before
            done = await _until_sent(http, fake["control"], count) if end_to_end else answered
        finally:
            fleet.stop_all()
        stored, messages = await _rows(url)
    if end_to_end:
        return {
            "e2e_per_s": count / (done - started),
            "e2e_missing": count - min(stored, messages),
        }
    # The ceiling: the same bodies, the same concurrency, a trivial handler.
    async with aiohttp.ClientSession() as http:
        sink_started, sink_done, _ = await _post_all(http, sink, bodies, args.events_clients, None)
    figures = {
        "accepted_per_s": counts["accepted"] / (answered - started),
        "cpu_s_per_1000": cpu / count * 1000,
        "ceiling_per_s": count / (sink_done - sink_started),
        "missing": count - min(stored, messages, counts["accepted"]),
        "refused": counts["refused"] + counts["errors"],
    }
    figures["x_ceiling"] = figures["accepted_per_s"] / figures["ceiling_per_s"]
    return figures


async def http_run(args: argparse.Namespace, folder: Path, sink: str) -> dict[str, float]:
    accepted = await _http_phase(False, args, folder, sink)
    return {**accepted, **await _http_phase(True, args, folder, sink)}


# --- RabbitMQ ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _queue(amqp_url: str) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, str]]:
    """A connection, a confirming channel, and a queue name of its own (with ``.dead``), both
    deleted afterwards."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    name = f"bulletin.bench.{uuid.uuid4().hex[:10]}"
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True)
        yield channel, name
    finally:
        with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError):
            cleanup = await connection.channel()
            for queue in (name, name + ".dead"):
                await cleanup.queue_delete(queue)
        await connection.close()


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, bodies: list[bytes]) -> float:
    """Publish every body persistent, each confirmed by the broker; returns messages/s."""
    started = time.perf_counter()
    for start in range(0, len(bodies), PER_CALL):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue,
                )
                for body in bodies[start : start + PER_CALL]
            )
        )
    return len(bodies) / (time.perf_counter() - started)


async def _consumer_attached(channel: aio_pika.abc.AbstractChannel, queue: str) -> float:
    """Wait until the queue has a consumer; when (``time.time()``)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        if result.consumer_count:
            return time.time()
        await asyncio.sleep(0.005)
    raise RuntimeError("bulletin consume never attached to its queue")


async def _dead(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Messages in the queue's dead-letter queue."""
    declared = await channel.declare_queue(queue + ".dead", passive=True)
    return int(declared.declaration_result.message_count or 0)


async def _until_committed(
    url: str, count: int, channel: aio_pika.abc.AbstractChannel, queue: str
) -> float:
    """Wait until ``count`` events are committed or dead-lettered; when (``time.time()``)."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        deadline = time.monotonic() + 600
        while True:
            stored = int(await conn.fetchval("SELECT count(*) FROM events"))
            if stored >= count or stored + await _dead(channel, queue) >= count:
                return time.time()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stored} of {count} events were committed")
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def _ceiling(amqp_url: str, bodies: list[bytes]) -> tuple[float, float]:
    """Raw aio-pika, no database: publish rate, and consume+acknowledge rate."""
    async with _queue(amqp_url) as (channel, name):
        published = await _publish(channel, name, bodies)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(name, durable=True)
        received = 0
        started = time.perf_counter()
        async with queue.iterator() as messages:
            async for message in messages:
                received += 1
                # Acknowledged in batches (multiple), as the consumer does, half a prefetch
                # at a time so that the broker never waits.
                if received % (PREFETCH // 2) == 0 or received == len(bodies):
                    await message.ack(multiple=True)
                if received == len(bodies):
                    break
        return published, received / (time.perf_counter() - started)


def _start_consume(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``bulletin consume`` in its own process, its output appended to ``log``."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "bulletin", "consume"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def _rabbit_phase(
    end_to_end: bool, args: argparse.Namespace, folder: Path
) -> dict[str, float]:
    count, workers = _size(end_to_end, args)
    bodies = [json.dumps(event("amqp", i)).encode() for i in range(count)]
    key = generate_key()
    async with (
        database("postgresql", folder) as url,
        provider(0) as fake,
        aiohttp.ClientSession() as http,
        _queue(args.events_amqp_url) as (channel, queue),
    ):
        org, _ = await _organization(url, count // 2 + 1, fake["whatsapp"], key)
        published = await _publish(channel, queue, bodies)
        env = worker_env(
            url,
            key,
            BULLETIN_AMQP_URL=args.events_amqp_url,
            BULLETIN_CONSUME_QUEUE=queue,
            BULLETIN_CONSUME_ORG=org,
        )
        fleet = Fleet(env, folder, [], workers)
        fleet.start_all()
        consume: subprocess.Popen[bytes] | None = None
        try:
            if workers:
                await asyncio.sleep(2 + workers)  # the workers up and idle
            consume = _start_consume(fleet.env, folder / "consume.log")
            attached = await _consumer_attached(channel, queue)
            cpu_before = cpu_seconds(consume.pid)
            committed = await _until_committed(url, count, channel, queue)
            cpu = cpu_seconds(consume.pid) - cpu_before
            done = await _until_sent(http, fake["control"], count) if end_to_end else committed
            dead = await _dead(channel, queue)
        finally:
            if consume is not None:
                consume.terminate()
                try:
                    consume.wait(15)
                except subprocess.TimeoutExpired:
                    consume.kill()
                    consume.wait()
            fleet.stop_all()
        stored, messages = await _rows(url)
    if end_to_end:
        return {
            "e2e_per_s": count / (done - attached),
            "e2e_missing": count - min(stored, messages),
        }
    ceiling_publish, ceiling = await _ceiling(args.events_amqp_url, bodies)
    figures = {
        "committed_per_s": count / (committed - attached),
        "cpu_s_per_1000": cpu / count * 1000,
        "publish_per_s": published,
        "ceiling_per_s": ceiling,
        "ceiling_publish_per_s": ceiling_publish,
        "missing": count - min(stored, messages),
        "refused": dead,
    }
    figures["x_ceiling"] = figures["committed_per_s"] / figures["ceiling_per_s"]
    return figures


async def rabbit_run(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    committed = await _rabbit_phase(False, args, folder)
    return {**committed, **await _rabbit_phase(True, args, folder)}


# --- the scenario -----------------------------------------------------------------------------


def _target(rate: str) -> tuple[str, Any, str]:
    return (
        rate,
        lambda m: m[rate] >= TARGET_EVENTS_PER_S and m["missing"] == 0 and m["e2e_missing"] == 0,
        f">= {TARGET_EVENTS_PER_S:,} events/s by either route (this one the faster); none missing",
    )


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    if args.quick:
        args = argparse.Namespace(**{**vars(args), "events_count": 1_000, "events_e2e_count": 300})
    count = args.events_count
    e2e_count = args.events_e2e_count or count
    routes = [r.strip() for r in args.events_routes.split(",") if r.strip()]
    print(
        "events: Bulletin at its default settings; set: BULLETIN_CONSUME_QUEUE (a queue of "
        "the run's own) and BULLETIN_CONSUME_ORG for `bulletin consume`, and what every "
        "benchmark sets (BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES, BULLETIN_LOG_LEVEL)",
        flush=True,
    )
    results: list[Result] = []
    people = f"{count:,} events (end to end {e2e_count:,}), half with inline recipients"
    if "http" in routes:
        async with receiver.running() as sink:
            runs = [await http_run(args, folder, sink["sink"]) for _ in range(args.runs)]
        results.append(
            Result(
                scenario="events",
                setting=f"postgresql, POST /v1/events/batch, {PER_CALL:,} per call, "
                f"{args.events_clients} clients, {people}; e2e with "
                f"{args.events_workers} worker(s)",
                runs=runs,
                shown=[
                    ("accepted_per_s", "{:,.0f} events/s accepted"),
                    ("e2e_per_s", "end to end {:,.0f}/s"),
                    ("cpu_s_per_1000", "API {:.2f} CPU s/1000"),
                    ("ceiling_per_s", "ceiling (raw HTTP) {:,.0f}/s"),
                    ("x_ceiling", "x ceiling {:.3f}"),
                    ("missing", "{:.0f} missing"),
                    ("refused", "{:.0f} refused"),
                ],
            )
        )
        print(results[-1].line(), flush=True)
    if "rabbitmq" in routes:
        runs = [await rabbit_run(args, folder) for _ in range(args.runs)]
        results.append(
            Result(
                scenario="events",
                setting=f"postgresql, bulletin consume from RabbitMQ, {people}; e2e with "
                f"{args.events_workers} worker(s)",
                runs=runs,
                shown=[
                    ("committed_per_s", "{:,.0f} events/s committed"),
                    ("e2e_per_s", "end to end {:,.0f}/s"),
                    ("cpu_s_per_1000", "consume {:.2f} CPU s/1000"),
                    ("publish_per_s", "published {:,.0f}/s"),
                    ("ceiling_per_s", "ceiling (raw aio-pika consume+ack) {:,.0f}/s"),
                    ("x_ceiling", "x ceiling {:.3f}"),
                    ("missing", "{:.0f} missing"),
                    ("refused", "{:.0f} dead-lettered"),
                ],
            )
        )
        print(results[-1].line(), flush=True)
    rates = {"http": "accepted_per_s", "rabbitmq": "committed_per_s"}
    if results:
        best = max(results, key=lambda r: max(r.medians.get(f, 0.0) for f in rates.values()))
        rate = next(f for f in rates.values() if f in best.runs[0])
        best.target = _target(rate)
    return results


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
