"""Fixtures of the command-line tests, which start real ``bulletin`` processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.processes import Process


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """The processes a test starts; whichever it leaves running are killed when it ends, so
    that a failed test leaves no server behind."""
    started: list[Process] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.kill()
        p._out.close()
