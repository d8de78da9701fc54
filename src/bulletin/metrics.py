"""Prometheus metrics: what this process counts, and what the database says at scrape time.

Two kinds of figures, kept apart on purpose:

* **Per process**: sends and their latency, retries, expired leases, outcomes written, API
  requests. They are module-level objects in prometheus_client's default registry, made once
  at import, so any number of apps created in one process share them (and registering them
  twice cannot happen). Sum them over processes in Prometheus.
* **From the database**: deliveries by channel and state, the queue's depth and the age of
  its oldest due item. The deliveries table is the queue, so these are computed from it on
  each scrape by :func:`exposition` and are true across every process sharing the database;
  they are never registered anywhere.

A worker process without an API serves its own figures with :func:`serve_process_metrics`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from bulletin.db import Database, utcnow
from bulletin.deliveries import repository
from bulletin.deliveries.outcomes import Outcome
from bulletin.deliveries.states import DeliveryState

log = structlog.get_logger("bulletin.metrics")

# --- Per process ----------------------------------------------------------------------------

SEND_SECONDS = Histogram(
    "bulletin_send_seconds",
    "Duration of provider calls, by channel and by what the provider answered.",
    ["channel", "outcome"],
)
RETRIES = Counter(
    "bulletin_retries",
    "Sends that will be tried again later (transient errors, in-doubt sends a provider dedupes).",
    ["channel"],
)
LEASES_EXPIRED = Counter(
    "bulletin_leases_expired",
    "Sends whose worker went silent past its lease, by where the delivery went.",
    ["outcome"],
)
for _outcome in (DeliveryState.PENDING, DeliveryState.UNKNOWN):
    LEASES_EXPIRED.labels(_outcome.value)  # shown as 0 from the start, so rate() works
UNKNOWN = Counter(
    "bulletin_unknown",
    "Deliveries that became unknown: sent or not, nobody can tell; never resent automatically.",
)
COMPLETED = Counter(
    "bulletin_deliveries_completed",
    "Outcomes of claimed deliveries written by this process's workers, by the state they set.",
    ["outcome"],
)
FENCED_OUT = Counter(
    "bulletin_completions_fenced_out",
    "Outcomes dropped because the claim no longer held (its lease had been taken over).",
)
HTTP_REQUESTS = Counter(
    "bulletin_http_requests",
    "API requests, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "bulletin_http_request_duration_seconds",
    "Time to answer API requests, by route template and method.",
    ["route", "method"],
)


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


# --- From the database, per scrape ----------------------------------------------------------


class _Snapshot(Collector):
    """This process's registry followed by families computed for one scrape."""

    def __init__(self, extra: Iterable[Metric]) -> None:
        self._extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self._extra


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
            counts = await repository.counts_by_channel_and_state(session)
            depth, oldest = await repository.queue_depth(session, now)
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


async def exposition(db: Database) -> bytes:
    """The text exposition of this process's figures and the database's, for ``/metrics``."""
    return generate_latest(_Snapshot(await database_families(db)))


# --- A worker's own server ------------------------------------------------------------------


@dataclass
class MetricsServer:
    """prometheus_client's HTTP server, running in a thread, serving this process's figures."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_process_metrics(host: str, port: int) -> MetricsServer:
    """Serve this process's metrics on ``host:port`` (a worker, which has no API).

    The database-derived gauges are left to the API's ``/metrics``: they describe the whole
    installation, so scraping them from every worker would only repeat them.
    """
    server, thread = start_http_server(port, addr=host)
    log.info("metrics.serving", host=host, port=int(server.server_port))
    return MetricsServer(server, thread)
