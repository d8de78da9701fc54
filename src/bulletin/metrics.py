"""Prometheus metrics: the definitions of what this process counts, and their exposition.

Two kinds of figures, kept apart on purpose:

* **Per process**: sends and their latency, retries, expired leases, outcomes written, API
  requests. They are module-level objects in prometheus_client's default registry, made once
  at import, so any number of apps created in one process share them (and registering them
  twice cannot happen). Sum them over processes in Prometheus.
* **From the database**: deliveries by channel and state, the queue's depth and the age of
  its oldest due item. The deliveries table is the queue, so these are computed from it on
  each scrape (:func:`bulletin.deliveries.metrics.database_families`) and are true across
  every process sharing the database; they are never registered anywhere, only handed to
  :func:`exposition` for one scrape.

This module imports no part of Bulletin: every layer may count here. Counting a batch of
outcomes by state is done where outcomes are known (:mod:`bulletin.deliveries.metrics`).

A worker process without an API serves its own figures with :func:`serve_process_metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

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
WEBHOOKS_SENT = Counter(
    "bulletin_webhooks_sent",
    "Webhook requests made by this process, by outcome: delivered (a 2xx answer), retry "
    "(tried again later) or failed (its retries are used up).",
    ["outcome"],
)
WEBHOOK_ENDPOINTS_FAILING = Counter(
    "bulletin_webhook_endpoints_failing",
    "Webhook endpoints this process marked failing: a webhook used up its retries, and "
    "nothing more is sent to the endpoint until it is enabled again.",
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


# --- One scrape -----------------------------------------------------------------------------


class _Snapshot(Collector):
    """This process's registry followed by families computed for one scrape."""

    def __init__(self, extra: Iterable[Metric]) -> None:
        self._extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self._extra


def exposition(extra: Iterable[Metric]) -> bytes:
    """The text exposition of this process's figures followed by ``extra`` (the families read
    from the database for this scrape), for ``/metrics``."""
    return generate_latest(_Snapshot(extra))


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
