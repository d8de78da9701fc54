"""Every query of the abuse limits. Like all repositories, these flush and never commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import upsert_statement
from bulletin.ratelimits.models import RateLimitWindow, SignInThrottle, UsedSignInNonce


@dataclass(frozen=True)
class Reservation:
    """What one reservation obtained: ``granted`` units of the window, which now has
    ``reserved`` in all, and the ``previous`` window's total (for the sliding count)."""

    granted: int
    reserved: int
    previous: int


# One statement, so one round trip: read the previous window's total, and add to this window's
# total as many of the wanted units as the sliding-window count still allows (none when it is
# spent). The row lock of the upsert orders concurrent reservations of every process.
_RESERVE = text(
    """
    WITH prev AS (
        SELECT coalesce(
            (SELECT reserved FROM rate_limit_windows WHERE key = :key AND bucket = :bucket - 1),
            0
        ) AS n
    ),
    up AS (
        INSERT INTO rate_limit_windows AS w (key, bucket, reserved, last_grant, expires_at)
        SELECT :key, :bucket, g, g, :expires_at
        FROM (
            SELECT least(:want, greatest(0, :limit - floor(prev.n * :weight)::bigint)) AS g
            FROM prev
        ) AS first
        ON CONFLICT (key, bucket) DO UPDATE SET
            reserved = w.reserved + least(
                :want, greatest(0, :limit - floor((SELECT n FROM prev) * :weight)::bigint
                                   - w.reserved)
            ),
            last_grant = least(
                :want, greatest(0, :limit - floor((SELECT n FROM prev) * :weight)::bigint
                                   - w.reserved)
            )
        RETURNING w.reserved, w.last_grant
    )
    SELECT up.last_grant, up.reserved, prev.n FROM up, prev
    """
)


async def reserve(
    session: AsyncSession,
    *,
    key: str,
    bucket: int,
    want: int,
    limit: int,
    weight: float,
    expires_at: dt.datetime,
) -> Reservation:
    """Reserve up to ``want`` units of window ``bucket`` of ``key`` (PostgreSQL only).

    ``weight`` is the share of the previous window that still counts (1 at the start of this
    window, 0 at its end); the units granted keep the window's weighted total within ``limit``.
    """
    row = (
        await session.execute(
            _RESERVE,
            {
                "key": key,
                "bucket": bucket,
                "want": want,
                "limit": limit,
                "weight": weight,
                "expires_at": expires_at,
            },
        )
    ).one()
    return Reservation(granted=int(row[0]), reserved=int(row[1]), previous=int(row[2]))


async def window_total(session: AsyncSession, key: str, bucket: int) -> int:
    """Units of window ``bucket`` of ``key`` reserved by every process so far."""
    value = await session.scalar(
        select(RateLimitWindow.reserved).where(
            RateLimitWindow.key == key, RateLimitWindow.bucket == bucket
        )
    )
    return int(value or 0)


async def forget_windows(session: AsyncSession, key: str | None, now: dt.datetime) -> None:
    """Delete windows that no longer count (or every window of ``key``)."""
    if key is None:
        await session.execute(delete(RateLimitWindow).where(RateLimitWindow.expires_at <= now))
    else:
        await session.execute(delete(RateLimitWindow).where(RateLimitWindow.key == key))


async def use_nonce(
    session: AsyncSession, nonce_id: str, now: dt.datetime, expires_at: dt.datetime
) -> bool:
    """Record a sign-in nonce as used; false when it had been used already."""
    await session.execute(delete(UsedSignInNonce).where(UsedSignInNonce.expires_at <= now))
    statement = (
        upsert_statement(session, UsedSignInNonce)
        .values(id=nonce_id, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    result = await session.execute(statement)
    return bool(getattr(result, "rowcount", 0) == 1)


async def locked_throttles(
    session: AsyncSession, subjects: list[str], now: dt.datetime
) -> dict[str, SignInThrottle]:
    """The throttle rows of ``subjects``, created when missing, locked until the transaction ends
    (in a stable order, so two attempts never wait for each other)."""
    subjects = sorted(set(subjects))
    await session.execute(
        upsert_statement(session, SignInThrottle)
        .values([{"subject": s, "failures": 0, "last_failure_at": now} for s in subjects])
        .on_conflict_do_nothing(index_elements=["subject"])
    )
    rows = (
        await session.execute(
            select(SignInThrottle)
            .where(SignInThrottle.subject.in_(subjects))
            .order_by(SignInThrottle.subject)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalars()
    return {row.subject: row for row in rows}


async def clear_throttle(session: AsyncSession, subject: str) -> None:
    await session.execute(delete(SignInThrottle).where(SignInThrottle.subject == subject))
