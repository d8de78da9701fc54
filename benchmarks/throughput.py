"""End-to-end throughput: deliveries/s from due to provider-accepted, with worker processes.

One announcement to ``--e2e-people`` people on WhatsApp, sent by ``bulletin worker`` processes
to the WhatsApp Cloud API stand-in in its own process, with no faults and a fixed latency. The
clock runs from the message's ``send_at`` to the moment the provider has accepted every send;
CPU seconds are the worker processes' own, read from ``/proc``.

Run alone: ``python -m benchmarks.throughput``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
from pathlib import Path

import aiohttp

from benchmarks.chaos.fleet import Fleet
from benchmarks.common import (
    Result,
    announce_to_staff,
    cpu_seconds,
    database,
    profiled,
    provider,
    whatsapp_organization,
    worker_env,
)
from bulletin.crypto import generate_key
from bulletin.db import utcnow

#: (backend, worker processes, provider latency in ms) of each setting measured by default.
SETTINGS = (
    "postgresql:1:0,postgresql:2:0,postgresql:4:0,sqlite:1:0,postgresql:1:200,postgresql:4:200"
)
TARGETS = {"postgresql": 2_000, "sqlite": 1_000}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("end-to-end throughput")
    group.add_argument("--e2e-people", type=int, default=20_000, help="Audience of each run.")
    group.add_argument(
        "--e2e-settings",
        default=SETTINGS,
        help="Comma-separated backend:workers:latency_ms settings to measure.",
    )


async def one_run(
    backend: str,
    workers: int,
    people: int,
    latency_ms: float,
    folder: Path,
    profile: Path | None = None,
) -> dict[str, float]:
    key = generate_key()
    async with (
        database(backend, folder) as url,
        provider(latency_ms) as fake,
        aiohttp.ClientSession() as http,
    ):
        org = await whatsapp_organization(url, people, fake["whatsapp"], key)
        fleet = Fleet(worker_env(url, key), folder, [], workers)
        fleet.start_all()
        try:
            # Due a few seconds from now, once every worker is up and idle.
            send_at = utcnow() + dt.timedelta(seconds=3 + workers)
            await announce_to_staff(url, org, "Bench", send_at)
            await asyncio.sleep(max(0.0, (send_at - utcnow()).total_seconds() - 0.5))
            pids = [m.process.pid for m in fleet.members if m.process is not None]
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            label = f"e2e-{backend}-{workers}w-{latency_ms:g}ms"
            with profiled(pids, profile, label):
                deadline = time.monotonic() + 600
                while True:
                    async with http.get(fake["control"] + "/count") as answer:
                        accepted = (await answer.json())["whatsapp"]
                    if accepted >= people:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {accepted} of {people} sends arrived")
                    await asyncio.sleep(0.02)
            done = time.time()
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        finally:
            fleet.stop_all()
    seconds = done - send_at.timestamp()
    return {
        "deliveries_per_s": people / seconds,
        "seconds": seconds,
        "cpu_s_per_1000": cpu / people * 1000,
    }


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    people = 2_000 if args.quick else args.e2e_people
    specs = "postgresql:1:0,sqlite:1:0" if args.quick else args.e2e_settings
    results = []
    for spec in specs.split(","):
        backend, workers, latency = spec.split(":")
        runs = [
            await one_run(backend, int(workers), people, float(latency), folder, args.profile)
            for _ in range(args.runs)
        ]
        results.append(
            Result(
                scenario="end-to-end",
                setting=f"{backend}, {workers} worker(s), {float(latency):g} ms, {people:,} people",
                runs=runs,
                shown=[
                    ("deliveries_per_s", "{:,.0f} deliveries/s"),
                    ("cpu_s_per_1000", "{:.2f} CPU s/1000"),
                ],
            )
        )
        print(results[-1].line(), flush=True)
    # The target holds for the best worker count of each backend, with no provider latency.
    for backend, floor in TARGETS.items():
        zero = [r for r in results if r.setting.startswith(backend) and ", 0 ms," in r.setting]
        if zero:
            best = max(zero, key=lambda r: r.medians["deliveries_per_s"])
            best.target = (
                "deliveries_per_s",
                lambda m, floor=floor: m["deliveries_per_s"] >= floor,
                f">= {floor:,} deliveries/s (best worker count)",
            )
    return results


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
