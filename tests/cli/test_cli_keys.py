"""``bulletin keys list`` and ``bulletin keys revoke``, run as an operator runs them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from bulletin.orgs.keys import digest
from support.processes import environment, run

# Each command is a process of its own (a few seconds each); the queries behind them run on
# both databases in tests/api/test_keys.py, so the commands themselves are run on SQLite.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def made(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = run(args, env, cwd)
    assert done.returncode == 0, done.stderr
    body: dict[str, Any] = json.loads(done.stdout)
    return body


def listed(org: str, env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    done = run(["keys", "list", "--org", org, "--json"], env, cwd)
    assert done.returncode == 0, done.stderr
    keys: list[dict[str, Any]] = json.loads(done.stdout)
    return keys


def test_keys_list_shows_every_key_but_no_secret(database_url: str, tmp_path: Path) -> None:
    env = environment(database_url)
    org = made(["orgs", "create", "Acme", "--json"], env, tmp_path)
    read = made(
        ["keys", "create", "--org", org["org_id"], "--scope", "read", "--json"], env, tmp_path
    )
    made(["orgs", "create", "Other", "--json"], env, tmp_path)

    keys = listed(org["org_id"], env, tmp_path)
    assert [k["scope"] for k in keys] == ["admin", "read"]
    assert set(keys[0]) == {
        "id", "name", "scope", "prefix", "created_at", "last_used_at", "revoked_at"
    }  # fmt: skip
    assert read["api_key"].startswith(keys[1]["prefix"])
    table = run(["keys", "list", "--org", org["org_id"]], {**env, "COLUMNS": "200"}, tmp_path)
    assert keys[1]["prefix"] in table.stdout
    assert "never" in table.stdout
    for secret in (org["api_key"], read["api_key"]):
        for shown in (json.dumps(keys), table.stdout, table.stderr):
            assert secret not in shown
            assert digest(secret) not in shown

    unknown = run(["keys", "list", "--org", "01a20890-763d-7f09-9b46-1dc1f15ad909"], env, tmp_path)
    assert unknown.returncode == 1
    assert "no organization" in unknown.stderr


def test_keys_revoke(database_url: str, tmp_path: Path) -> None:
    env = environment(database_url)
    org = made(["orgs", "create", "Acme", "--json"], env, tmp_path)
    other = made(["orgs", "create", "Other", "--json"], env, tmp_path)
    made(["keys", "create", "--org", org["org_id"], "--scope", "read", "--json"], env, tmp_path)
    admin_id, read_id = (k["id"] for k in listed(org["org_id"], env, tmp_path))

    # --org guards against a key id pasted from the wrong organization.
    wrong = run(["keys", "revoke", read_id, "--org", other["org_id"]], env, tmp_path)
    assert wrong.returncode == 1
    assert "no API key" in wrong.stderr
    assert listed(org["org_id"], env, tmp_path)[1]["revoked_at"] is None

    before = dt.datetime.now(dt.UTC)
    done = run(["keys", "revoke", read_id, "--org", org["org_id"]], env, tmp_path)
    after = dt.datetime.now(dt.UTC)
    assert done.returncode == 0, done.stderr
    assert "BULLETIN_API_KEY_CACHE_SECONDS" in done.stderr
    revoked_at = listed(org["org_id"], env, tmp_path)[1]["revoked_at"]
    assert before <= dt.datetime.fromisoformat(revoked_at) <= after
    assert run(["keys", "revoke", read_id], env, tmp_path).returncode == 0  # again: no change
    assert listed(org["org_id"], env, tmp_path)[1]["revoked_at"] == revoked_at

    last = run(["keys", "revoke", admin_id], env, tmp_path)
    assert last.returncode == 1
    assert "last admin key" in last.stderr
    assert listed(org["org_id"], env, tmp_path)[0]["revoked_at"] is None

    assert run(["keys", "revoke", "not-an-id"], env, tmp_path).returncode == 2
    missing = run(["keys", "revoke", "01a20890-763d-7f09-9b46-1dc1f15ad909"], env, tmp_path)
    assert missing.returncode == 1
    assert "no API key" in missing.stderr
