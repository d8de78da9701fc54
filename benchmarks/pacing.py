"""Pacing: how close to a provider account's rate limit all the workers together send, and
whether they ever go over it.

The organization's WhatsApp is configured with ``rate_per_second`` = ``--pacing-rate`` (80,
Meta's default throughput), and the WhatsApp Cloud API stand-in refuses sends beyond that many
in any second with error 130429, as Meta does. ``--pacing-workers`` (4) ``bulletin worker``
processes on PostgreSQL send one announcement to ``--pacing-people`` (3,000) people, enough to
keep them busy well past the measured window.

From the stand-in's ``/times`` (accepted sends) and ``/refused`` (sends refused with 130429):
the rate accepted over ``--pacing-window`` (30) seconds starting one second after the first
send, its deviation from the limit in %, the most sends attempted (accepted or refused) in any
sliding 1-second window, how many whole seconds (counted from the first send) had more
attempts than the limit, and how many sends were refused.

Run alone: ``python -m benchmarks.pacing``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import time
from pathlib import Path

import aiohttp

from benchmarks.chaos.fleet import Fleet
from benchmarks.common import (
    Result,
    announce_to_staff,
    database,
    provider,
    whatsapp_organization,
    worker_env,
)
from benchmarks.lateness import workers_listening
from bulletin.crypto import generate_key
from bulletin.db import utcnow

TARGET_DEVIATION_PERCENT = 5.0
#: Whole seconds over the limit that the target tolerates.
TARGET_SECONDS_OVER = 1
RATE_LIMITED = 130429


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pacing")
    group.add_argument("--pacing-rate", type=int, default=80, help="Messages per second.")
    group.add_argument("--pacing-people", type=int, default=3_000, help="Audience.")
    group.add_argument("--pacing-workers", type=int, default=4, help="Worker processes.")
    group.add_argument(
        "--pacing-window", type=float, default=30.0, help="Seconds over which the rate is measured."
    )


def most_in_one_second(times: list[float]) -> int:
    """The largest number of ``times`` (sorted, seconds) within any half-open 1-second span."""
    most = 0
    for i, start in enumerate(times):
        most = max(most, bisect.bisect_left(times, start + 1.0, lo=i) - i)
    return most


def figures(
    accepted: list[float], refused: list[float], rate: int, window: float
) -> dict[str, float]:
    """The pacing figures of one run from the sorted wall-clock times of accepted and refused
    sends."""
    attempts = sorted(accepted + refused)
    first = attempts[0]
    start, end = first + 1.0, first + 1.0 + window
    in_window = bisect.bisect_left(accepted, end) - bisect.bisect_left(accepted, start)
    measured = in_window / window
    per_second: dict[int, int] = {}
    for at in attempts:
        second = int(at - first)
        per_second[second] = per_second.get(second, 0) + 1
    return {
        "rate_per_s": measured,
        "deviation_percent": (measured - rate) / rate * 100,
        "max_in_1s": most_in_one_second(attempts),
        "seconds_over": sum(1 for n in per_second.values() if n > rate),
        "refused": len(refused),
    }


async def one_run(
    rate: int, people: int, workers: int, window: float, folder: Path
) -> dict[str, float]:
    key = generate_key()
    async with (
        database("postgresql", folder) as url,
        provider(0.0, max_per_second=rate) as fake,
        aiohttp.ClientSession() as http,
    ):
        org = await whatsapp_organization(url, people, fake["whatsapp"], key, rate_per_second=rate)
        fleet = Fleet(worker_env(url, key), folder, [], workers)
        fleet.start_all()
        try:
            await workers_listening(url, workers)
            await asyncio.sleep(1.0)
            send_at = utcnow() + dt.timedelta(seconds=1)
            await announce_to_staff(url, org, "Paced", send_at)
            # The window ends 1 + window seconds after the first send; wait a little past it.
            wanted = min(people, int(rate * (window + 1)))
            deadline = time.monotonic() + 2 * (window + 1) + 60
            while time.monotonic() < deadline:
                async with http.get(fake["control"] + "/count") as answer:
                    if (await answer.json())["whatsapp"] >= wanted:
                        break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)
            async with http.get(fake["control"] + "/times") as answer:
                accepted = sorted(float(at) for at, _ in await answer.json())
            async with http.get(fake["control"] + "/refused") as answer:
                refusals = (await answer.json())["times"]
        finally:
            fleet.stop_all()
    refused = sorted(float(at) for at, code in refusals if code == RATE_LIMITED)
    if not accepted:
        raise RuntimeError("the provider accepted nothing")
    return figures(accepted, refused, rate, window)


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    rate = 20 if args.quick else args.pacing_rate
    window = 5.0 if args.quick else args.pacing_window
    # Enough people to keep sending past the window at the full rate.
    people = int(rate * (window + 3)) if args.quick else args.pacing_people
    workers = args.pacing_workers
    runs = [await one_run(rate, people, workers, window, folder) for _ in range(args.runs)]
    result = Result(
        scenario="pacing",
        setting=f"postgresql, {workers} worker(s), {rate}/s, {people:,} people, {window:g} s",
        runs=runs,
        target=(
            "deviation_percent",
            lambda m: (
                abs(m["deviation_percent"]) <= TARGET_DEVIATION_PERCENT
                and m["seconds_over"] <= TARGET_SECONDS_OVER
            ),
            f"within {TARGET_DEVIATION_PERCENT:g} % of {rate}/s; "
            f"over it for at most {TARGET_SECONDS_OVER} s",
        ),
        shown=[
            ("rate_per_s", "{:.1f}/s"),
            ("deviation_percent", "{:+.1f} %"),
            ("max_in_1s", "max {:.0f} in 1 s"),
            ("seconds_over", "{:.0f} s over"),
            ("refused", "{:.0f} refused"),
        ],
    )
    print(result.line(), flush=True)
    return [result]


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
