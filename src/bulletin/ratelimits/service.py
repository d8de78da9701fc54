"""Rate-limit policies, and the decision each request gets.

A policy is a ``limits`` rate (``"1000/second"``) under a name; a request is counted against a
policy and an identity (an API key, a client address). The answer carries the fields of the
IETF draft "RateLimit header fields for HTTP" (draft-ietf-httpapi-ratelimit-headers-11):
``RateLimit-Policy: "send";q=1000;w=1`` and ``RateLimit: "send";r=998;t=1``, and, when
refused, ``Retry-After`` naming the same moment as ``t``.

Counting uses the sliding-window-counter strategy of ``limits``. Storage: in memory on SQLite
(one process serves it); on PostgreSQL, :class:`~bulletin.ratelimits.storage.SharedWindowStorage`
so that the limit holds across processes without a round trip per request.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from bulletin.config import Settings
from bulletin.db import Database
from bulletin.errors import BulletinError
from bulletin.ratelimits.storage import SharedWindowStorage


@dataclass(frozen=True)
class Policy:
    """A named rate: ``item.amount`` requests per ``item.get_expiry()`` seconds."""

    name: str
    item: RateLimitItem

    @property
    def field(self) -> str:
        """The policy as a member of the ``RateLimit-Policy`` field."""
        return f'"{self.name}";q={self.item.amount};w={self.item.get_expiry()}'


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on, and what to tell the client about the policy."""

    policy: Policy
    allowed: bool
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        fields = {
            "RateLimit-Policy": self.policy.field,
            "RateLimit": f'"{self.policy.name}";r={self.remaining};t={self.reset_seconds}',
        }
        if not self.allowed:
            fields["Retry-After"] = str(self.reset_seconds)
        return fields


class RateLimited(BulletinError):
    """A request over its rate limit (429, with ``Retry-After``)."""

    def __init__(self, detail: str, decision: Decision) -> None:
        super().__init__(detail)
        self.decision = decision


#: The decision of the request being served, for :class:`~.middleware.RateLimitMiddleware` to
#: put into the answer's fields (set by the middleware to a fresh holder per request).
current: contextvars.ContextVar[list[Decision] | None] = contextvars.ContextVar(
    "bulletin_rate_limit", default=None
)


def policies(settings: Settings) -> dict[str, Policy]:
    """Every policy of the installation, by name."""
    rates = {
        "read": settings.rate_limit_read,
        "send": settings.rate_limit_send,
        "admin": settings.rate_limit_admin,
        "webhooks": settings.rate_limit_webhooks,
        "pages": settings.rate_limit_pages,
        "sign-in": settings.rate_limit_sign_in,
    }
    return {name: Policy(name, parse(rate)) for name, rate in rates.items()}


class RateLimits:
    """The policies of one process and the limiter that counts them.

    ``clock`` (seconds since the epoch) is injectable so that tests of the sign-in delays need
    not sleep; the in-memory storage of ``limits`` keeps its own clock.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.policies = policies(settings)
        self.clock = clock
        self._limiter: SlidingWindowCounterRateLimiter | None = None

    def _limiter_for(self, db: Database) -> SlidingWindowCounterRateLimiter:
        if self._limiter is None:
            storage: Storage = (
                MemoryStorage()
                if db.is_sqlite
                else SharedWindowStorage(db, clock=lambda: self.clock())
            )
            self._limiter = SlidingWindowCounterRateLimiter(storage)
        return self._limiter

    async def hit(self, db: Database, name: str, identity: str) -> Decision:
        """Count one request of ``identity`` against policy ``name``."""
        policy = self.policies[name]
        limiter = self._limiter_for(db)
        allowed = await limiter.hit(policy.item, name, identity)
        stats = await limiter.get_window_stats(policy.item, name, identity)
        now = self.clock() if isinstance(limiter.storage, SharedWindowStorage) else time.time()
        wait = max(0, math.ceil(stats.reset_time - now))
        if not allowed:
            wait = max(1, wait)
        return Decision(policy, allowed, stats.remaining if allowed else 0, wait)


def refused(decision: Decision, who: str) -> RateLimited:
    """The error of a refused request, in words for the client."""
    policy = decision.policy
    return RateLimited(
        f"Too many requests: {who} may make {policy.item.amount} per "
        f"{policy.item.get_expiry()} s ({policy.name!r} limit). Retry after "
        f"{decision.reset_seconds} s.",
        decision,
    )
