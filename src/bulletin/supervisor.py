"""Several API processes on one port: what ``bulletin serve --processes N`` runs.

One Python process uses one core. To use a machine's cores, ``serve --processes N`` becomes a
supervisor that starts N ordinary ``bulletin serve`` processes (each starts, migrates and
waits for the database as one alone would) listening on the same address with
``SO_REUSEPORT``, so that the kernel spreads connections evenly over them. A socket shared by
every process instead (uvicorn's ``--workers``) lets whichever process wakes first accept a
whole burst of connections, and with long-lived keep-alive connections, as load balancers and
HTTP clients keep them, that one process then does most of the work while the others idle.

The supervisor passes ``SIGTERM`` and ``SIGINT`` on to its processes (which run in a process
group of their own, so that a Ctrl-C reaches each once) and waits for them to stop; on Linux
they are also stopped if the supervisor is killed. A process that dies on its own is started
again, unless it could not start at all (exit status :data:`CANNOT_START`: the port is taken by
a process that does not share it): then the supervisor stops the others and exits with that
status.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

import structlog

log = structlog.get_logger("bulletin.supervisor")

#: The exit status of a ``serve`` process that could not start (uvicorn's, for the same).
CANNOT_START = 3
#: How often the supervisor looks at its processes.
POLL_SECONDS = 0.5


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other processes may bind too (``SO_REUSEPORT``)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("several processes on one port need SO_REUSEPORT, which this OS lacks")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """Runs ``count`` copies of the command ``argv`` until told to stop."""

    def __init__(self, argv: list[str], count: int, grace_seconds: float) -> None:
        self.argv = argv
        self.count = count
        #: How long each process may take to stop before it is killed.
        self.grace_seconds = grace_seconds
        self._processes: list[subprocess.Popen[bytes]] = []
        self._stop_signal: int | None = None

    def run(self) -> int:
        """Start the processes and keep them running; the exit status for the supervisor."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._processes = [self._start() for _ in range(self.count)]
        status = 0
        while self._stop_signal is None:
            time.sleep(POLL_SECONDS)
            for i, process in enumerate(self._processes):
                code = process.poll()
                if code is None or self._stop_signal is not None:
                    continue
                if code == CANNOT_START:
                    log.error("supervisor.start_failed", pid=process.pid, exit_status=code)
                    status = code
                    self._stop_signal = signal.SIGTERM
                    break
                log.warning("supervisor.process_died", pid=process.pid, exit_status=code)
                self._processes[i] = self._start()
        self._stop(self._stop_signal)
        return status

    def _start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # noqa: S603 (our own command line)
            self.argv,
            process_group=0,
            preexec_fn=_end_with_parent if sys.platform == "linux" else None,
        )
        log.info("supervisor.process_started", pid=process.pid)
        return process

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        self._stop_signal = sig

    def _stop(self, sig: int) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(sig)
        deadline = time.monotonic() + self.grace_seconds
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("supervisor.process_killed", pid=process.pid)
                process.kill()
                process.wait()


def _end_with_parent() -> None:
    """In a new process, before it runs: have the kernel send it SIGTERM when the supervisor
    ends, however it ends, so that no process is left serving the port on its own."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def serve_command(host: str, port: int, *, worker: bool, migrate: bool) -> list[str]:
    """The command line of one of the supervised ``bulletin serve`` processes."""
    return [
        sys.executable, "-m", "bulletin", "serve",
        "--host", host, "--port", str(port),
        "--worker" if worker else "--no-worker",
        "--migrate" if migrate else "--no-migrate",
        "--processes", "1", "--shared-port",
    ]  # fmt: skip
