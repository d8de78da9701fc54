"""Metrics and logs of real processes: a worker's metrics port, JSON logs with request ids."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.processes import environment, free_port
from support.waiting import wait_until

BULLETIN = str(Path(sys.executable).with_name("bulletin"))


class Process:
    """A background ``bulletin`` process; its stdout and stderr are kept apart, in files."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        stem = cwd / f"bulletin-{args[0]}-{time.monotonic_ns()}"
        self.stdout, self.stderr = stem.with_suffix(".out"), stem.with_suffix(".err")
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [BULLETIN, *args], env=env, cwd=cwd, stdout=out, stderr=err
            )

    def log_lines(self) -> list[str]:
        return [line for line in self.stderr.read_text().splitlines() if line.strip()]

    def events(self) -> list[dict[str, Any]]:
        """Every line on stderr, each of which must be one JSON object with an event name."""
        parsed = []
        for line in self.log_lines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
            assert isinstance(event, dict), line
            assert isinstance(event.get("event"), str), line
            parsed.append(event)
        return parsed

    def logged(self, event: str) -> bool:
        return any(f'"event": "{event}"' in line for line in self.log_lines())

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert code in (0, -signal.SIGTERM), self.stderr.read_text()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def metrics_at(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


SENT_BY_EMAIL = (
    "bulletin_send_seconds_count",
    frozenset({("channel", "email"), ("outcome", "sent")}),
)
EMAIL_SENT = ("bulletin_deliveries", frozenset({("channel", "email"), ("state", "sent")}))


def test_a_worker_serves_its_metrics_and_every_line_is_json_with_request_ids(
    tmp_path: Path, processes: list[Process]
) -> None:
    """An API process and a worker process on one database, logging JSON, scraped apart."""
    env = environment(f"sqlite:///{tmp_path / 'b.db'}", BULLETIN_LOG_FORMAT="json")
    created = subprocess.run(
        [BULLETIN, "orgs", "create", "Acme", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    auth = {"X-API-Key": json.loads(created.stdout)["api_key"]}
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    api = Process(["serve", "--no-worker", "--port", str(port)], env, tmp_path)
    worker = Process(["worker", "--metrics-port", str(metrics_port)], env, tmp_path)
    processes.extend([api, worker])
    wait_until(lambda: api.logged("startup.ready") and worker.logged("worker.started"))

    put = httpx.put(f"{base}/v1/recipients/ada", json={"email": "ada@example.com"}, headers=auth)
    assert put.status_code == 201
    posted = httpx.post(
        f"{base}/v1/notifications",
        json={"recipient": "ada", "title": "Hi", "body": "Metrics?"},
        headers={**auth, "X-Request-ID": "notify-1"},
    )
    assert posted.status_code == 202
    assert posted.headers["X-Request-ID"] == "notify-1"
    hook = httpx.post(
        f"{base}/v1/webhooks/whatsapp", content=b"{}", headers={"X-Request-ID": "hook-2"}
    )
    assert hook.status_code == 401
    assert hook.headers["X-Request-ID"] == "hook-2"

    wait_until(lambda: metrics_at(worker_metrics).get(SENT_BY_EMAIL) == 1)
    from_worker = metrics_at(worker_metrics)
    from_api = metrics_at(f"{base}/metrics")
    # The worker sent it and counted it; its own server has only its process's figures.
    completed = ("bulletin_deliveries_completed_total", frozenset({("outcome", "sent")}))
    assert from_worker[completed] == 1
    assert EMAIL_SENT not in from_worker
    # The API process sent nothing, yet reads the delivery from the shared database.
    assert from_api.get(SENT_BY_EMAIL, 0) == 0
    assert from_api[EMAIL_SENT] == 1
    posted_ok = frozenset({("route", "/v1/notifications"), ("method", "POST"), ("status", "202")})
    assert from_api[("bulletin_http_requests_total", posted_ok)] == 1

    worker.terminate()
    api.terminate()
    with pytest.raises(httpx.ConnectError):
        httpx.get(worker_metrics, timeout=2)

    # JSON logs: every line on stderr is one object, uvicorn's included; a request's lines
    # all carry its id.
    api_events, worker_events = api.events(), worker.events()
    assert any(e.get("logger", "").startswith("uvicorn") for e in api_events)
    by_request: dict[str, list[str]] = {}
    for event in api_events:
        if "request_id" in event:
            by_request.setdefault(event["request_id"], []).append(event["event"])
    assert by_request["hook-2"] == ["webhooks.whatsapp_bad_signature", "http.request"]
    assert by_request["notify-1"] == ["http.request"]
    [notified] = [e for e in api_events if e.get("request_id") == "notify-1"]
    assert notified["route"] == "/v1/notifications"
    assert notified["status"] == 202
    assert {"worker.started", "metrics.serving", "worker.stopped"} <= {
        e["event"] for e in worker_events
    }
