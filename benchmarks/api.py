"""The API: requests/s and latency of ``POST /v1/notifications`` at a fixed concurrency.

``bulletin serve --no-worker --processes N`` (N from ``--api-processes``) on a fresh PostgreSQL
database (no delivery engine in the processes, so the figures are the API's) takes
notifications to people of one organization, each with a new ``Idempotency-Key``, from
``--api-concurrency`` clients of a load generator in its own process (``python -m
benchmarks.loadgen``), or at ``--api-rate`` requests a second. After a warm-up (not
measured), requests are timed for ``--api-seconds``; meanwhile an already answered key is now
and then sent again, and must be replayed. After the run, the number of messages in the
database must equal the number of 2xx answers that were not replays: nothing lost, nothing
made twice. CPU seconds are those of the API processes, read from ``/proc``.

With a fixed concurrency the two figures of the target are tied (Little's law): ``c``
requests always in flight at ``r`` requests/s take ``c / r`` seconds each on average. The
default of 16 at 500 requests/s is 32 ms on average, which leaves room for a p99 of 50 ms; 32
in flight would need well over 640 requests/s for it. ``--api-rate 500`` measures the latency
at the target's throughput instead.

Run alone: ``python -m benchmarks.api``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from sqlalchemy import func, select

from benchmarks.chaos.fleet import Fleet
from benchmarks.common import (
    ROOT,
    Result,
    add_people,
    cpu_seconds,
    database,
    free_port,
    person,
    profiled,
    wait_ready,
    worker_env,
)
from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.messages.models import Message
from bulletin.orgs import service as orgs

TARGET_REQUESTS_PER_S = 500
TARGET_P99_MS = 50.0
#: How often (seconds) a replay of an answered key is sent during the measured part.
REPLAY_EVERY = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("API")
    group.add_argument(
        "--api-concurrency", type=int, default=16, help="Requests in flight at any moment."
    )
    group.add_argument(
        "--api-rate",
        type=float,
        help="Instead, send this many requests a second (an open loop; at most "
        "--api-concurrency in flight) and measure latency at that load.",
    )
    group.add_argument("--api-seconds", type=float, default=20.0, help="Measured time per run.")
    group.add_argument("--api-warmup", type=float, default=2.0, help="Unmeasured time first.")
    group.add_argument(
        "--api-processes",
        default="1,2",
        help="Comma-separated numbers of API processes (serve --processes) to measure.",
    )
    group.add_argument("--api-people", type=int, default=1_000, help="Recipients to notify.")


def descendants(pid: int) -> list[int]:
    """The live processes started by ``pid``, and theirs."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += [int(child), *descendants(int(child))]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its live descendants."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(tree_cpu_seconds(int(child)) for child in children)
    return total


async def _organization(url: str, people: int) -> str:
    """An organization with ``people`` people (``p0`` ...); returns its admin key."""
    db = Database(url)
    try:
        async with db.transaction() as session:
            org, key = await orgs.create_organization(session, "bench")
        await add_people(db, org.id, [person(i) for i in range(people)])
        return key.secret
    finally:
        await db.dispose()


async def _backends_cpu_seconds(url: str, done: asyncio.Event) -> float:
    """CPU seconds the PostgreSQL backends serving the database at ``url`` use until ``done``.

    Backends come and go with the API's pooled connections, so they are looked at every
    half second and each one's last reading counts."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    at_start: dict[int, float] | None = None
    last: dict[int, float] = {}
    try:
        while True:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            readings: dict[int, float] = {}
            for row in rows:
                with contextlib.suppress(OSError):  # a backend that has just ended
                    readings[row["pid"]] = cpu_seconds(row["pid"])
            if at_start is None:
                at_start = readings
            last.update(readings)
            if done.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)
    finally:
        await conn.close()
    # Backends started during the run count from zero.
    return sum(cpu - (at_start or {}).get(pid, 0.0) for pid, cpu in last.items())


async def _load(urls: list[str], key: str, people: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run the load generator in its own process; its figures."""
    options = [f"--url={u}" for u in urls]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.loadgen", *options,
        "--key", key, "--recipients", str(people),
        "--concurrency", str(args.api_concurrency),
        "--warmup", str(args.api_warmup), "--seconds", str(args.api_seconds),
        "--replay-every", str(REPLAY_EVERY),
        *(["--rate", str(args.api_rate)] if args.api_rate else []),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the load generator exited with {process.returncode}")
    figures: dict[str, Any] = json.loads(out)
    return figures


async def one_run(
    processes: int, args: argparse.Namespace, folder: Path, label: str
) -> dict[str, float]:
    people = args.api_people
    async with database("postgresql", folder) as url:
        api_key = await _organization(url, people)
        env = worker_env(url, generate_key(), BULLETIN_API_PROCESSES=str(processes))
        fleet = Fleet(env, folder, [free_port()], workers=0)
        fleet.start_all()
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, fleet.api_urls[0])
            pids = [m.process.pid for m in fleet.members if m.process is not None]
            cpu_before = sum(tree_cpu_seconds(pid) for pid in pids)
            done = asyncio.Event()
            postgres = asyncio.create_task(_backends_cpu_seconds(url, done))
            # The API processes themselves, not a supervisor above them.
            served = [p for pid in pids for p in descendants(pid)] if processes > 1 else pids
            try:
                with profiled(served, args.profile, label):
                    figures = await _load(fleet.api_urls, api_key, people, args)
            finally:
                done.set()
            cpu = sum(tree_cpu_seconds(pid) for pid in pids) - cpu_before
            postgres_cpu = await postgres
        finally:
            fleet.stop_all()
        db = Database(url)
        try:
            async with db.read() as session:
                messages = (
                    await session.execute(select(func.count()).select_from(Message))
                ).scalar_one()
        finally:
            await db.dispose()
    if figures["errors"]:
        print(f"api: errors {figures['error_kinds']}", file=sys.stderr, flush=True)
    created = figures["created"]
    requests = created + figures["replays"] + figures["errors"]
    return {
        "requests_per_s": figures["requests_per_s"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "errors": figures["errors"],
        "cpu_s_per_1000": cpu / max(1, requests) * 1000,
        # The rest of the machine's work per request: the load generator's, and that of the
        # PostgreSQL backends serving the API's connections (for the whole run).
        "client_cpu_s_per_1000": figures["cpu_s"] / max(1, requests) * 1000,
        "postgres_cpu_s_per_1000": postgres_cpu / max(1, requests) * 1000,
        # Messages in the database that no 2xx answered (or 2xx answers with no message).
        "unaccounted": abs(messages - created),
        "replays": figures["replays"],
        "replays_missed": figures["replays"] - figures["replays_ok"],
    }


def _target_met(m: dict[str, float]) -> bool:
    return (
        m["requests_per_s"] >= TARGET_REQUESTS_PER_S
        and m["p99_ms"] <= TARGET_P99_MS
        and m["errors"] == 0
        and m["unaccounted"] == 0
        and m["replays_missed"] == 0
    )


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    if args.quick:
        args = argparse.Namespace(**{**vars(args), "api_seconds": 2.0, "api_warmup": 1.0})
    load = f"{args.api_concurrency} concurrent POST /v1/notifications"
    if args.api_rate:
        load = f"POST /v1/notifications at {args.api_rate:g}/s (<= {args.api_concurrency} open)"
    results = []
    for processes in (int(n) for n in args.api_processes.split(",")):
        runs = [
            await one_run(processes, args, folder, f"api-{processes}p-run{run}")
            for run in range(args.runs)
        ]
        results.append(
            Result(
                scenario="api",
                setting=f"postgresql, {processes} API process(es), {load}",
                runs=runs,
                target=(
                    "requests_per_s",
                    _target_met,
                    f">= {TARGET_REQUESTS_PER_S} req/s, p99 <= {TARGET_P99_MS:g} ms, "
                    "no errors, nothing lost or duplicated, replays answered",
                ),
                shown=[
                    ("requests_per_s", "{:,.0f} req/s"),
                    ("p50_ms", "p50 {:.1f} ms"),
                    ("p99_ms", "p99 {:.1f} ms"),
                    ("errors", "{:.0f} errors"),
                    ("cpu_s_per_1000", "{:.2f} CPU s/1000"),
                    ("postgres_cpu_s_per_1000", "PostgreSQL {:.2f}"),
                    ("client_cpu_s_per_1000", "client {:.2f}"),
                    ("unaccounted", "{:.0f} unaccounted"),
                    ("replays_missed", "{:.0f} replays missed"),
                ],
            )
        )
        print(results[-1].line(), flush=True)
    return results


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
