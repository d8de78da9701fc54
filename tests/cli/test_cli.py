"""The ``bulletin`` command as a user runs it: real processes, real databases, real HTTP."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import httpx
import pytest

from support.processes import (
    Process,
    environment,
    first_start_credentials,
    free_port,
    ready,
    run,
)
from support.waiting import wait_until


def test_orgs_and_keys_print_json_for_scripts(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path / 'b.db'}")
    created = run(["orgs", "create", "Acme Corp", "--json"], env, tmp_path)
    assert created.returncode == 0, created.stderr
    org = json.loads(created.stdout)
    assert set(org) >= {"org_id", "api_key"}
    assert org["api_key"].startswith("bk_")

    key = run(
        ["keys", "create", "--org", org["org_id"], "--scope", "read", "--json"], env, tmp_path
    )
    assert key.returncode == 0, key.stderr
    read_key = json.loads(key.stdout)
    assert read_key["org_id"] == org["org_id"]
    assert read_key["scope"] == "read"
    assert read_key["api_key"] != org["api_key"]
    # Secrets go to stdout only when asked; nothing is logged with them.
    assert org["api_key"] not in created.stderr
    assert read_key["api_key"] not in key.stderr

    listed = run(["orgs", "list"], env, tmp_path)
    assert "Acme Corp" in listed.stdout


def test_keys_create_refuses_unknown_organizations(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path / 'b.db'}")
    unknown = run(
        ["keys", "create", "--org", "01a20890-763d-7f09-9b46-1dc1f15ad909", "--json"], env, tmp_path
    )
    assert unknown.returncode == 1
    assert "no organization" in unknown.stderr
    malformed = run(["keys", "create", "--org", "acme"], env, tmp_path)
    assert malformed.returncode == 2
    bad_scope = run(["keys", "create", "--org", "acme", "--scope", "root"], env, tmp_path)
    assert bad_scope.returncode == 2


def test_migrate_brings_a_new_database_to_the_newest_revision(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path / 'b.db'}")
    result = run(["migrate"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Database is at revision" in result.stderr
    assert run(["migrate"], env, tmp_path).returncode == 0


def test_serve_runs_the_whole_service_on_a_sqlite_file(
    tmp_path: Path, processes: list[Process]
) -> None:
    """What a new user does: start it, use the printed key, see the sandbox's record."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(BULLETIN_PORT=str(port))  # the default database: ./bulletin.db
    server = Process(["serve"], env, tmp_path)
    processes.append(server)
    credentials = first_start_credentials(server)
    key = re.search(r"API key\s+(bk_\S+)", credentials)[1]  # type: ignore[index]
    wait_until(lambda: ready(base))
    assert (tmp_path / "bulletin.db").exists()
    assert (tmp_path / "bulletin-credentials.txt").read_text() == credentials

    auth = {"Authorization": f"Bearer {key}"}
    put = httpx.put(
        f"{base}/v1/recipients/ada",
        json={"name": "Ada", "email": "ada@example.com", "groups": ["eng"]},
        headers=auth,
    )
    assert put.status_code == 201
    posted = httpx.post(
        f"{base}/v1/announcements",
        json={"title": "Hello", "body": "First announcement", "audience": {"groups": ["eng"]}},
        headers={**auth, "Idempotency-Key": "first"},
    )
    assert posted.status_code == 202
    message_id = posted.json()["id"]

    def sandbox_has_it() -> bool:
        page = httpx.get(f"{base}/v1/sandbox/messages?message_id={message_id}", headers=auth)
        return len(page.json()["items"]) == 1

    wait_until(sandbox_has_it)
    org_id = re.search(r"organization\s+([0-9a-f-]{36})", credentials)[1]  # type: ignore[index]
    # The portal user of the first start signs in.
    email = re.search(r"email\s+(\S+@\S+)", credentials)[1]  # type: ignore[index]
    password = re.search(r"password\s+(\S+)", credentials)[1]  # type: ignore[index]
    with httpx.Client(base_url=base) as browser:
        form = browser.get("/portal/sign-in")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert nonce is not None
        signed_in = browser.post(
            "/portal/sign-in",
            data={"email": email, "password": password, "csrf_token": nonce[1]},
        )
        assert signed_in.status_code == 303, signed_in.text
        assert "Hello" in browser.get("/portal/announcements").text
    listed = run(["sandbox", "list", "--org", org_id, "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    [record] = json.loads(listed.stdout)
    assert record["message_id"] == message_id
    assert record["recipient"] == "ada"
    assert record["channel"] == "email"
    for _ in range(3):  # a load balancer's probes
        assert ready(base)
    server.terminate()
    assert key not in server.output()
    assert password not in server.output()
    # The migrations are logged; Alembic's two lines per look at the database, on each probe,
    # are not.
    assert "Running upgrade" in server.output()
    assert "Context impl" not in server.output()
    assert "Will assume" not in server.output()

    # A second start on the same database creates nothing and prints no key.
    again = Process(["serve", "--port", str(free_port())], env, tmp_path)
    processes.append(again)
    again.wait_for(r"Uvicorn running")
    again.terminate()
    assert "bk_" not in again.output()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_separate_api_and_worker_processes_on_postgresql(
    database_url: str, tmp_path: Path, processes: list[Process]
) -> None:
    """The scale-out layout: API processes without a worker, worker processes without an API."""
    env = environment(database_url)
    org = json.loads(run(["orgs", "create", "Acme", "--json"], env, tmp_path).stdout)
    auth = {"X-API-Key": org["api_key"]}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = Process(["serve", "--no-worker", "--port", str(port)], env, tmp_path)
    workers = [Process(["worker"], env, tmp_path) for _ in range(2)]
    processes.extend([api, *workers])
    wait_until(lambda: ready(base))
    for w in workers:
        w.wait_for("worker.started")

    for n in range(20):
        r = httpx.put(
            f"{base}/v1/recipients/p{n}", json={"email": f"p{n}@example.com"}, headers=auth
        )
        assert r.status_code == 201
    posted = httpx.post(
        f"{base}/v1/announcements",
        json={"title": "Hi", "body": "All hands", "audience": {"all": True}},
        headers=auth,
    )
    message_id = posted.json()["id"]

    def completed() -> bool:
        state: str = httpx.get(f"{base}/v1/announcements/{message_id}", headers=auth).json()[
            "state"
        ]
        return state == "completed"

    wait_until(completed)
    counts = httpx.get(f"{base}/v1/announcements/{message_id}", headers=auth).json()["deliveries"]
    assert counts["sent"] == 20
    items = httpx.get(f"{base}/v1/sandbox/messages?limit=100", headers=auth).json()["items"]
    assert len(items) == 20
    assert {i["attempts"] for i in items} == {1}
    for p in [*workers, api]:
        p.terminate()
    assert all(w.proc.returncode == 0 for w in workers)


def _sandbox_items(base: str, auth: dict[str, str], message_id: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    cursor = ""
    while True:
        page = httpx.get(
            f"{base}/v1/sandbox/messages?message_id={message_id}&limit=1000{cursor}", headers=auth
        ).json()
        items.extend(page["items"])
        if not page["next_cursor"]:
            return items
        cursor = f"&cursor={page['next_cursor']}"


def test_an_accepted_message_survives_the_api_being_killed(
    tmp_path: Path, processes: list[Process]
) -> None:
    """G4: a 202 means durable. SIGKILL right after it, and the message is still sent."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(f"sqlite:///{tmp_path / 'b.db'}", BULLETIN_PORT=str(port))
    api = Process(["serve", "--no-worker"], env, tmp_path)
    processes.append(api)
    key = re.search(r"API key\s+(bk_\S+)", first_start_credentials(api))[1]  # type: ignore[index]
    wait_until(lambda: ready(base))
    auth = {"X-API-Key": key}
    httpx.put(f"{base}/v1/recipients/ada", json={"email": "ada@example.com"}, headers=auth)
    posted = httpx.post(
        f"{base}/v1/notifications",
        json={"recipient": "ada", "title": "Hi", "body": "Durable?"},
        headers=auth,
    )
    assert posted.status_code == 202
    api.kill()

    server = Process(["serve"], env, tmp_path)
    processes.append(server)
    wait_until(lambda: ready(base))
    wait_until(lambda: len(_sandbox_items(base, auth, posted.json()["id"])) == 1)
    server.terminate()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
    database_url: str, tmp_path: Path, processes: list[Process]
) -> None:
    """G6: SIGKILL a worker while it sends; another worker finishes the job, each person once."""
    env = environment(
        database_url,
        BULLETIN_LEASE_SECONDS="6",
        BULLETIN_SEND_TIMEOUT_SECONDS="1",
        BULLETIN_CLAIM_BATCH_SIZE="100",
    )
    org = json.loads(run(["orgs", "create", "Acme", "--json"], env, tmp_path).stdout)
    auth = {"X-API-Key": org["api_key"]}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = Process(["serve", "--no-worker", "--port", str(port)], env, tmp_path)
    processes.append(api)
    wait_until(lambda: ready(base))
    people = [{"external_id": f"p{n}", "email": f"p{n}@example.com"} for n in range(3000)]
    assert httpx.post(
        f"{base}/v1/recipients/batch", json={"recipients": people}, headers=auth, timeout=60
    ).is_success
    victim = Process(["worker"], env, tmp_path)
    processes.append(victim)
    victim.wait_for("worker.started")
    message_id = httpx.post(
        f"{base}/v1/announcements",
        json={"title": "Hi", "body": "Everyone", "audience": {"all": True}},
        headers=auth,
    ).json()["id"]
    wait_until(lambda: len(_sandbox_items(base, auth, message_id)) > 300)
    victim.kill()  # mid-batch
    sent_before = len(_sandbox_items(base, auth, message_id))
    assert sent_before < 3000, "the worker finished before it could be killed"

    survivor = Process(["worker"], env, tmp_path)
    processes.append(survivor)

    def completed() -> bool:
        got = httpx.get(f"{base}/v1/announcements/{message_id}", headers=auth).json()
        return bool(got["state"] == "completed")

    wait_until(completed, timeout=60)
    counts = httpx.get(f"{base}/v1/announcements/{message_id}", headers=auth).json()["deliveries"]
    items = _sandbox_items(base, auth, message_id)
    # The sandbox deduplicates on delivery id, so in-doubt sends are retried and recognised:
    # everyone is reached exactly once and nothing is left unknown.
    assert counts["sent"] == 3000
    assert counts["unknown"] == 0
    assert len(items) == 3000
    assert len({i["recipient"] for i in items}) == 3000
    # The sandbox keeps one record per delivery and counts every hand-over in it. A delivery
    # is handed over again only after an attempt left in doubt, never after one that was
    # written as sent; and a lease runs out only on the killed worker, never on a living one.
    for item in (i for i in items if i["attempts"] != 1):
        shown = httpx.get(f"{base}/v1/deliveries/{item['delivery_id']}", headers=auth).json()
        events: list[dict[str, object]] = shown["events"]
        claims = [n for n, e in enumerate(events) if e["state"] == "sending"]
        assert isinstance(item["attempts"], int)
        assert item["attempts"] <= len(claims), events
        for start, end in itertools.pairwise(claims):
            between = events[start + 1 : end]
            assert "sent" not in {e["state"] for e in between}, events
            if not str(events[start]["detail"]).endswith(f":{victim.proc.pid}"):
                assert not any("lease expired" in str(e["detail"]) for e in between), events
    survivor.terminate()
    api.terminate()


def test_secret_key_prints_a_key_that_encrypts() -> None:
    from typer.testing import CliRunner

    from bulletin.cli import app
    from bulletin.crypto import SecretBox

    first = CliRunner().invoke(app, ["secret-key"])
    second = CliRunner().invoke(app, ["secret-key"])
    assert first.exit_code == 0
    key = first.output.strip()
    assert key != second.output.strip()
    box = SecretBox(key)
    assert box.open(box.seal({"password": "p"})) == {"password": "p"}
