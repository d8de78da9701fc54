"""What the benchmark scenarios share: fresh databases, the provider process, worker fleets,
CPU accounting, and the shape of a result."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bulletin import migrate
from bulletin.channels.configs import WhatsAppCloudConfig, WhatsAppTemplateRef
from bulletin.crypto import SecretBox
from bulletin.db import Database, utcnow
from bulletin.messages import schemas, service
from bulletin.orgs import service as orgs
from bulletin.providers import service as channels
from bulletin.recipients import repository as recipients

ROOT = Path(__file__).parents[1]
PG_ADMIN = os.environ.get(
    "BULLETIN_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TOKEN = "EAAG-bench-token"
NUMBER_ID = "100000000000888"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- results --------------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the table: a scenario in one setting, the median of each figure over the
    runs, every run's figures, and the target it is held to (``None``: no target)."""

    scenario: str
    setting: str
    runs: list[dict[str, float]]
    #: The figure the target applies to and a test of its median, with the target as text.
    target: tuple[str, Callable[[dict[str, float]], bool], str] | None = None
    #: Figures in ``runs`` to show in the table, in order, with how to format them.
    shown: list[tuple[str, str]] = field(default_factory=list)

    @property
    def medians(self) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in self.runs) for k in self.runs[0]}

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target[1](self.medians)

    def figures(self) -> str:
        medians = self.medians
        return ", ".join(fmt.format(medians[name]) for name, fmt in self.shown)

    def line(self) -> str:
        """One line for progress output."""
        verdict = {None: "", True: "  [target met]", False: "  [TARGET MISSED]"}[self.met]
        return f"{self.scenario} | {self.setting} | {self.figures()}{verdict}"

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "setting": self.setting,
            "medians": self.medians,
            "runs": self.runs,
            "target": None if self.target is None else self.target[2],
            "met": self.met,
        }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gib": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# --- databases ------------------------------------------------------------------------------


async def fresh_database(backend: str, folder: Path) -> tuple[str, str | None]:
    """A new empty database: its SQLAlchemy URL, and the PostgreSQL name to drop after."""
    if backend == "sqlite":
        path = folder / f"bench-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite+aiosqlite:///{path}", None
    name = f"bulletin_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}", name


async def drop(name: str | None) -> None:
    if name:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def database(backend: str, folder: Path) -> AsyncIterator[str]:
    """A fresh database for one run, built by the real migrations, dropped afterwards."""
    url, name = await fresh_database(backend, folder)
    try:
        db = Database(url)
        try:
            await migrate.upgrade(db)
        finally:
            await db.dispose()
        yield url
    finally:
        await drop(name)


def person(i: int, *, whatsapp: bool = True, email: bool = False) -> dict[str, Any]:
    return {
        "external_id": f"p{i}",
        "name": f"Person {i}",
        "email": f"p{i}@example.com" if email else None,
        "phone": None,
        "whatsapp": f"+2783{i:07d}" if whatsapp else None,
        "timezone": None,
        "locale": None,
        "attributes": {},
        "groups": ["staff"],
    }


async def add_people(db: Database, org: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 10_000):
        async with db.transaction() as session:
            await recipients.upsert(session, org, rows[start : start + 10_000], utcnow())


async def whatsapp_organization(
    url: str, people: int, provider_url: str, key: str, rate_per_second: int = 10_000
) -> uuid.UUID:
    """An organization whose WhatsApp goes to ``provider_url``, with ``people`` people in the
    group ``staff``, each with a WhatsApp number."""
    db = Database(url)
    try:
        async with db.transaction() as session:
            org, _ = await orgs.create_organization(session, "bench")
            config = WhatsAppCloudConfig(
                phone_number_id=NUMBER_ID,
                access_token=TOKEN,
                base_url=provider_url,
                rate_per_second=rate_per_second,
                pair_interval_seconds=0,
                template=WhatsAppTemplateRef(
                    name="notice", language="en", parameters=["{{ body }}"]
                ),
            )
            await channels.put(session, SecretBox(key), org.id, "whatsapp", config)
        await add_people(db, org.id, [person(i) for i in range(people)])
        return org.id
    finally:
        await db.dispose()


# --- processes ------------------------------------------------------------------------------


def worker_env(url: str, key: str, **extra: str) -> dict[str, str]:
    """The environment of Bulletin's processes in a benchmark."""
    return {
        "BULLETIN_DATABASE_URL": url,
        "BULLETIN_SECRET_KEY": key,
        "BULLETIN_LOG_LEVEL": "warning",
        # The providers are local stand-ins on 127.0.0.1.
        "BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES": "true",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


@contextlib.asynccontextmanager
async def provider(
    latency_ms: float = 0.0, max_per_second: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The WhatsApp Cloud API stand-in in its own process, answering every send after
    ``latency_ms``. Yields its addresses: ``whatsapp`` (the base URL) and ``control``
    (``/count``: sends accepted; ``/times``: when each was accepted, with its delivery id)."""
    limit = [] if max_per_second is None else ["--max-per-second", str(max_per_second)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.chaos.provider",
        "--token", TOKEN, "--app-secret", "unused", "--phone-number-id", NUMBER_ID,
        "--latency-ms", str(latency_ms), *limit,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        yield json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
    finally:
        process.terminate()
        await process.wait()


@contextlib.contextmanager
def profiled(pids: list[int], folder: Path | None, label: str) -> Iterator[None]:
    """Sample each process with py-spy while the block runs (``folder`` ``None``: do not),
    writing collapsed stacks to ``folder/label-N.txt``; read them with
    ``python -m benchmarks.profile``."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    program = str(Path(sys.executable).parent / "py-spy")
    options = ["--rate", "100", "--format", "raw", "--nonblocking"]
    spies = [
        subprocess.Popen(
            [program, "record", "--pid", str(pid), *options, "-o", f"{folder}/{label}-{i}.txt"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, pid in enumerate(pids)
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()


async def announce_to_staff(url: str, org: uuid.UUID, title: str, send_at: dt.datetime) -> None:
    """One announcement on WhatsApp to the group ``staff``, due at ``send_at``."""
    db = Database(url)
    try:
        body = schemas.AnnouncementIn.model_validate(
            {
                "title": title,
                "body": "Hello",
                "channels": ["whatsapp"],
                "audience": {"groups": ["staff"]},
                "send_at": send_at.isoformat(),
            }
        )
        async with db.transaction() as session:
            await service.create_announcement(session, org, body)
    finally:
        await db.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(http: aiohttp.ClientSession, api: str) -> None:
    """Wait (at most a minute) until the API at ``api`` answers ``/ready`` with 200."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{api}/ready") as answer:
                if answer.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{api} never became ready")
