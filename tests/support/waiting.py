"""Waiting until a condition holds: polling a check, with a deadline that fails the test.

A test waits for what it expects to happen, never for a fixed time: the check runs again and
again until it returns true, and the wait fails with an ``AssertionError`` once ``timeout``
seconds have passed. The timeout only bounds a failing test; a passing one returns as soon as
the check holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.02
) -> None:
    """Await ``check()`` until it returns true (for tests that run in the event loop)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s")
        await asyncio.sleep(interval)


def wait_until(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
    """Call ``check()`` until it returns true (for tests that drive processes or a browser)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s")
        time.sleep(interval)
