"""A private PostgreSQL server for one chaos run, so that it can be crashed and restarted
without touching any other database on the machine."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg


def _binaries() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, or Debian's versioned folders."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    if not versions:
        raise RuntimeError(
            "the chaos harness runs its own PostgreSQL server and needs its programs "
            "(initdb, pg_ctl); install PostgreSQL, e.g. 'apt install postgresql'"
        )
    return versions[-1].parent


class PrivatePostgres:
    """``initdb`` in a folder, then start, crash (``-m immediate``) and restart at will.

    PostgreSQL refuses to run as root; when the harness is root, the server runs as the
    ``postgres`` user.
    """

    def __init__(self, port: int) -> None:
        # A folder of its own under the system's temporary folder: the server's user must be
        # able to reach it, which a test's private temporary folder does not allow.
        self.folder = Path(tempfile.mkdtemp(prefix="bulletin-chaos-pg-"))
        self.port = port
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self._bin = _binaries()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.restarts = 0

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self._bin / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c max_connections=300 -c shared_buffers=256MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def crash(self) -> None:
        """Stop at once, as a power cut would: no checkpoint, recovery on the next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self.crash()
        self.start()
        self.restarts += 1

    def stop(self, *, keep_in: Path | None = None) -> None:
        """Stop the server; its files are removed, or moved into ``keep_in``."""
        with contextlib.suppress(subprocess.CalledProcessError):  # it was not running
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        if keep_in is not None:
            shutil.move(self.folder, keep_in / "postgres")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    async def create_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
