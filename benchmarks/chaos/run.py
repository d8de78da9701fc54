"""One chaos run from start to finish; see ``benchmarks/chaos/__init__.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.chaos import receiver
from benchmarks.chaos.fleet import Fleet
from benchmarks.chaos.load import Client, People, run_load, set_up
from benchmarks.chaos.postgres import PrivatePostgres
from benchmarks.chaos.reconcile import (
    Report,
    Timeline,
    WebhookReport,
    reconcile,
    reconcile_webhooks,
)
from bulletin.crypto import generate_key

WA_TOKEN = "EAAG-chaos-token"
WA_SECRET = "chaos-app-secret"
WA_NUMBER_ID = "100000000000777"
LEASE_SECONDS = 15.0
SEND_TIMEOUT_SECONDS = 8.0
#: Webhooks: a short timeout and lease, so that rows held by a killed worker go out again
#: within the run, and retries in seconds rather than the default hours.
WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_LEASE_SECONDS = 15.0
WEBHOOK_RETRY_DELAYS = "1s,2s,3s,5s,5s,5s,5s,5s,5s,5s"
#: Share of valid webhooks the receiver answers 500, so that retries are exercised.
WEBHOOK_FAULT_RATE = 0.02
#: Every kind an endpoint can subscribe to (``bulletin.subscriptions.kinds.KINDS``).
WEBHOOK_KINDS = [
    "delivery.sent",
    "delivery.delivered",
    "delivery.read",
    "delivery.failed",
    "delivery.suppressed",
    "delivery.unknown",
    "message.completed",
    "message.cancelled",
]


@dataclass
class Options:
    deliveries: int = 5_000
    apis: int = 2
    workers: int = 3
    #: Mean seconds between two SIGKILLs (each of a random API or worker process).
    kill_every: float = 4.0
    database_restarts: int = 1
    seed: int = 1
    #: Longest wait for every delivery to settle once the load is done.
    settle_timeout: float = 180.0
    folder: Path | None = None
    keep: bool = False
    quiet: bool = False


@dataclass
class Result:
    options: dict[str, Any]
    report: Report
    duration_seconds: float
    load_seconds: float
    kills: dict[str, int]
    database_restarts: int
    processes_that_died_alone: list[str]
    client_retries: dict[str, int]
    server_errors: list[str]
    cancels_requested: int
    cancels_too_late: int
    messages_cancelled: int
    provider_faults: dict[str, int]
    provider_requests: int
    receipts_posted: int
    webhooks: WebhookReport
    machine: str = field(default_factory=lambda: f"{platform.node()} {os.cpu_count()} cores")

    @property
    def ok(self) -> bool:
        r = self.report
        return (
            r.duplicates == 0
            and r.lost == 0
            and r.sends_after_cancel == 0
            and r.unknown == r.unknown_explained
            and not self.server_errors
            and self.webhooks.ok
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _say(options: Options, text: str) -> None:
    if not options.quiet:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def _provider(options: Options, folder: Path) -> AsyncIterator[dict[str, Any]]:
    argv = [
        sys.executable,
        "-m",
        "benchmarks.chaos.provider",
        "--token",
        WA_TOKEN,
        "--app-secret",
        WA_SECRET,
        "--phone-number-id",
        WA_NUMBER_ID,
        "--seed",
        str(options.seed),
    ]
    log = (folder / "provider.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=Path(__file__).parents[2]
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"the provider process did not start; see {folder}/provider.log")
        yield json.loads(line)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        log.close()


async def _wait_ready(http: aiohttp.ClientSession, urls: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url + "/ready", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never became ready")
            await asyncio.sleep(0.2)


async def _settled(database_url: str) -> tuple[int, int]:
    """Deliveries still pending or sending, and messages not yet resolved."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        open_deliveries = await conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'sending')"
        )
        open_messages = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE state IN ('scheduled', 'resolving')"
        )
        return int(open_deliveries), int(open_messages)
    finally:
        await conn.close()


async def run(options: Options) -> Result:
    """Set everything up, load and kill, settle, reconcile; returns the figures."""
    started = time.monotonic()
    rng = random.Random(options.seed)
    folder = options.folder or Path(tempfile.mkdtemp(prefix="bulletin-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    postgres = PrivatePostgres(_free_port())
    postgres.init()
    postgres.start()
    fleet: Fleet | None = None
    restarts: list[float] = []
    try:
        await postgres.create_database("bulletin")
        database_url = postgres.url("bulletin")
        api_ports = [_free_port() for _ in range(options.apis)]
        env = {
            "BULLETIN_DATABASE_URL": database_url,
            "BULLETIN_PUBLIC_URL": f"http://127.0.0.1:{api_ports[0]}",
            "BULLETIN_SECRET_KEY": generate_key(),
            "BULLETIN_LEASE_SECONDS": str(LEASE_SECONDS),
            "BULLETIN_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT_SECONDS),
            "BULLETIN_RETRY_BASE_SECONDS": "0.5",
            "BULLETIN_RETRY_MAX_SECONDS": "4",
            "BULLETIN_MAX_ATTEMPTS": "8",
            "BULLETIN_DB_POOL_SIZE": "8",
            "BULLETIN_WEBHOOK_TIMEOUT_SECONDS": str(WEBHOOK_TIMEOUT_SECONDS),
            "BULLETIN_WEBHOOK_LEASE_SECONDS": str(WEBHOOK_LEASE_SECONDS),
            "BULLETIN_WEBHOOK_RETRY_DELAYS": WEBHOOK_RETRY_DELAYS,
            "BULLETIN_LOG_LEVEL": "warning",
            "BULLETIN_LOG_FORMAT": "json",
            # The providers are local stand-ins on 127.0.0.1.
            "BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES": "true",
            "PYTHONPATH": str(Path(__file__).parents[2]),
        }
        org_id, api_key = await asyncio.to_thread(_migrate_and_make_org, env)

        hooks_options = ("--fail-rate", str(WEBHOOK_FAULT_RATE), "--seed", str(options.seed))
        async with (
            _provider(options, folder) as provider,
            receiver.running(*hooks_options, log=folder / "receiver.log") as hooks,
            aiohttp.ClientSession() as http,
        ):
            fleet = Fleet(env, folder, api_ports, options.workers)
            fleet.start_all()
            await _wait_ready(http, fleet.api_urls, 60)
            # The organization's own WhatsApp account (set up below) posts to its own address.
            webhook_urls = [f"{u}/v1/webhooks/whatsapp/{org_id}" for u in fleet.api_urls]
            async with http.post(provider["control"] + "/webhooks", json={"urls": webhook_urls}):
                pass
            people_n = max(50, options.deliveries // 8)
            people = People.make(people_n, groups=5, rng=rng)
            configs = {
                "whatsapp": {
                    "provider": "whatsapp_cloud",
                    "phone_number_id": WA_NUMBER_ID,
                    "access_token": WA_TOKEN,
                    "app_secret": WA_SECRET,
                    "base_url": provider["whatsapp"],
                    "template": {
                        "name": "bulletin_notice",
                        "language": "en",
                        "parameters": ["{{ title }}", "{{ body }}"],
                    },
                    "pair_interval_seconds": 0,
                    "rate_per_second": 5000,
                },
                "email": {
                    "provider": "smtp",
                    "host": "127.0.0.1",
                    "port": provider["smtp_port"],
                    "security": "none",
                    "from_address": "news@chaos.example",
                },
            }
            async with Client(fleet.api_urls, api_key, rng) as client:
                await set_up(client, people, configs)
                endpoint_id = await _webhook_endpoint(client, http, hooks)
                _say(options, f"{people_n} people; loading {options.deliveries} deliveries")
                load_started = time.monotonic()
                stop_killing = asyncio.Event()
                killer = asyncio.create_task(
                    _kill_loop(options, fleet, postgres, restarts, rng, stop_killing)
                )
                try:
                    work = await run_load(
                        client,
                        people,
                        options.deliveries,
                        rng,
                        duration_hint=max(20.0, options.deliveries / 500),
                    )
                    load_seconds = time.monotonic() - load_started
                    _say(options, f"load done in {load_seconds:.1f}s; killing a little longer")
                    # Keep killing while the queue drains, so sends are cut mid-flight too.
                    await _drain_while_killing(database_url, options, stop_killing)
                finally:
                    stop_killing.set()
                    await killer
            dead = fleet.revive_dead()
            _say(options, "waiting for every delivery to settle")
            await _settle(database_url, http, provider["control"], options)
            _say(options, "waiting for every webhook to be sent")
            await _webhooks_sent(database_url, options)
            async with http.get(provider["control"] + "/ledger") as answer:
                ledger = await answer.json()
            async with http.get(hooks["control"] + "/control/ids") as answer:
                received_ids = await answer.json()
            async with http.get(hooks["control"] + "/control/count") as answer:
                received = await answer.json()
            fleet.stop_all()
            timeline = Timeline(fleet.killed_workers(), restarts, LEASE_SECONDS + 2)
            report = await reconcile(database_url, work, ledger, timeline)
            webhooks = await reconcile_webhooks(database_url, endpoint_id, received_ids, received)
            return Result(
                options={k: str(v) for k, v in asdict(options).items()},
                report=report,
                duration_seconds=round(time.monotonic() - started, 1),
                load_seconds=round(load_seconds, 1),
                kills=fleet.kill_count(),
                database_restarts=len(restarts),
                processes_that_died_alone=dead,
                client_retries=client.retries,
                server_errors=client.server_errors[:20],
                cancels_requested=work.cancels_requested,
                cancels_too_late=work.cancels_too_late,
                messages_cancelled=sum(1 for s in work.sent if s.cancelled_at is not None),
                provider_faults=ledger["faults"],
                provider_requests=ledger["whatsapp_requests"],
                receipts_posted=ledger["receipts_posted"],
                webhooks=webhooks,
            )
    finally:
        if fleet is not None:
            fleet.stop_all(grace=5)
        postgres.stop(keep_in=folder if options.keep else None)
        if not options.keep and options.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


def _migrate_and_make_org(env: dict[str, str]) -> tuple[str, str]:
    """Run the real migrations and create the organization with the CLI; its id and admin key."""
    full = {**os.environ, **env}
    migrate = subprocess.run(
        [sys.executable, "-m", "bulletin", "migrate"], env=full, capture_output=True, text=True
    )
    if migrate.returncode != 0:
        raise RuntimeError(f"bulletin migrate failed: {migrate.stderr}")
    made = subprocess.run(
        [sys.executable, "-m", "bulletin", "orgs", "create", "Chaos Ltd", "--json"],
        env=full,
        capture_output=True,
        text=True,
        check=True,
    )
    created = json.loads(made.stdout)
    return str(created["org_id"]), str(created["api_key"])


async def _kill_loop(
    options: Options,
    fleet: Fleet,
    postgres: PrivatePostgres,
    restarts: list[float],
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    """SIGKILL a random process every few seconds; crash PostgreSQL the requested times."""
    kills = 0
    restart_after = {3 + i * 6 for i in range(options.database_restarts)}
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5) * options.kill_every)
        if stop.is_set():
            return
        member = rng.choice(fleet.members)
        fleet.kill(member)
        kills += 1
        _say(options, f"killed {member.name}")
        if kills in restart_after:
            restarts.append(time.time())
            await asyncio.to_thread(postgres.restart)
            _say(options, "crashed and restarted PostgreSQL")


async def _drain_while_killing(database_url: str, options: Options, stop: asyncio.Event) -> None:
    deadline = time.monotonic() + max(10.0, options.kill_every * 4)
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            pending, _ = await _settled(database_url)
            if pending == 0:
                return
        await asyncio.sleep(0.5)


async def _settle(
    database_url: str, http: aiohttp.ClientSession, control: str, options: Options
) -> None:
    deadline = time.monotonic() + options.settle_timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError, aiohttp.ClientError):
            open_deliveries, open_messages = await _settled(database_url)
            async with http.get(control + "/webhooks") as answer:
                receipts = (await answer.json())["pending"]
            if open_deliveries == 0 and open_messages == 0 and receipts == 0:
                # Receipts posted a moment ago may still be in an API's transaction.
                await asyncio.sleep(1.0)
                return
        await asyncio.sleep(0.5)
    _say(options, "gave up waiting for deliveries to settle")


async def _webhook_endpoint(
    client: Client, http: aiohttp.ClientSession, hooks: dict[str, str]
) -> str:
    """The organization's webhook endpoint (every kind) at the receiver, which is given its
    secret; returns the endpoint's id."""
    body = {"url": hooks["hook"], "kinds": WEBHOOK_KINDS, "description": "chaos receiver"}
    _, created = await client.until_answered(
        "POST", "/v1/webhook-endpoints", body, key="webhook-endpoint"
    )
    endpoint_id = str(created["id"])
    secret = created.get("secret")
    if secret is None:
        # The first answer was lost and the key replayed it, without the secret: rotate.
        path = f"/v1/webhook-endpoints/{endpoint_id}/rotate-secret"
        _, rotated = await client.until_answered("POST", path, {"grace": "0s"})
        secret = rotated["secret"]
    async with http.post(hooks["control"] + "/control/secret", json={"secret": secret}):
        pass
    return endpoint_id


async def _webhooks_sent(database_url: str, options: Options) -> None:
    """Wait until no webhook is pending (those held by a killed worker go out again once their
    lease ends)."""
    deadline = time.monotonic() + options.settle_timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(database_url, timeout=5)
            try:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM webhook_messages WHERE state = 'pending'"
                )
            finally:
                await conn.close()
            if pending == 0:
                return
        await asyncio.sleep(0.5)
    _say(options, "gave up waiting for webhooks to be sent")
