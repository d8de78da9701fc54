"""A webhook receiver in its own process: ``python -m benchmarks.chaos.receiver``.

What an organization would run to be told about its deliveries: an aiohttp server that
verifies each request the way the Standard Webhooks reference package does
(``standardwebhooks.webhooks.Webhook(secret).verify``) and deduplicates by ``webhook-id``.
The chaos run and the webhooks benchmark both use it.

- ``POST /hook``: a webhook. Unsigned, badly signed or too old: 400, counted as ``invalid``.
  With ``--fail-rate``, that share of the valid ones is answered 500 at random (counted as
  ``faults``; the sender must try them again). Otherwise 200, and its ``webhook-id`` is
  counted once in ``unique`` (again in ``duplicates``), with its payload's ``type``.
- ``POST /sink``: reads the body and answers ``{}``: the trivial handler the events benchmark
  posts its batches to, for a raw HTTP ceiling.
- ``POST /control/secret`` ``{"secret": "whsec_..."}``: the secret to verify with (until it
  is set, every webhook is invalid). ``POST /control/reset``: forget everything counted.
- ``GET /control/count``: the figures; ``GET /control/ids``: every unique ``webhook-id``.

``--verify-every N`` verifies one request in N only (the others are trusted), for when
verifying every one would be what limits the rate; the figures say how many were verified.
The process prints one JSON line with its addresses once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Tally:
    unique: set[str] = field(default_factory=set)
    types: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    duplicates: int = 0
    invalid: int = 0
    faults: int = 0
    verified: int = 0
    #: Wall clock (``time.time()``) of the first and the last new ``webhook-id`` answered 200.
    first_at: float | None = None
    last_at: float | None = None
    #: The same as ``last_at``, by payload type (verified requests only).
    last_at_by_type: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        return {
            "unique": len(self.unique),
            "requests": self.requests,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "faults": self.faults,
            "verified": self.verified,
            "types": dict(self.types),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "last_at_by_type": self.last_at_by_type,
        }


class Receiver:
    def __init__(self, fail_rate: float, verify_every: int, seed: int) -> None:
        self.fail_rate = fail_rate
        self.verify_every = max(1, verify_every)
        self.random = random.Random(seed)
        self.webhook: Webhook | None = None
        self.tally = Tally()

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        tally = self.tally
        tally.requests += 1
        webhook_id = request.headers.get("webhook-id", "")
        kind = None
        if tally.requests % self.verify_every == 0:
            if self.webhook is None:
                tally.invalid += 1
                return web.Response(status=400, text="no secret yet")
            try:
                payload = self.webhook.verify(body, dict(request.headers))
            except WebhookVerificationError:
                tally.invalid += 1
                return web.Response(status=400, text="invalid signature")
            tally.verified += 1
            kind = payload.get("type") if isinstance(payload, dict) else None
        elif not webhook_id:
            tally.invalid += 1
            return web.Response(status=400, text="no webhook-id")
        if self.fail_rate and self.random.random() < self.fail_rate:
            tally.faults += 1
            return web.Response(status=500, text="injected fault")
        if webhook_id in tally.unique:
            tally.duplicates += 1
        else:
            tally.unique.add(webhook_id)
            tally.types[kind or "unverified"] += 1
            now = time.time()
            tally.first_at = tally.first_at or now
            tally.last_at = tally.last_at_by_type[kind or "unverified"] = now
        return web.Response(status=200)

    async def sink(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    async def set_secret(self, request: web.Request) -> web.Response:
        self.webhook = Webhook((await request.json())["secret"])
        return web.json_response({})

    async def reset(self, _: web.Request) -> web.Response:
        self.tally = Tally()
        return web.json_response({})

    async def count(self, _: web.Request) -> web.Response:
        return web.json_response(self.tally.figures())

    async def ids(self, _: web.Request) -> web.Response:
        return web.json_response(sorted(self.tally.unique))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/hook", self.hook)
        app.router.add_post("/sink", self.sink)
        app.router.add_post("/control/secret", self.set_secret)
        app.router.add_post("/control/reset", self.reset)
        app.router.add_get("/control/count", self.count)
        app.router.add_get("/control/ids", self.ids)
        return app


@contextlib.asynccontextmanager
async def running(*options: str, log: Path | None = None) -> AsyncIterator[dict[str, str]]:
    """This receiver in its own process, with these command-line options; yields its
    addresses: ``hook``, ``sink`` and ``control`` (the base URL of ``/control/...``)."""
    errors = log.open("wb") if log is not None else None
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.chaos.receiver", *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=errors,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the webhook receiver did not start")
        yield json.loads(line)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        if errors is not None:
            errors.close()


async def main(args: argparse.Namespace) -> None:
    receiver = Receiver(args.fail_rate, args.verify_every, args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    print(json.dumps({"hook": f"{base}/hook", "sink": f"{base}/sink", "control": base}), flush=True)
    await stop.wait()
    await runner.cleanup()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0: any free port.")
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="Share of valid webhooks answered 500."
    )
    parser.add_argument("--verify-every", type=int, default=1, help="Verify one in N.")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(parse()))
    else:
        uvloop.run(main(parse()))
