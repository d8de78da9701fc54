"""Capped exponential backoff, for loops that wait out an outage and then resume by themselves.

Every long-running loop of a process (start-up, dispatcher, completer, scheduler, the LISTEN
link) uses one :class:`Backoff` per loop: after a failure it waits :meth:`Backoff.failed`
seconds, doubling up to a cap, and a success starts over. Jitter spreads the retries of many
processes so that a database coming back is not hit by all of them in the same instant.
"""

from __future__ import annotations

import random


class Backoff:
    """How long to wait before the next try: ``first``, doubling each failure, up to ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        if not 0 < first <= cap:
            raise ValueError("backoff needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        #: Failures since the last success.
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before trying again."""
        delay = min(self.cap, self.first * 2.0 ** min(self.failures, 32))
        self.failures += 1
        # Between three quarters of the delay and all of it.
        return delay * (0.75 + random.random() / 4)

    def succeeded(self) -> int:
        """Count a success and start over; returns how many failures it ended (0: none)."""
        ended, self.failures = self.failures, 0
        return ended
