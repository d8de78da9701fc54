"""Real ``bulletin`` processes for tests: starting them, reading their output, waiting until
they serve, and a free port to give them."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.waiting import wait_until

BULLETIN = str(Path(sys.executable).with_name("bulletin"))


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BULLETIN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def environment(database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULLETIN_")}
    if database_url is not None:
        env["BULLETIN_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def first_start_credentials(server: Process) -> str:
    """What the first start handed over. Its output is not a terminal here, so the key and
    the password are in a file only its owner can read, and the log names the file."""
    path = Path(server.wait_for(r"first_start\.credentials_written.*?path[\"=: ]+([^\"\s]+)")[1])
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text()


#: Ports handed to servers a test starts: below the kernel's ephemeral range (32768 and up on
#: Linux), from which every outgoing connection (to PostgreSQL, say) takes its local port. A
#: port from that range, free when chosen, can be taken by such a connection before the server
#: binds it ("address already in use"); one from here can only be taken by another server.
_SERVER_PORTS = range(20_000, 32_768)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server a test starts."""
    for port in random.sample(_SERVER_PORTS, 50):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


class Process:
    """A background ``bulletin`` process whose output is collected in a file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.args = args
        self.log = cwd / f"bulletin-{args[0]}-{time.monotonic_ns()}.log"
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [BULLETIN, *args], env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never appeared:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a machine or a container dies."""
        self.proc.kill()
        self.proc.wait()
        self._out.close()

    def terminate(self, timeout: float = 30) -> None:
        """SIGTERM, then check the process stopped cleanly.

        uvicorn re-raises the signal once it has shut down, so ``serve`` reports it in its
        exit status, as servers conventionally do; ``worker`` exits 0.
        """
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        assert code in (0, -signal.SIGTERM), self.output()
        assert "Traceback" not in self.output(), self.output()
        assert "worker.stopped" in self.output() or "--no-worker" in " ".join(self.args)


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(base: str, process: subprocess.Popen[bytes] | Process, timeout: float = 60) -> None:
    """Until the server at ``base`` answers ``/ready``; fails at once if ``process`` exits."""
    popen = process.proc if isinstance(process, Process) else process

    def serving() -> bool:
        assert popen.poll() is None, "the server exited before it was ready"
        return ready(base)

    wait_until(serving, timeout=timeout)
