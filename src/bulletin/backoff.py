"""Capped exponential backoff, for loops that wait out an outage and then resume by themselves.

Every long-running loop of a process (start-up, dispatcher, completer, scheduler, the LISTEN
link) uses one :class:`Backoff` per loop: after a failure it waits :meth:`Backoff.failed`
seconds, doubling up to a cap, and a success starts over. Jitter spreads the retries of many
processes so that a database coming back is not hit by all of them in the same instant.

:func:`log_failure` is how such a loop reports the failure it waits out: a database outage as
a warning that says what the driver said, anything else (a defect) with its traceback.
:meth:`Backoff.failed_after` does both, counting the failure and logging it with the wait.
"""

from __future__ import annotations

import random

from structlog.typing import FilteringBoundLogger

from bulletin.db import describe, is_unavailable


def log_failure(
    log: FilteringBoundLogger,
    exc: BaseException,
    *,
    outage: str | None,
    defect: str,
    outage_also: tuple[type[BaseException], ...] = (),
    **fields: object,
) -> None:
    """Log ``exc``, which ended one round of a loop that goes on, on the structlog logger ``log``.

    An outage of the database (:func:`~bulletin.db.is_unavailable`, or one of ``outage_also``)
    is logged as a warning named ``outage``, with a one-line ``error`` (never the statement or
    its parameters), or not at all when ``outage`` is ``None`` because another loop reports
    it. Anything else is a defect, logged as an error named ``defect`` with its traceback: call
    this from the ``except`` block. ``fields`` go on the line either way.
    """
    if is_unavailable(exc) or isinstance(exc, outage_also):
        if outage is not None:
            log.warning(outage, error=describe(exc), **fields)
    else:
        log.exception(defect, **fields)


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

    def failed_after(
        self,
        exc: BaseException,
        log: FilteringBoundLogger,
        *,
        outage: str,
        defect: str,
        outage_also: tuple[type[BaseException], ...] = (),
        **fields: object,
    ) -> float:
        """Count the failure ``exc`` and log it (:func:`log_failure`) with ``retry_in``, the
        seconds to wait before trying again, which it returns."""
        delay = self.failed()
        log_failure(
            log,
            exc,
            outage=outage,
            defect=defect,
            outage_also=outage_also,
            retry_in=round(delay, 2),
            **fields,
        )
        return delay

    def succeeded(self) -> int:
        """Count a success and start over; returns how many failures it ended (0: none)."""
        ended, self.failures = self.failures, 0
        return ended
