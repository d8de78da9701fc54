"""``python -m benchmarks.loadgen``: POST /v1/notifications at a fixed concurrency or rate.

The load generator of the API scenario, in its own process so that its CPU is not the API's.
``--concurrency`` clients each send one request at a time (a closed loop), or with ``--rate``
requests are sent at that rate whatever the answers (an open loop, at most ``--concurrency``
in flight), every one with a new ``Idempotency-Key``, for ``--warmup`` seconds (not measured)
then ``--seconds`` seconds. Every ``--replay-every`` seconds of the measured part a key
already answered is sent again, with the same body, and the first answer must be replayed.
Figures go to stdout as one JSON object:

- ``requests_per_s``, ``p50_ms``, ``p99_ms``: requests due in the measured part, replays
  excluded; in an open loop a request is due when the rate says it should be sent, so time
  spent waiting for a free slot counts (no coordinated omission);
- ``errors``: answers that were not 2xx (and requests that failed), warm-up included;
- ``created``: 2xx answers that were not replays, warm-up included (each one a message);
- ``replays``, ``replays_ok``: replays sent, and those answered with the first answer and
  ``Idempotent-Replayed: true``;
- ``cpu_s``: the load generator's own CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PATH = "/v1/notifications"


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    created: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    replays: int = 0
    replays_ok: int = 0
    #: Keys answered 2xx, with the body sent and the message id answered; replays pick here.
    answered: list[tuple[str, bytes, str]] = field(default_factory=list)


def payload(i: int, recipients: int) -> bytes:
    return json.dumps(
        {
            "title": "Shift change",
            "body": f"Your shift tomorrow starts at {7 + i % 4}:00.",
            "recipient": f"p{i % recipients}",
            "channels": ["whatsapp"],
        }
    ).encode()


async def _post(
    http: aiohttp.ClientSession, url: str, key: str, body: bytes, secret: str
) -> tuple[int, dict[str, Any] | None, bool]:
    headers = {
        "Authorization": f"Bearer {secret}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }
    async with http.post(url + PATH, data=body, headers=headers) as answer:
        data = await answer.read()
        replayed = answer.headers.get("Idempotent-Replayed") == "true"
        parsed = json.loads(data) if 200 <= answer.status < 300 else None
        return answer.status, parsed, replayed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    urls = args.url
    cpu_at_start = time.process_time()
    tally = Tally()
    counter = itertools.count()
    started = time.perf_counter()
    measure_from = started + args.warmup
    stop_at = measure_from + args.seconds

    async def send_new(http: aiohttp.ClientSession, url: str, due: float) -> None:
        """One request with a fresh key; its latency counts from ``due``."""
        i = next(counter)
        key = uuid.uuid4().hex
        body = payload(i, args.recipients)
        try:
            status, answer, replayed = await _post(http, url, key, body, args.key)
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.errors[type(exc).__name__] += 1
            return
        ended = time.perf_counter()
        if not 200 <= status < 300 or answer is None:
            tally.errors[str(status)] += 1
            return
        if replayed:  # a fresh key can never be a replay
            tally.errors["replayed a fresh key"] += 1
            return
        tally.created += 1
        if len(tally.answered) < 100:
            tally.answered.append((key, body, answer["id"]))
        if due >= measure_from:
            tally.latencies_ms.append((ended - due) * 1000)

    async def replay(http: aiohttp.ClientSession, url: str) -> None:
        key, body, message_id = tally.answered[tally.replays % len(tally.answered)]
        tally.replays += 1
        try:
            status, answer, replayed = await _post(http, url, key, body, args.key)
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.errors[type(exc).__name__] += 1
            return
        if 200 <= status < 300 and replayed and answer is not None and answer["id"] == message_id:
            tally.replays_ok += 1
        elif not 200 <= status < 300:
            tally.errors[str(status)] += 1

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        """A closed loop: the next request as soon as the last is answered."""
        url = urls[n % len(urls)]
        replay_due = measure_from + args.replay_every
        while (now := time.perf_counter()) < stop_at:
            if n == 0 and now >= replay_due and tally.answered:
                replay_due += args.replay_every
                await replay(http, url)
            else:
                await send_new(http, url, now)

    async def open_loop(http: aiohttp.ClientSession) -> None:
        """``--rate`` requests a second whatever the answers, at most ``--concurrency`` in
        flight; a request that waits for a free slot counts its wait in its latency."""
        slots = asyncio.Semaphore(args.concurrency)
        running: set[asyncio.Task[None]] = set()

        async def one(n: int, due: float, replaying: bool) -> None:
            async with slots:
                url = urls[n % len(urls)]
                await (replay(http, url) if replaying else send_new(http, url, due))

        replay_due = measure_from + args.replay_every
        due = started
        for n in itertools.count():
            if due >= stop_at:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            replaying = due >= replay_due and bool(tally.answered)
            if replaying:
                replay_due += args.replay_every
            task = asyncio.create_task(one(n, due, replaying))
            running.add(task)
            task.add_done_callback(running.discard)
            due += 1 / args.rate
        await asyncio.gather(*running)

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        if args.rate:
            await open_loop(http)
        else:
            await asyncio.gather(*(client(n, http) for n in range(args.concurrency)))
    ordered = sorted(tally.latencies_ms)

    def percentile(p: float) -> float:
        if not ordered:
            return float("nan")
        rank = max(1, -(-len(ordered) * p // 100))
        return ordered[int(rank) - 1]

    return {
        "requests_per_s": len(ordered) / args.seconds,
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "created": tally.created,
        "replays": tally.replays,
        "replays_ok": tally.replays_ok,
        "cpu_s": time.process_time() - cpu_at_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", action="append", required=True, help="An API's base URL; repeat to spread."
    )
    parser.add_argument("--key", required=True, help="An API key with scope 'send'.")
    parser.add_argument("--recipients", type=int, required=True, help="People p0 .. pN-1 exist.")
    parser.add_argument("--concurrency", type=int, default=32, help="Requests in flight, at most.")
    parser.add_argument(
        "--rate", type=float, help="Send this many requests a second (an open loop)."
    )
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--replay-every", type=float, default=1.0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        figures = asyncio.run(run(args))
    else:
        figures = uvloop.run(run(args))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
