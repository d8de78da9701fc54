"""The benchmark suite runs: every scenario, shrunk with ``--quick``, gives figures.

Nothing here is timed or compared with a target (these machines are shared and noisy); the
test only keeps the suite working, so that its figures can be taken at any time. What the
figures are checked for is what would show a broken scenario: each one present, positive,
and, where a scenario counts messages, nothing lost.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import _pg_admin_dsn
from support.ci import unavailable

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
AMQP_URL = os.environ.get("BULLETIN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _benchmarks(tmp_path: Path, *options: str) -> dict[str, Any]:
    """Run ``python -m benchmarks --quick --runs 1`` with ``options``; the JSON it wrote."""
    output = tmp_path / "results.json"
    env = {**os.environ, "BULLETIN_BENCH_POSTGRES": _pg_admin_dsn()}
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick", "--runs", "1"),
            *("--json", str(output), *options),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    document: dict[str, Any] = json.loads(output.read_text())
    return document


def test_every_scenario_gives_figures(postgres_template: str, tmp_path: Path) -> None:
    document = _benchmarks(
        tmp_path,
        *("--api-processes", "1", "--pacing-workers", "2"),
        # Fan-out on one backend: SQLite's runs the same code.
        *("--fanout-backends", "postgresql"),
        # The queue route has a test of its own, which needs RabbitMQ.
        *("--events-routes", "http"),
    )
    assert document["machine"]["cpus"] >= 1
    scenarios = {r["scenario"] for r in document["results"]}
    assert scenarios == {
        "floor",
        "fan-out",
        "end-to-end",
        "lateness",
        "api",
        "pacing",
        "events",
        "webhooks",
    }
    for result in document["results"]:
        medians = result["medians"]
        assert medians, result
        assert all(isinstance(v, int | float) for v in medians.values()), result
    by_scenario = {r["scenario"]: r["medians"] for r in document["results"]}
    assert by_scenario["floor"]["claim_complete_rows_per_s"] > 0
    assert by_scenario["fan-out"]["rows_per_s"] > 0
    assert by_scenario["end-to-end"]["deliveries_per_s"] > 0
    lateness = by_scenario["lateness"]
    assert (lateness["early"], lateness["missing"], lateness["sent_twice"]) == (0, 0, 0)
    api = by_scenario["api"]
    assert api["requests_per_s"] > 0
    assert (api["errors"], api["unaccounted"], api["replays_missed"]) == (0, 0, 0)
    assert by_scenario["pacing"]["rate_per_s"] > 0, by_scenario["pacing"]
    events = by_scenario["events"]
    assert min(events["accepted_per_s"], events["e2e_per_s"], events["ceiling_per_s"]) > 0, events
    assert (events["missing"], events["e2e_missing"], events["refused"]) == (0, 0, 0), events
    webhooks = by_scenario["webhooks"]
    figures = ("backlog_per_s", "webhooks_per_s", "on_deliveries_per_s", "off_deliveries_per_s")
    assert min(webhooks[f] for f in (*figures, "ceiling_per_s")) > 0, webhooks
    assert (webhooks["missing"], webhooks["invalid"]) == (0, 0), webhooks


def _rabbitmq_reachable() -> None:
    """Return when something listens at RabbitMQ's address; else skip (fail in CI)."""
    parts = urlsplit(AMQP_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        unavailable(
            f"RabbitMQ is not reachable at {host}:{port} ({exc}). Start it with "
            "'rabbitmq-server -detached', or point BULLETIN_TEST_AMQP_URL at a server."
        )


def test_the_queue_route_of_the_events_scenario_gives_figures(
    postgres_template: str, tmp_path: Path
) -> None:
    _rabbitmq_reachable()
    document = _benchmarks(
        tmp_path, "--only", "events", "--events-routes", "rabbitmq", "--events-amqp-url", AMQP_URL
    )
    [result] = document["results"]
    assert "bulletin consume" in result["setting"]
    figures = result["medians"]
    rates = ("committed_per_s", "e2e_per_s", "publish_per_s", "ceiling_per_s")
    assert min(figures[f] for f in rates) > 0, figures
    assert (figures["missing"], figures["e2e_missing"], figures["refused"]) == (0, 0, 0), figures
