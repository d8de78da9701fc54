"""Scheduling lateness: how long after its ``send_at`` a scheduled notification reaches the
provider.

``--lateness-notifications`` notifications (2,000 by default), each to one person on WhatsApp,
are created through the service layer, one per transaction as ``POST /v1/notifications``
makes them, with their ``send_at`` spread evenly over ``--lateness-seconds`` (60) starting a
few seconds after ``--lateness-workers`` (2) ``bulletin worker`` processes on PostgreSQL are
up and idle. The WhatsApp Cloud API stand-in answers at once (0 ms). Afterwards each accepted
send (wall clock, from the stand-in's ``/times``) is matched by its delivery id to its
message's ``send_at``; the figures are the 50th and 99th percentile and the maximum of
(accepted - ``send_at``), how many were sent early (there must be none) and how many never
arrived (there must be none); and the CPU seconds the worker processes used per 1,000
notifications while sending (from ``/proc``), which says more than the lateness alone on a
machine shared with other work.

Run alone: ``python -m benchmarks.lateness``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
from sqlalchemy import select

from benchmarks.chaos.fleet import Fleet
from benchmarks.common import (
    PG_ADMIN,
    Result,
    cpu_seconds,
    database,
    percentile,
    provider,
    whatsapp_organization,
    worker_env,
)
from bulletin.crypto import generate_key
from bulletin.db import Database, utcnow
from bulletin.deliveries.models import Delivery
from bulletin.messages import schemas, service
from bulletin.messages.models import Message

TARGET_P99_MS = 250.0
#: Seconds between the workers being up and idle and the first ``send_at``.
LEAD_SECONDS = 3.0
#: Notifications the benchmark process is assumed to create per second at the least; the first
#: ``send_at`` is put far enough ahead that every notification exists before it falls due.
CREATE_PER_SECOND = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scheduling lateness")
    group.add_argument("--lateness-notifications", type=int, default=2_000)
    group.add_argument(
        "--lateness-seconds", type=float, default=60.0, help="Span of the send_at times."
    )
    group.add_argument("--lateness-workers", type=int, default=2, help="Worker processes.")


async def workers_listening(url: str, workers: int, timeout: float = 60.0) -> None:
    """Wait until ``workers`` processes LISTEN on the database: each is up, and wakes on NOTIFY."""
    name = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        while time.monotonic() < deadline:
            listening = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
                name,
            )
            if listening >= workers:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise RuntimeError(f"fewer than {workers} worker processes started within {timeout:g} s")


async def _create(
    url: str, org: uuid.UUID, count: int, first: dt.datetime, span: float
) -> dt.timedelta:
    """Create the notifications in ``send_at`` order; returns the least lead any had (the time
    from its commit to its ``send_at``)."""
    db = Database(url)
    least = dt.timedelta.max
    try:
        step = dt.timedelta(seconds=span / count)
        for i in range(count):
            send_at = first + step * i
            body = schemas.NotificationIn.model_validate(
                {
                    "title": "Reminder",
                    "body": f"Notification {i}",
                    "recipient": f"p{i}",
                    "channels": ["whatsapp"],
                    "send_at": send_at.isoformat(),
                }
            )
            async with db.transaction() as session:
                await service.create_notification(session, org, body)
            least = min(least, send_at - utcnow())
        return least
    finally:
        await db.dispose()


async def _send_at_by_delivery(url: str) -> dict[int, dt.datetime]:
    db = Database(url)
    try:
        async with db.read() as session:
            query = select(Delivery.id, Message.send_at).join(
                Message, Message.id == Delivery.message_id
            )
            rows = await session.execute(query)
            return {int(delivery): send_at for delivery, send_at in rows}
    finally:
        await db.dispose()


async def one_run(count: int, span: float, workers: int, folder: Path) -> dict[str, float]:
    key = generate_key()
    async with (
        database("postgresql", folder) as url,
        provider(0.0) as fake,
        aiohttp.ClientSession() as http,
    ):
        org = await whatsapp_organization(url, count, fake["whatsapp"], key)
        fleet = Fleet(worker_env(url, key), folder, [], workers)
        fleet.start_all()
        try:
            await workers_listening(url, workers)
            await asyncio.sleep(1.0)  # idle: nothing to do, every loop asleep
            first = utcnow() + dt.timedelta(seconds=LEAD_SECONDS + count / CREATE_PER_SECOND)
            least_lead = await _create(url, org, count, first, span)
            if least_lead <= dt.timedelta(0):
                raise RuntimeError("a notification was created after its send_at")
            await asyncio.sleep(max(0.0, (first - utcnow()).total_seconds() - 2.0))
            pids = [m.process.pid for m in fleet.members if m.process is not None]
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            deadline = first.timestamp() + span + 60
            while True:
                async with http.get(fake["control"] + "/count") as answer:
                    accepted = (await answer.json())["whatsapp"]
                if accepted >= count or time.time() > deadline:
                    break
                await asyncio.sleep(0.2)
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            async with http.get(fake["control"] + "/times") as answer:
                times: list[tuple[float, str]] = await answer.json()
        finally:
            fleet.stop_all()
        send_at = await _send_at_by_delivery(url)
    lateness: list[float] = []
    seen: set[int] = set()
    for at, delivery in times:
        seen.add(int(delivery))
        lateness.append((float(at) - send_at[int(delivery)].timestamp()) * 1000)
    return {
        "p50_ms": percentile(lateness, 50) if lateness else float("nan"),
        "p99_ms": percentile(lateness, 99) if lateness else float("nan"),
        "max_ms": max(lateness, default=float("nan")),
        "early": sum(1 for ms in lateness if ms < 0),
        "missing": len(set(send_at) - seen),
        "sent_twice": len(times) - len(seen),
        "least_lead_s": least_lead.total_seconds(),
        "cpu_s_per_1000": cpu / count * 1000,
    }


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    count = 100 if args.quick else args.lateness_notifications
    span = 5.0 if args.quick else args.lateness_seconds
    workers = args.lateness_workers
    runs = [await one_run(count, span, workers, folder) for _ in range(args.runs)]
    result = Result(
        scenario="lateness",
        setting=f"postgresql, {workers} worker(s), {count:,} notifications over {span:g} s",
        runs=runs,
        target=(
            "p99_ms",
            # None early and none missing in any run, not only in the median one.
            lambda m: (
                m["p99_ms"] <= TARGET_P99_MS
                and all(r["early"] == 0 and r["missing"] == 0 for r in runs)
            ),
            f"p99 <= {TARGET_P99_MS:g} ms; none early, none missing",
        ),
        shown=[
            ("p50_ms", "p50 {:.0f} ms"),
            ("p99_ms", "p99 {:.0f} ms"),
            ("max_ms", "max {:.0f} ms"),
            ("early", "{:.0f} early"),
            ("missing", "{:.0f} missing"),
            ("cpu_s_per_1000", "{:.1f} worker CPU s/1000"),
        ],
    )
    print(result.line(), flush=True)
    return [result]


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
