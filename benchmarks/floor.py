"""The floor: raw PostgreSQL doing Bulletin's row work, with nothing else in the way.

On the same schema (built by the real migrations) and the same number of rows as the other
scenarios, plain SQL over asyncpg does what the engine does to the database, and no more:

- fan-out: ``INSERT ... SELECT`` of one delivery row per person, in chunks of 5,000;
- claim and complete: from 1 to 4 connections in parallel, each in a loop takes 200 due rows
  (``FOR UPDATE SKIP LOCKED``, marked sending, one event each) in one transaction, and marks
  them sent (one event each) in another.

Each Bulletin throughput on PostgreSQL is also printed as a ratio to these figures.

Run alone: ``python -m benchmarks.floor``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import uuid
from pathlib import Path

import asyncpg

from benchmarks.common import Result, add_people, database, person
from bulletin.db import Database, utcnow
from bulletin.messages import schemas, service
from bulletin.orgs import service as orgs

CHUNK = 5_000
BATCH = 200

_FAN_OUT = """
    INSERT INTO deliveries (org_id, message_id, recipient_id, channel, state, attempt,
                            send_attempts, next_attempt_at, created_at, updated_at)
    SELECT r.org_id, $1, r.id, 'whatsapp', 'pending', 0, 0, $2, $2, $2
    FROM recipients r
    WHERE r.org_id = $3 AND r.id > $4
    ORDER BY r.id
    LIMIT $5
    ON CONFLICT (message_id, recipient_id, channel) DO NOTHING
    RETURNING recipient_id
"""
_CLAIM = """
    WITH due AS MATERIALIZED (
        SELECT id FROM deliveries
        WHERE state = 'pending' AND next_attempt_at <= $1
        ORDER BY next_attempt_at
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    UPDATE deliveries AS d
    SET state = 'sending', attempt = d.attempt + 1, send_attempts = d.send_attempts + 1,
        lease_expires_at = $2, updated_at = $1
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.attempt
"""
_EVENTS = """
    INSERT INTO delivery_events (delivery_id, at, state, attempt)
    SELECT unnest($1::bigint[]), $2, $3, unnest($4::int[])
"""
_COMPLETE = """
    UPDATE deliveries AS d
    SET state = 'sent', lease_expires_at = NULL, provider = 'whatsapp',
        provider_message_id = v.pid, sent_at = $2, updated_at = $2
    FROM unnest($1::bigint[], $3::text[]) AS v(id, pid)
    WHERE d.id = v.id AND d.state = 'sending'
    RETURNING d.id, d.attempt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("floor")
    group.add_argument("--floor-rows", type=int, default=100_000)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _fan_out(conn: asyncpg.Connection, org: uuid.UUID, message: uuid.UUID) -> int:
    now = utcnow()
    made, after = 0, 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_FAN_OUT, message, now, org, after, CHUNK)
        if not rows:
            return made
        made += len(rows)
        after = max(r["recipient_id"] for r in rows)


async def _claim_and_complete(conn: asyncpg.Connection) -> int:
    done = 0
    while True:
        now = utcnow()
        async with conn.transaction():
            claimed = await conn.fetch(_CLAIM, now, now + dt.timedelta(seconds=60), BATCH)
            if not claimed:
                return done
            ids = [r["id"] for r in claimed]
            await conn.execute(_EVENTS, ids, now, "sending", [r["attempt"] for r in claimed])
        now = utcnow()
        async with conn.transaction():
            completed = await conn.fetch(_COMPLETE, ids, now, [f"wamid.{i}" for i in ids])
            await conn.execute(
                _EVENTS,
                [r["id"] for r in completed],
                now,
                "sent",
                [r["attempt"] for r in completed],
            )
        done += len(completed)


async def one_run(rows: int, folder: Path, connections: tuple[int, ...]) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with database("postgresql", folder) as url:
        db = Database(url)
        try:
            async with db.transaction() as session:
                org, _ = await orgs.create_organization(session, "floor")
            await add_people(db, org.id, [person(i) for i in range(rows)])
            messages = []
            for _ in connections:
                body = schemas.AnnouncementIn.model_validate(
                    {"title": "Floor", "body": "Hello", "audience": {"groups": ["staff"]}}
                )
                async with db.transaction() as session:
                    messages.append((await service.create_announcement(session, org.id, body)).id)
        finally:
            await db.dispose()
        pool = await asyncpg.create_pool(_dsn(url), min_size=4, max_size=4)
        try:
            for n, message in zip(connections, messages, strict=True):
                async with pool.acquire() as conn:
                    started = time.perf_counter()
                    made = await _fan_out(conn, org.id, message)
                    if n == connections[0]:
                        figures["fanout_rows_per_s"] = made / (time.perf_counter() - started)
                started = time.perf_counter()

                async def worker() -> int:
                    async with pool.acquire() as conn:
                        return await _claim_and_complete(conn)

                done = sum(await asyncio.gather(*(worker() for _ in range(n))))
                if done != rows:
                    raise RuntimeError(f"the floor completed {done} of {rows} rows")
                figures[f"claim_complete_rows_per_s_{n}"] = done / (time.perf_counter() - started)
        finally:
            await pool.close()
    figures["claim_complete_rows_per_s"] = max(
        v for k, v in figures.items() if k.startswith("claim_complete_rows_per_s_")
    )
    return figures


async def scenario(args: argparse.Namespace, folder: Path) -> list[Result]:
    rows = 5_000 if args.quick else args.floor_rows
    connections = (1, 4) if args.quick else (1, 2, 4)
    runs = [await one_run(rows, folder, connections) for _ in range(args.runs)]
    shown = [("fanout_rows_per_s", "fan-out {:,.0f} rows/s")] + [
        (f"claim_complete_rows_per_s_{n}", f"claim+complete x{n}: {{:,.0f}} rows/s")
        for n in connections
    ]
    result = Result("floor", f"raw PostgreSQL, {rows:,} rows", runs, None, shown)
    print(result.line(), flush=True)
    return [result]


if __name__ == "__main__":
    from benchmarks.__main__ import run_alone

    run_alone(scenario, add_arguments)
