"""``python -m benchmarks``: fan-out and end-to-end delivery throughput, in this process.

Each run uses a fresh database built by the real migrations, real recipients, one
announcement to all of them, and the real engine (scheduler and dispatcher) sending to the
sandbox provider, which records every message in the database. Figures are medians of
``--runs`` runs; the machine and settings are printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select

from bulletin import migrate
from bulletin.bootstrap import running
from bulletin.config import Settings
from bulletin.db import Database, utcnow
from bulletin.deliveries.models import Delivery
from bulletin.messages import schemas, service
from bulletin.messages.models import Message
from bulletin.orgs import service as orgs
from bulletin.recipients import repository as recipients

PG_ADMIN = os.environ.get(
    "BULLETIN_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _fresh_database(backend: str, workdir: Path) -> tuple[str, Any]:
    if backend == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite+aiosqlite:///{path}", None
    name = f"bulletin_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}", name


async def _drop(name: str | None) -> None:
    if name:
        conn = await asyncpg.connect(PG_ADMIN)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def one_run(backend: str, recipients_n: int, workdir: Path) -> dict[str, float]:
    url, pg_name = await _fresh_database(backend, workdir)
    db = Database(url)
    try:
        await migrate.upgrade(db)
        async with db.transaction() as session:
            org, _ = await orgs.create_organization(session, "bench")
        rows: list[dict[str, Any]] = [
            {
                "external_id": f"e{i}",
                "name": f"Person {i}",
                "email": f"e{i}@example.com",
                "phone": None,
                "whatsapp": None,
                "timezone": None,
                "locale": None,
                "attributes": {},
                "groups": ["staff"],
            }
            for i in range(recipients_n)
        ]
        started = time.perf_counter()
        for i in range(0, recipients_n, 10_000):
            async with db.transaction() as session:
                await recipients.upsert(session, org.id, rows[i : i + 10_000], utcnow())
        import_seconds = time.perf_counter() - started

        settings = Settings(_env_file=None, database_url=url, log_level="warning")
        async with running(settings, dispatch=True, schedule=True, db=db) as svc:
            body = schemas.AnnouncementIn.model_validate(
                {"title": "Bench", "body": "Hello", "audience": {"groups": ["staff"]}}
            )
            started = time.perf_counter()
            async with db.transaction() as session:
                message = await service.create_announcement(session, org.id, body)
            accepted_ms = (time.perf_counter() - started) * 1000
            svc.notifier.work_available()
            resolved_at: float | None = None
            completed_at: float | None = None
            while completed_at is None:
                await asyncio.sleep(0.02)
                async with db.read() as session:
                    fresh = await session.get(Message, message.id, populate_existing=True)
                    state = fresh.state if fresh else ""
                if resolved_at is None and state in ("sending", "completed"):
                    resolved_at = time.perf_counter()
                if state == "completed":
                    completed_at = time.perf_counter()
            assert resolved_at is not None
            async with db.read() as session:
                sent = (
                    await session.execute(
                        select(func.count()).where(
                            Delivery.message_id == message.id, Delivery.state == "sent"
                        )
                    )
                ).scalar_one()
            assert sent == recipients_n, f"only {sent} of {recipients_n} sent"
        return {
            "import_rows_per_s": recipients_n / import_seconds,
            "accept_ms": accepted_ms,
            "fanout_rows_per_s": recipients_n / (resolved_at - started),
            "end_to_end_per_s": recipients_n / (completed_at - started),
        }
    finally:
        await db.dispose()
        await _drop(pg_name)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    scenario = f"one announcement to {args.recipients:,} recipients, sandbox provider"
    print(f"{scenario}, medians of {args.runs} runs")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            runs = [await one_run(backend, args.recipients, Path(tmp)) for _ in range(args.runs)]
            results[backend] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"{'backend':<11} {'import rows/s':>14} {'accept ms':>10} "
        f"{'fan-out rows/s':>15} {'end-to-end/s':>13}"
    )
    for backend, r in results.items():
        print(
            f"{backend:<11} {r['import_rows_per_s']:>14,.0f} {r['accept_ms']:>10.1f} "
            f"{r['fanout_rows_per_s']:>15,.0f} {r['end_to_end_per_s']:>13,.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
