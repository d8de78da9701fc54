"""A short chaos run: several API and worker processes on a private PostgreSQL server, killed
with SIGKILL while they work, PostgreSQL crashed once, every POST sent twice; then the
provider's ledger is held against Bulletin's records, and the webhook events owed to the
organization's endpoint against what its receiver got (see benchmarks/chaos)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from benchmarks.chaos.run import Options, run

from support.ci import unavailable

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _postgres_programs() -> bool:
    return shutil.which("initdb") is not None or any(
        Path("/usr/lib/postgresql").glob("*/bin/initdb")
    )


async def test_five_thousand_deliveries_through_kills_and_a_database_crash(tmp_path: Path) -> None:
    if not _postgres_programs():
        reason = (
            "the chaos run starts its own PostgreSQL server and needs initdb and pg_ctl: "
            "install PostgreSQL (e.g. 'apt install postgresql')"
        )
        unavailable(reason)
    result = await run(
        Options(
            deliveries=5_000,
            apis=2,
            workers=3,
            kill_every=4.0,
            database_restarts=1,
            seed=7,
            folder=tmp_path,
            quiet=True,
        )
    )
    report = result.report
    assert report.messages_accepted > 0
    assert report.deliveries_expected >= 5_000
    assert result.kills["worker"] + result.kills["api"] >= 3
    assert result.database_restarts == 1
    assert report.provider_accepted > 0
    assert report.problems == []
    assert result.server_errors == []
    assert report.duplicates == 0
    assert report.lost == 0
    assert report.sends_after_cancel == 0
    assert report.unknown == report.unknown_explained
    # Every webhook event owed to the endpoint reached its receiver, signed, despite the kills.
    webhooks = result.webhooks
    assert webhooks.expected["delivery.*"] > 0
    assert webhooks.expected["message.completed"] > 0
    assert webhooks.received >= sum(webhooks.expected.values())
    assert webhooks.problems == []
    assert webhooks.missing == 0
    assert webhooks.unexpected == 0
    assert webhooks.invalid == 0
    assert (webhooks.failed, webhooks.pending, webhooks.endpoint_state) == (0, 0, "active")
