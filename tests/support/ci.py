"""When a test cannot run here: a skip on a developer's machine, a failure in CI.

A test that needs a server or a program the machine may lack (PostgreSQL, Chromium, initdb)
calls :func:`unavailable`. In CI, skipping would let a run pass by testing nothing, so there
the same call fails. CI is recognised by its ``CI`` environment variable, as CI services set
it: any of ``1``, ``true`` or ``yes``, in any case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest

#: The values of ``CI`` that mean "this is a CI run" (compared without case or spaces).
CI_VALUES = frozenset({"1", "true", "yes"})


def in_ci(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` describes a CI run."""
    return environ.get("CI", "").strip().lower() in CI_VALUES


#: Whether this run is a CI run.
IN_CI = in_ci(os.environ)


def unavailable(reason: str, *, ci: bool = IN_CI) -> NoReturn:
    """Skip the test because ``reason``; fail it instead in CI."""
    if ci:
        pytest.fail(reason)
    pytest.skip(reason)
