"""Fan-out: one announcement to a large audience, through the API.

An API process (``bulletin serve --no-worker``) takes ``POST /v1/announcements``; a scheduler
process (``bulletin worker --no-dispatch``, so that nothing is sent and the figure is the
fan-out's own) turns the audience into delivery rows. Measured: the POST's response time at
three audience sizes (it must not grow with the audience), and rows/s from the POST until the
last delivery row of the largest audience exists.

Run alone: ``python -m benchmarks.fanout``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

from benchmarks.chaos.fleet import Fleet
from benchmarks.common import (
    Result,
    add_people,
    database,
    free_port,
    person,
    wait_ready,
    worker_env,
)
from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.deliveries.models import Delivery
from bulletin.messages.models import Message
from bulletin.orgs import service as orgs

TARGET_ROWS_PER_S = 50_000
TARGET_POST_MS = 100.0
#: How many POSTs to time at each of the smaller audience sizes.
SMALL_POSTS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fan-out")
    group.add_argument("--fanout-people", type=int, default=100_000, help="Largest audience.")
    group.add_argument("--fanout-backends", default="postgresql,sqlite")


async def _organization(url: str, people: int) -> tuple[uuid.UUID, str]:
    """An organization with ``people`` people in ``everyone``; a hundredth of them also in
    ``hundredth``, a tenth in ``tenth``. Returns its id and an admin key."""
    rows = []
    for i in range(people):
        row = person(i, whatsapp=False, email=True)
        row["groups"] = ["everyone"] + (["tenth"] if i % 10 == 0 else [])
        row["groups"] += ["hundredth"] if i % 100 == 0 else []
        rows.append(row)
    db = Database(url)
    try:
        async with db.transaction() as session:
            org, key = await orgs.create_organization(session, "bench")
        await add_people(db, org.id, rows)
        return org.id, key.secret
    finally:
        await db.dispose()


async def _post(http: aiohttp.ClientSession, api: str, key: str, group: str) -> tuple[str, float]:
    body = {"title": "Fan-out", "body": "Hello", "audience": {"groups": [group]}}
    started = time.perf_counter()
    async with http.post(
        f"{api}/v1/announcements", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as answer:
        payload = await answer.json()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if answer.status != 202 and answer.status != 201:
            raise RuntimeError(f"POST /v1/announcements answered {answer.status}: {payload}")
    return str(payload["id"]), elapsed_ms


async def _resolved(db: Database, message_id: str, timeout: float = 600) -> float:
    """Wait until the message's audience is resolved; returns when (``perf_counter``)."""
    deadline = time.monotonic() + timeout
    wanted = uuid.UUID(message_id)
    while time.monotonic() < deadline:
        async with db.read() as session:
            state = (
                await session.execute(select(Message.state).where(Message.id == wanted))
            ).scalar_one()
        if state not in ("scheduled", "resolving"):
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the audience of {message_id} was not resolved in {timeout} s")


async def one_run(backend: str, people: int, folder: Path) -> dict[str, float]:
    key = generate_key()
    async with database(backend, folder) as url:
        _, api_key = await _organization(url, people)
        port = free_port()
        extra: dict[str, Any] = {}
        if backend == "sqlite":
            # SQLite has no NOTIFY; the scheduler process looks for new work this often.
            extra["BULLETIN_IDLE_POLL_SECONDS"] = "0.05"
        fleet = Fleet(
            worker_env(url, key, **extra), folder, [port], 1, worker_args=("--no-dispatch",)
        )
        fleet.start_all()
        db = Database(url)
        api = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, api)
                await asyncio.sleep(1.0)  # the scheduler process up and idle too
                figures: dict[str, float] = {}
                for group, size in (("hundredth", people // 100), ("tenth", people // 10)):
                    times = []
                    for _ in range(SMALL_POSTS):
                        message_id, elapsed = await _post(http, api, api_key, group)
                        times.append(elapsed)
                        await _resolved(db, message_id)
                    figures[f"post_ms_{size}"] = statistics.median(times)
                started = time.perf_counter()
                message_id, elapsed = await _post(http, api, api_key, "everyone")
                figures[f"post_ms_{people}"] = elapsed
                finished = await _resolved(db, message_id)
            async with db.read() as session:
                rows = (
                    await session.execute(
                        select(func.count()).where(Delivery.message_id == uuid.UUID(message_id))
                    )
                ).scalar_one()
            if rows != people:
                raise RuntimeError(f"{rows} delivery rows for {people} people")
            figures["rows_per_s"] = people / (finished - started)
            figures["post_ms_max"] = max(v for k, v in figures.items() if k.startswith("post_ms"))
            return figures
        finally:
            fleet.stop_all()
            await db.dispose()


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    people = 5_000 if args.quick else args.fanout_people
    results = []
    for backend in args.fanout_backends.split(","):
        runs = [await one_run(backend, people, folder) for _ in range(args.runs)]
        shown = [("rows_per_s", "{:,.0f} rows/s")] + [
            (f"post_ms_{size}", f"POST {size:,}: {{:.1f}} ms")
            for size in (people // 100, people // 10, people)
        ]
        target = None
        if backend == "postgresql":
            target = (
                "rows_per_s",
                lambda m: (
                    m["rows_per_s"] >= TARGET_ROWS_PER_S and m["post_ms_max"] < TARGET_POST_MS
                ),
                f">= {TARGET_ROWS_PER_S:,} rows/s; POST < {TARGET_POST_MS:g} ms at any size",
            )
        results.append(Result("fan-out", f"{backend}, {people:,} people", runs, target, shown))
        print(results[-1].line(), flush=True)
    return results


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
