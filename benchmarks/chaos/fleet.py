"""Bulletin's API and worker processes of a chaos run: started, killed with SIGKILL, restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Member:
    """One process slot. ``kills`` lists when (``time.time()``) its process was killed, and
    which process id it was."""

    name: str
    argv: list[str]
    log: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    kills: list[tuple[float, int]] = field(default_factory=list)

    @property
    def is_worker(self) -> bool:
        return self.port is None


class Fleet:
    """``apis`` API processes (``bulletin serve --no-worker``) and ``workers`` worker processes
    (``bulletin worker``, with ``worker_args``), all with the same environment."""

    def __init__(
        self,
        env: dict[str, str],
        folder: Path,
        api_ports: list[int],
        workers: int,
        worker_args: tuple[str, ...] = (),
    ):
        self.env = {**os.environ, **env}
        self.members: list[Member] = []
        python = [sys.executable, "-m", "bulletin"]
        for i, port in enumerate(api_ports):
            argv = [*python, "serve", "--no-worker", "--no-migrate", "--port", str(port)]
            self.members.append(Member(f"api-{i}", argv, folder / f"api-{i}.log", port))
        for i in range(workers):
            self.members.append(
                Member(f"worker-{i}", [*python, "worker", *worker_args], folder / f"worker-{i}.log")
            )

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{m.port}" for m in self.members if m.port is not None]

    def start(self, member: Member) -> None:
        with member.log.open("ab") as log:
            member.process = subprocess.Popen(
                member.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def start_all(self) -> None:
        for member in self.members:
            self.start(member)

    def kill(self, member: Member) -> None:
        """SIGKILL: no shutdown, no flush, nothing; then start a new process in its place."""
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGKILL)
            member.process.wait()
            member.kills.append((time.time(), member.process.pid))
        self.start(member)

    def revive_dead(self) -> list[str]:
        """Start again any process that exited by itself (it should not have)."""
        dead = []
        for member in self.members:
            if member.process is not None and member.process.poll() is not None:
                dead.append(f"{member.name} (exit {member.process.returncode})")
                self.start(member)
        return dead

    def stop_all(self, grace: float = 15.0) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.terminate()
        deadline = time.monotonic() + grace
        for member in self.members:
            if member.process is None:
                continue
            try:
                member.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()

    def killed_workers(self) -> set[int]:
        """Process ids of the workers that were killed."""
        return {pid for m in self.members if m.is_worker for _, pid in m.kills}

    def kill_count(self) -> dict[str, int]:
        return {
            "api": sum(len(m.kills) for m in self.members if not m.is_worker),
            "worker": sum(len(m.kills) for m in self.members if m.is_worker),
        }
