"""The benchmark suite runs: every scenario, shrunk with ``--quick``, gives figures.

Nothing here is timed or compared with a target (these machines are shared and noisy); the
test only keeps the suite working, so that its figures can be taken at any time. What the
figures are checked for is what would show a broken scenario: each one present, positive,
and, where a scenario counts messages, nothing lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _pg_admin_dsn

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).parents[2]


def test_every_scenario_gives_figures(postgres_template: str, tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    env = {**os.environ, "BULLETIN_BENCH_POSTGRES": _pg_admin_dsn()}
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick", "--runs", "1"),
            *("--api-processes", "1", "--pacing-workers", "2", "--json", str(output)),
            # Fan-out on one backend: SQLite's runs the same code.
            *("--fanout-backends", "postgresql"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    document = json.loads(output.read_text())
    assert document["machine"]["cpus"] >= 1
    scenarios = {r["scenario"] for r in document["results"]}
    assert scenarios == {"floor", "fan-out", "end-to-end", "lateness", "api", "pacing"}
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
