"""The delivery queue's figures: outcomes counted as this process writes them, and the
queue as the database shows it at scrape time (see :mod:`bulletin.metrics` for the two kinds).

The deliveries table is the queue, so :func:`database_families` is read from it on each scrape
and is true across every process sharing the database; ``/metrics`` serves it beside this
process's own figures.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import structlog
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError

from bulletin.db import Database, utcnow
from bulletin.deliveries import metrics_repository
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.states import DeliveryState
from bulletin.metrics import COMPLETED, LEASES_EXPIRED, UNKNOWN

log = structlog.get_logger("bulletin.metrics")

for _outcome in (DeliveryState.PENDING, DeliveryState.UNKNOWN):
    LEASES_EXPIRED.labels(_outcome.value)  # shown as 0 from the start, so rate() works


def _count_by_state(applied: Sequence[Outcome], counter: Counter) -> None:
    # One increment per state and batch, not per delivery: this runs on the delivery path.
    by_state = collections.Counter(o.state for o in applied)
    for state, n in by_state.items():
        counter.labels(str(state)).inc(n)
    if unknown := by_state.get(DeliveryState.UNKNOWN):
        UNKNOWN.inc(unknown)


def count_completions(applied: Sequence[Outcome]) -> None:
    """Count a batch of outcomes the completer wrote."""
    _count_by_state(applied, COMPLETED)


def count_expired_leases(applied: Sequence[Outcome]) -> None:
    """Count a batch of expired leases the reaper settled (``pending`` or ``unknown``)."""
    _count_by_state(applied, LEASES_EXPIRED)


async def database_families(db: Database) -> list[Metric]:
    """Deliveries by channel and state and the queue's depth and age, read now.

    When the database does not answer, ``bulletin_database_up`` is 0 and the other
    families are left out, so that a scrape still shows this process's own figures.
    """
    up = GaugeMetricFamily(
        "bulletin_database_up", "1 when the database answered this scrape's queries."
    )
    now = utcnow()
    try:
        async with db.read() as session:
            counts = await metrics_repository.counts_by_channel_and_state(session)
            depth, oldest = await metrics_repository.queue_depth(session, now)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("metrics.database_unavailable", error=str(exc))
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    deliveries = GaugeMetricFamily(
        "bulletin_deliveries",
        "Deliveries in the database, by channel and state (every process together).",
        labels=["channel", "state"],
    )
    for (channel, state), n in sorted(counts.items()):
        deliveries.add_metric([channel, state], n)
    queue = GaugeMetricFamily(
        "bulletin_queue_depth", "Pending deliveries that are due now (every process together)."
    )
    queue.add_metric([], depth)
    age = GaugeMetricFamily(
        "bulletin_queue_oldest_due_seconds",
        "How long the oldest due pending delivery has been waiting; 0 when none is.",
    )
    age.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    return [up, deliveries, queue, age]
