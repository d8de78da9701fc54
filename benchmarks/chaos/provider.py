"""The providers of a chaos run, in their own process: ``python -m benchmarks.chaos.provider``.

A WhatsApp Cloud API server and an SMTP server (Bulletin's own local protocol servers) that
answer with realistic latency and, at random, with the errors real providers send: rate
limits, 5xx, answers too slow for the send timeout, connections dropped after the message was
accepted, undeliverable numbers. Every message they accept goes in a ledger. Each accepted
WhatsApp message is followed by signed status webhooks (``delivered``, sometimes a late,
repeated ``sent``) posted to Bulletin's API processes, batched as Meta batches them, and
retried until one of them takes it.

The process prints one JSON line with its ports once it listens; ``GET /ledger`` on the
control port returns everything it accepted, ``GET /webhooks`` how many receipts are still to
be delivered, and ``GET /refused`` the valid sends it refused on purpose, by error code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web

from bulletin.channels.whatsapp import SIGNATURE_HEADER, sign
from bulletin.devservers.smtp import ReceivedEmail, SmtpServer
from bulletin.devservers.whatsapp import (
    DropAfterAccept,
    Fault,
    GraphError,
    Latency,
    WhatsAppCloudServer,
    status_payload,
    webhook_body,
)

#: How each WhatsApp request is answered, by probability; the rest succeed after 2-30 ms.
WHATSAPP_FAULTS: list[tuple[float, Fault]] = [
    (0.020, GraphError(130429, retry_after=1)),  # throughput limit
    (0.005, GraphError(131056)),  # pair rate limit
    (0.020, GraphError(131000, http_status=500)),  # server error
    (0.003, GraphError(131026)),  # undeliverable: permanent
    (0.005, Latency(10.0)),  # accepted, answered after the send timeout: in doubt
    (0.005, DropAfterAccept()),  # accepted, connection closed: in doubt
]
#: SMTP content answers, by probability.
SMTP_FAULTS: list[tuple[float, str]] = [
    (0.02, "451 4.3.0 Temporary local problem, try later"),
    (0.003, "554 5.7.1 Message rejected"),
]
RECEIPT_BATCH = 100
RECEIPT_FLUSH_SECONDS = 0.3


class Providers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.random = random.Random(args.seed)
        self.whatsapp = WhatsAppCloudServer(
            access_token=args.token,
            phone_number_id=args.phone_number_id,
            max_per_second=args.max_per_second,
        )
        #: Seconds every WhatsApp answer takes, with no faults and no receipts; ``None``: chaos.
        self.latency: float | None = args.latency_ms / 1000 if args.latency_ms is not None else None
        self.whatsapp.script = self._whatsapp_fault
        self.smtp = SmtpServer(security="none")
        if self.latency is None:
            self.smtp.data_reply = self._smtp_reply
        self.app_secret = args.app_secret
        self.webhook_urls: list[str] = []
        self.ledger_whatsapp: list[dict[str, Any]] = []
        self.ledger_email: list[dict[str, Any]] = []
        self.faults: dict[str, int] = {}
        self._seen_whatsapp = 0
        self._seen_email = 0
        self._receipts: deque[dict[str, Any]] = deque()
        self.receipts_posted = 0
        self.receipt_posts_failed = 0
        self._in_flight_posts = 0

    def _pick(self, table: list[tuple[float, Any]]) -> Any:
        roll = self.random.random()
        for chance, choice in table:
            if roll < chance:
                return choice
            roll -= chance
        return None

    def _whatsapp_fault(self, body: dict[str, Any]) -> Fault | None:
        if self.latency is not None:  # a well-behaved provider, for benchmarks
            return Latency(self.latency) if self.latency else None
        fault = self._pick(WHATSAPP_FAULTS)
        if fault is None:
            return Latency(self.random.uniform(0.002, 0.03))
        name = type(fault).__name__ + (f" {fault.code}" if isinstance(fault, GraphError) else "")
        self.faults[name] = self.faults.get(name, 0) + 1
        return fault  # type: ignore[no-any-return]

    def _smtp_reply(self, received: ReceivedEmail) -> str | None:
        reply: str | None = self._pick(SMTP_FAULTS)
        if reply is not None:
            self.faults[f"SMTP {reply[:3]}"] = self.faults.get(f"SMTP {reply[:3]}", 0) + 1
        return reply

    def collect(self) -> None:
        """Move what the servers accepted since the last look into the ledger."""
        if self.latency is not None:
            return  # benchmarks only count
        now_wall, now_mono = time.time(), time.monotonic()
        accepted = self.whatsapp.accepted
        for message in accepted[self._seen_whatsapp :]:
            delivery = message.body.get("biz_opaque_callback_data")
            self.ledger_whatsapp.append(
                {
                    "delivery": delivery,
                    "to": message.to,
                    "wamid": message.wamid,
                    "at": now_wall - (now_mono - message.at),
                }
            )
            self._receipts.append(
                status_payload(
                    self.whatsapp.phone_number_id, message.wamid, "delivered", message.to, delivery
                )
            )
            if self.random.random() < 0.05:  # a late, repeated, out-of-order "sent"
                self._receipts.append(
                    status_payload(
                        self.whatsapp.phone_number_id, message.wamid, "sent", message.to, delivery
                    )
                )
        self._seen_whatsapp = len(accepted)
        received = self.smtp.received
        for email in received[self._seen_email :]:
            self.ledger_email.append(
                {
                    "message_id": str(email.message["Message-ID"]),
                    "to": list(email.recipients),
                    "at": now_wall,
                }
            )
        self._seen_email = len(received)

    def _next_batch(self) -> dict[str, Any] | None:
        if not self._receipts:
            return None
        first = self._receipts.popleft()
        statuses = first["entry"][0]["changes"][0]["value"]["statuses"]
        while self._receipts and len(statuses) < RECEIPT_BATCH:
            more = self._receipts.popleft()
            statuses.extend(more["entry"][0]["changes"][0]["value"]["statuses"])
        return first

    async def post_receipts(self, http: aiohttp.ClientSession) -> None:
        posts: set[asyncio.Task[None]] = set()
        while True:
            self.collect()
            while self.webhook_urls and len(posts) < 8:
                batch = self._next_batch()
                if batch is None:
                    break
                task = asyncio.create_task(self._deliver(http, batch))
                posts.add(task)
                task.add_done_callback(posts.discard)
            await asyncio.sleep(RECEIPT_FLUSH_SECONDS)

    async def _deliver(self, http: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        """Post one webhook until an API process takes it, as Meta retries for days."""
        body = webhook_body(payload)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.app_secret, body),
        }
        self._in_flight_posts += 1
        delay = 0.2
        try:
            while True:
                url = self.random.choice(self.webhook_urls)
                try:
                    timeout = aiohttp.ClientTimeout(total=10)
                    async with http.post(url, data=body, headers=headers, timeout=timeout) as r:
                        await r.read()
                        if r.status == 200:
                            self.receipts_posted += 1
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                self.receipt_posts_failed += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
        finally:
            self._in_flight_posts -= 1

    @property
    def receipts_pending(self) -> int:
        self.collect()
        return len(self._receipts) + self._in_flight_posts

    def control(self) -> web.Application:
        app = web.Application()

        async def ledger(_: web.Request) -> web.Response:
            self.collect()
            return web.json_response(
                {
                    "whatsapp": self.ledger_whatsapp,
                    "email": self.ledger_email,
                    "faults": self.faults,
                    "whatsapp_requests": self.whatsapp.requests,
                    "receipts_posted": self.receipts_posted,
                    "receipt_posts_failed": self.receipt_posts_failed,
                }
            )

        async def webhooks(request: web.Request) -> web.Response:
            if request.method == "POST":
                self.webhook_urls = list((await request.json())["urls"])
            return web.json_response({"pending": self.receipts_pending})

        async def times(_: web.Request) -> web.Response:
            # When each WhatsApp send was accepted (wall clock), with the delivery id it carried.
            now_wall, now_mono = time.time(), time.monotonic()
            return web.json_response(
                [
                    [now_wall - (now_mono - m.at), m.body.get("biz_opaque_callback_data")]
                    for m in self.whatsapp.accepted
                ]
            )

        async def refused(_: web.Request) -> web.Response:
            # Valid sends refused on purpose (a fault or ``--max-per-second``): how many of
            # each error code, and when each was refused (wall clock), with its code.
            now_wall, now_mono = time.time(), time.monotonic()
            refusals = self.whatsapp.refused
            counts: dict[str, int] = {}
            for r in refusals:
                counts[str(r.code)] = counts.get(str(r.code), 0) + 1
            at = [[now_wall - (now_mono - r.at), r.code] for r in refusals]
            return web.json_response({"count": counts, "times": at})

        async def count(_: web.Request) -> web.Response:
            return web.json_response(
                {"whatsapp": len(self.whatsapp.accepted), "email": len(self.smtp.received)}
            )

        app.router.add_get("/ledger", ledger)
        app.router.add_get("/count", count)
        app.router.add_get("/times", times)
        app.router.add_get("/refused", refused)
        app.router.add_route("*", "/webhooks", webhooks)
        return app


async def main(args: argparse.Namespace) -> None:
    providers = Providers(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(providers.control(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_port = runner.addresses[0][1]
    async with providers.whatsapp, providers.smtp, aiohttp.ClientSession() as http:
        receipts = asyncio.create_task(providers.post_receipts(http))
        ready = {
            "whatsapp": providers.whatsapp.base_url,
            "smtp_port": providers.smtp.port,
            "control": f"http://127.0.0.1:{control_port}",
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
        receipts.cancel()
    await runner.cleanup()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", required=True)
    parser.add_argument("--app-secret", required=True)
    parser.add_argument("--phone-number-id", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--latency-ms",
        type=float,
        help="Answer every WhatsApp send after this long, with no faults and no receipts.",
    )
    parser.add_argument(
        "--max-per-second",
        type=int,
        help="Refuse sends over this many in any second with 130429, as Meta does.",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
