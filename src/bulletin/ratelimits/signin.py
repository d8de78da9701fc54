"""Portal sign-in: growing delays after failed attempts, and single-use form nonces.

Every attempt is counted *before* the password is checked, for the account (its email) and for
the client address, in one transaction holding both rows' locks, so parallel attempts cannot
slip past the count. A success clears the account's count and takes its own attempt back from
the address's. After ``allowed`` attempts without success, each further attempt must wait
1 s, 2 s, 4 s ... (at most ``max_delay``) after the previous one; an attempt made earlier is
answered 429 without looking at the password, and is not counted. An address gets four times
the allowance of an account, so that one office's typos do not lock its neighbours out. A count
is forgotten a day after its last attempt.

A sign-in form's nonce may be posted once: its hash is stored until the form's cookie expires.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass

from bulletin.db import Database
from bulletin.ratelimits import repository
from bulletin.ratelimits.models import SignInThrottle

#: How much more an address may fail than an account.
ADDRESS_FACTOR = 4
#: After this long without an attempt, a count starts again from zero.
MEMORY = dt.timedelta(days=1)


def delay_after(failures: int, allowed: int, max_delay: float) -> float:
    """Seconds the next attempt must wait after ``failures`` attempts without success."""
    if failures < allowed:
        return 0.0
    return float(min(max_delay, 2.0 ** min(failures - allowed, 60)))


@dataclass(frozen=True)
class Admission:
    """Whether an attempt may check its password; if not, how many seconds to wait."""

    allowed: bool
    retry_after: int = 0
    failures: int = 0


def account_subject(email: str) -> str:
    return f"account:{email[:300]}"


def address_subject(address: str) -> str:
    return f"address:{address[:300]}"


class SignInGuard:
    """The throttle of one installation's sign-ins (see the module)."""

    def __init__(self, db: Database, allowed: int, max_delay: float) -> None:
        self.db = db
        self.allowed = allowed
        self.max_delay = max_delay

    def _limit_of(self, subject: str) -> int:
        return self.allowed * (ADDRESS_FACTOR if subject.startswith("address:") else 1)

    async def admit(self, email: str, address: str, now: dt.datetime) -> Admission:
        """Count an attempt of ``email`` from ``address``, unless it must wait."""
        subjects = [account_subject(email), address_subject(address)]
        async with self.db.transaction() as session:
            rows = await repository.locked_throttles(session, subjects, now)
            for row in rows.values():
                if row.last_failure_at <= now - MEMORY:
                    row.failures, row.blocked_until = 0, None
            waits = [
                (row.blocked_until - now).total_seconds()
                for row in rows.values()
                if row.blocked_until is not None and row.blocked_until > now
            ]
            if waits:
                return Admission(False, max(1, math.ceil(max(waits))))
            for subject, row in rows.items():
                self._count(row, subject, now)
            failures = rows[subjects[0]].failures
            await session.flush()
        return Admission(True, failures=failures)

    def _count(self, row: SignInThrottle, subject: str, now: dt.datetime) -> None:
        row.failures += 1
        row.last_failure_at = now
        wait = delay_after(row.failures, self._limit_of(subject), self.max_delay)
        row.blocked_until = now + dt.timedelta(seconds=wait) if wait else None

    async def succeeded(self, email: str, address: str, now: dt.datetime) -> None:
        """The attempt admitted for ``email`` from ``address`` had the right password."""
        account, addr = account_subject(email), address_subject(address)
        async with self.db.transaction() as session:
            await repository.clear_throttle(session, account)
            rows = await repository.locked_throttles(session, [addr], now)
            row = rows[addr]
            row.failures = max(0, row.failures - 1)
            if delay_after(row.failures, self._limit_of(addr), self.max_delay) == 0:
                row.blocked_until = None

    async def use_nonce(self, nonce: str, now: dt.datetime, lifetime: dt.timedelta) -> bool:
        """Spend a sign-in form's nonce; false when it was posted before."""
        nonce_id = hashlib.sha256(nonce.encode()).hexdigest()
        async with self.db.transaction() as session:
            return await repository.use_nonce(session, nonce_id, now, now + lifetime)
