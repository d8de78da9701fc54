"""Webhooks out: status webhooks delivered per second to a local receiver, and what sending them
costs the deliveries.

One announcement to ``--webhooks-people`` people on WhatsApp, sent by
``--webhooks-workers`` ``bulletin worker`` processes to the WhatsApp Cloud API stand-in (0 ms,
no receipts), as in the end-to-end scenario, twice in each run on fresh databases: once with
no webhook endpoint ("off"), once with one endpoint subscribed to every kind ("on"); the order
alternates from run to run. The endpoint is the receiver of ``benchmarks.chaos.receiver`` in
its own process: it verifies every request with the ``standardwebhooks`` reference package and
deduplicates by ``webhook-id``. Bulletin runs at its default settings (the sender's
concurrency, timeout and retries included); only what every benchmark sets is set.

Figures:

- ``deliveries/s`` off and on: people / (provider has every send - ``send_at``), and their
  ratio (target: webhooks on lower it by less than 20 %); CPU seconds of the worker processes
  per 1,000 deliveries, off and on;
- ``webhooks/s``: ``delivery.*`` webhooks received (unique ids) / (last one received -
  ``send_at``); ``lag``: seconds from the provider's last send to the last ``delivery.*``
  webhook;
- ``missing``: webhook events Bulletin recorded (``delivery_events`` whose state has a kind,
  and ``message.completed``) that the receiver never answered 200; ``invalid``: requests that
  failed verification; ``duplicates``: ids received again.

- ``backlog``: webhooks/s of the sender alone: as many ``delivery.sent`` rows as people,
  written straight into the outbox of one endpoint before the workers start (on a third
  fresh database), from the first received to the last. This is the figure held to the
  target of 2,000 webhooks/s: with the deliveries, webhooks cannot go faster than the
  deliveries they report.

Ceiling, in the same run: the receiver's own rate, with the same number of signed requests
(bodies like Bulletin's) POSTed by aiohttp at the concurrency the workers use (processes x
``BULLETIN_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT``).

Run alone: ``python -m benchmarks.webhooks``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.chaos import receiver
from benchmarks.chaos.fleet import Fleet
from benchmarks.common import (
    Result,
    announce_to_staff,
    cpu_seconds,
    database,
    provider,
    whatsapp_organization,
    worker_env,
)
from bulletin.config import Settings
from bulletin.crypto import SecretBox, generate_key
from bulletin.db import Database, utcnow
from bulletin.subscriptions import kinds, schemas, service, signing

TARGET_WEBHOOKS_PER_S = 2_000
#: Deliveries/s with webhooks on, at least this share of the figure with them off.
TARGET_RATIO = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("webhooks out")
    group.add_argument("--webhooks-people", type=int, default=20_000, help="Audience of each run.")
    group.add_argument("--webhooks-workers", type=int, default=2, help="Worker processes.")


def _concurrency(workers: int) -> int:
    """Webhook requests the workers have in flight to one endpoint at most, by default."""
    per_endpoint = Settings.model_fields["webhook_max_in_flight_per_endpoint"].default
    return int(workers * per_endpoint)


async def _endpoint(url: str, org: uuid.UUID, key: str, hook: str) -> str:
    """An endpoint of ``org`` at ``hook`` subscribed to every kind; returns its secret."""
    db = Database(url)
    try:
        body = schemas.EndpointIn.model_validate({"url": hook, "kinds": list(kinds.KINDS)})
        async with db.transaction() as session:
            created = await service.create_endpoint(
                session, SecretBox(key), org, body, allow_private=True
            )
        assert created.secret is not None
        return created.secret
    finally:
        await db.dispose()


async def _outbox(url: str) -> tuple[int, int, int]:
    """Webhook events Bulletin should have sent (from the deliveries' history and the
    completed messages), outbox rows, and outbox rows still pending."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM delivery_events WHERE state = ANY($1::text[]))"
            " + (SELECT count(*) FROM messages WHERE state = 'completed') AS expected,"
            " (SELECT count(*) FROM webhook_messages) AS rows,"
            " (SELECT count(*) FROM webhook_messages WHERE state = 'pending') AS pending",
            list(kinds.DELIVERY_KINDS),
        )
        assert row is not None
        return int(row["expected"]), int(row["rows"]), int(row["pending"])
    finally:
        await conn.close()


async def _count(http: aiohttp.ClientSession, control: str) -> dict[str, Any]:
    async with http.get(control + "/control/count") as answer:
        figures: dict[str, Any] = await answer.json()
        return figures


async def one_run(
    on: bool, people: int, workers: int, folder: Path, hooks: dict[str, str]
) -> dict[str, float]:
    key = generate_key()
    async with (
        database("postgresql", folder) as url,
        provider(0) as fake,
        aiohttp.ClientSession() as http,
    ):
        org = await whatsapp_organization(url, people, fake["whatsapp"], key)
        async with http.post(hooks["control"] + "/control/reset"):
            pass
        if on:
            secret = await _endpoint(url, org, key, hooks["hook"])
            async with http.post(hooks["control"] + "/control/secret", json={"secret": secret}):
                pass
        fleet = Fleet(worker_env(url, key), folder, [], workers)
        fleet.start_all()
        try:
            send_at = utcnow() + dt.timedelta(seconds=3 + workers)
            await announce_to_staff(url, org, "Bench", send_at)
            await asyncio.sleep(max(0.0, (send_at - utcnow()).total_seconds() - 0.5))
            pids = [m.process.pid for m in fleet.members if m.process is not None]
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            deadline = time.monotonic() + 600
            while True:
                async with http.get(fake["control"] + "/count") as answer:
                    accepted = (await answer.json())["whatsapp"]
                if accepted >= people:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {accepted} of {people} sends arrived")
                await asyncio.sleep(0.02)
            sent = time.time()
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            figures: dict[str, float] = {
                "deliveries_per_s": people / (sent - send_at.timestamp()),
                "cpu_s_per_1000": cpu / people * 1000,
            }
            if on:
                # Until the outbox is empty and its every row is answered (message.completed
                # comes with the scheduler's next look, within the idle poll interval).
                while True:
                    expected, rows, pending = await _outbox(url)
                    got = await _count(http, hooks["control"])
                    if rows and not pending and got["unique"] >= rows:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{pending} webhooks still pending, {got}")
                    await asyncio.sleep(0.05)
                told = sum(n for k, n in got["types"].items() if k.startswith("delivery."))
                last = max(
                    at for k, at in got["last_at_by_type"].items() if k.startswith("delivery.")
                )
                figures |= {
                    "webhooks_per_s": told / (last - send_at.timestamp()),
                    "lag_s": last - sent,
                    "webhooks": got["unique"],
                    "missing": max(0, expected - got["unique"]),
                    "invalid": got["invalid"],
                    "duplicates": got["duplicates"],
                }
        finally:
            fleet.stop_all()
    return figures


_BACKLOG = """
    INSERT INTO webhook_messages (
        endpoint_id, org_id, kind, occurred_at, delivery_id, message_id, message_kind,
        recipient, channel, attempt, state, attempts, next_attempt_at, created_at)
    SELECT $1, $2, 'delivery.sent', now(), g, $3, 'announcement', 'p' || g, 'whatsapp', 1,
        'pending', 0, now(), now()
    FROM generate_series(1, $4) AS g
"""


async def drain_run(people: int, workers: int, folder: Path, hooks: dict[str, str]) -> float:
    """Webhooks/s of the sender alone: ``people`` ``delivery.sent`` rows already in the outbox
    of one endpoint when the workers start, from the first received to the last."""
    key = generate_key()
    async with database("postgresql", folder) as url, aiohttp.ClientSession() as http:
        org = await whatsapp_organization(url, 0, "http://127.0.0.1:9", key)
        secret = await _endpoint(url, org, key, hooks["hook"])
        async with http.post(hooks["control"] + "/control/reset"):
            pass
        async with http.post(hooks["control"] + "/control/secret", json={"secret": secret}):
            pass
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            endpoint = await conn.fetchval("SELECT id FROM webhook_endpoints")
            await conn.execute(_BACKLOG, endpoint, org, uuid.uuid4(), people)
        finally:
            await conn.close()
        fleet = Fleet(worker_env(url, key), folder, [], workers)
        fleet.start_all()
        try:
            deadline = time.monotonic() + 600
            while (got := await _count(http, hooks["control"]))["unique"] < people:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the backlog was not sent: {got}")
                await asyncio.sleep(0.05)
        finally:
            fleet.stop_all()
    if got["invalid"]:
        raise RuntimeError(f"invalid webhooks: {got}")
    return float((people - 1) / (got["last_at"] - got["first_at"]))


async def ceiling(people: int, concurrency: int, hooks: dict[str, str]) -> float:
    """Signed requests/s the receiver takes from plain aiohttp clients at ``concurrency``."""
    secret = signing.new_secret()
    now = int(time.time())
    requests = []
    for i in range(people):
        body = json.dumps(
            {
                "type": "delivery.sent",
                "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                "data": {
                    "delivery_id": i + 1,
                    "message_id": str(uuid.uuid4()),
                    "message_kind": "announcement",
                    "recipient": f"p{i}",
                    "channel": "whatsapp",
                    "state": "sent",
                    "detail": None,
                    "attempt": 1,
                },
            },
            separators=(",", ":"),
        ).encode()
        requests.append((body, signing.headers([secret], f"ceiling_{i}", now, body)))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(hooks["control"] + "/control/reset"):
            pass
        async with http.post(hooks["control"] + "/control/secret", json={"secret": secret}):
            pass
        pending = list(reversed(requests))

        async def client() -> None:
            while pending:
                body, headers = pending.pop()
                async with http.post(hooks["hook"], data=body, headers=headers) as answer:
                    await answer.read()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        got = await _count(http, hooks["control"])
    if got["unique"] != people or got["invalid"]:
        raise RuntimeError(f"the ceiling's requests were not all taken: {got}")
    return people / elapsed


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    people = 2_000 if args.quick else args.webhooks_people
    workers = args.webhooks_workers
    concurrency = _concurrency(workers)
    print(
        "webhooks: Bulletin at its default settings; set: only what every benchmark sets "
        "(BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES, BULLETIN_LOG_LEVEL)",
        flush=True,
    )
    runs = []
    async with receiver.running() as hooks:
        for run in range(args.runs):
            figures: dict[str, float] = {}
            for on in (run % 2 == 0, run % 2 == 1):
                got = await one_run(on, people, workers, folder, hooks)
                # The figures of both runs, those they share named for the run.
                prefix = "on_" if on else "off_"
                shared = ("deliveries_per_s", "cpu_s_per_1000")
                figures |= {(prefix + k if k in shared else k): v for k, v in got.items()}
            with_them = figures["on_deliveries_per_s"]
            figures["on_off_ratio"] = with_them / figures["off_deliveries_per_s"]
            figures["backlog_per_s"] = await drain_run(people, workers, folder, hooks)
            figures["ceiling_per_s"] = await ceiling(people, concurrency, hooks)
            figures["x_ceiling"] = figures["backlog_per_s"] / figures["ceiling_per_s"]
            runs.append(figures)
    result = Result(
        scenario="webhooks",
        setting=f"postgresql, {workers} worker(s), 0 ms, {people:,} people; one endpoint with "
        f"every kind, every signature verified; ceiling at {concurrency} in flight",
        runs=runs,
        target=(
            "backlog_per_s",
            lambda m: (
                m["backlog_per_s"] >= TARGET_WEBHOOKS_PER_S
                and m["on_off_ratio"] >= TARGET_RATIO
                and m["missing"] == 0
                and m["invalid"] == 0
            ),
            f">= {TARGET_WEBHOOKS_PER_S:,} webhooks/s (backlog); on/off >= {TARGET_RATIO:g}; "
            "none missing or invalid",
        ),
        shown=[
            ("backlog_per_s", "backlog {:,.0f} webhooks/s"),
            ("webhooks_per_s", "with the deliveries {:,.0f}/s"),
            ("off_deliveries_per_s", "deliveries off {:,.0f}/s"),
            ("on_deliveries_per_s", "on {:,.0f}/s"),
            ("on_off_ratio", "on/off {:.2f}"),
            ("off_cpu_s_per_1000", "CPU s/1000 off {:.2f}"),
            ("on_cpu_s_per_1000", "on {:.2f}"),
            ("lag_s", "lag {:.1f} s"),
            ("ceiling_per_s", "ceiling (raw aiohttp) {:,.0f}/s"),
            ("x_ceiling", "x ceiling {:.2f}"),
            ("missing", "{:.0f} missing"),
            ("invalid", "{:.0f} invalid"),
            ("duplicates", "{:.0f} duplicates"),
        ],
    )
    print(result.line(), flush=True)
    return [result]


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
