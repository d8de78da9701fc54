"""``bulletin serve --processes N``: several API processes on one port."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest

from bulletin.supervisor import shared_port_socket
from support.processes import Process, environment, free_port, ready, run
from support.waiting import wait_until


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def test_connections_are_spread_over_the_processes_sharing_a_port() -> None:
    """What each of the N processes does: listen on the same port with SO_REUSEPORT, so that
    the kernel hands each new connection to one of them, not all to whichever woke first."""
    port = free_port()
    listeners = [shared_port_socket("127.0.0.1", port) for _ in range(2)]
    clients: list[socket.socket] = []
    try:
        for listener in listeners:
            listener.listen(64)
            listener.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        accepted = []
        for listener in listeners:
            count = 0
            while True:
                try:
                    listener.accept()[0].close()
                except BlockingIOError:
                    break
                count += 1
            accepted.append(count)
        assert sum(accepted) == 32
        assert min(accepted) > 0, accepted
    finally:
        for s in [*clients, *listeners]:
            s.close()


def test_several_processes_need_postgresql(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path / 'b.db'}")
    refused = run(["serve", "--processes", "2"], env, tmp_path)
    assert refused.returncode == 2
    assert "need PostgreSQL" in refused.stderr
    assert not (tmp_path / "b.db").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_processes_serve_one_port_and_a_dead_one_is_started_again(
    database_url: str, tmp_path: Path, processes: list[Process]
) -> None:
    env = environment(database_url)
    org = json.loads(run(["orgs", "create", "Acme", "--json"], env, tmp_path).stdout)
    auth = {"X-API-Key": org["api_key"]}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = Process(
        ["serve", "--no-worker", "--processes", "2", "--port", str(port)], env, tmp_path
    )
    processes.append(server)
    wait_until(lambda: len(children(server.proc.pid)) == 2)
    # Each process answers 503 until it has started; wait for both, not just one of them.
    wait_until(lambda: server.output().count("startup.ready") == 2, timeout=60)
    assert ready(base)
    first = children(server.proc.pid)

    def post(n: int) -> None:
        # A new connection each time, so that both processes take some.
        answer = httpx.post(
            f"{base}/v1/notifications",
            json={"recipient": "ada", "title": "Hi", "body": f"Number {n}"},
            headers={**auth, "Idempotency-Key": f"k{n}"},
        )
        assert answer.status_code == 202, answer.text

    added = httpx.put(f"{base}/v1/recipients/ada", json={"email": "a@example.com"}, headers=auth)
    assert added.status_code == 201, added.text
    for n in range(10):
        post(n)

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(children(server.proc.pid) - {victim}) == 2)
    wait_until(lambda: server.output().count("startup.ready") == 3, timeout=60)
    assert ready(base)
    for n in range(10, 20):
        post(n)

    survivors = children(server.proc.pid)
    server.terminate()
    assert server.proc.returncode == 0
    assert not [pid for pid in survivors if Path(f"/proc/{pid}").exists()]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_processes_that_cannot_start_stop_the_supervisor(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:  # an ordinary listener, which shares its port with no one
        taken.bind(("127.0.0.1", port))
        taken.listen()
        failed = run(
            ["serve", "--processes", "2", "--port", str(port)], environment(database_url), tmp_path
        )
    assert failed.returncode == 3
    assert "Cannot listen on 127.0.0.1" in failed.stderr
