"""Finding 2: no secret ever reaches a log or an answer.

An attacker (or an operator's log collector) reads what the service writes: tracebacks with
local variables, exception messages, validation errors and access lines. Each test plants
secrets where a request or a stored configuration carries them (credential headers, a session
cookie, body fields named like secrets, a ``?token=``, a stored SMTP password, a statement's
parameter), makes every class of error happen, and fails if any planted value appears in an
answer or on stderr, in both log formats: in this process (with ``bulletin.logs`` configured as
``bulletin serve`` configures it), and from a real ``bulletin serve``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request
from sqlalchemy import text

from bulletin import logs
from bulletin.app import create_app
from bulletin.crypto import generate_key
from bulletin.orgs.keys import Scope
from bulletin.providers import repository as providers_repository
from bulletin.providers import service as providers
from bulletin.services import Services
from conftest import Api, make_settings
from support.processes import BULLETIN, free_port, wait_ready

SMTP = {
    "provider": "smtp",
    "host": "smtp.example.com",
    "port": 587,
    "from_address": "news@example.com",
}


def planted(name: str) -> str:
    """A value no code would write by chance, so that finding it anywhere means a leak."""
    return f"Planted{name}{secrets.token_hex(8)}"


def signed_looking() -> str:
    """Shaped like a portal session cookie (a token and its MAC)."""
    return f"{secrets.token_urlsafe(32)}.{secrets.token_urlsafe(16)}"


class Secrets:
    def __init__(self) -> None:
        self.values: dict[str, str] = {
            "bad_key": "bk_" + secrets.token_urlsafe(32),
            "session": signed_looking(),
            "csrf": planted("Csrf"),
            "password": planted("Password"),
            "token": planted("Token"),
            "app_secret": planted("AppSecret"),
            "auth_token": planted("AuthToken"),
            "access_token": planted("AccessToken"),
            "query_token": planted("QueryToken"),
            "verify_token": planted("VerifyToken"),
            "smtp_password": planted("SmtpPassword"),
            "db_parameter": planted("DbParameter"),
            "in_a_local": planted("Local"),
        }

    def add(self, name: str, value: str) -> None:
        self.values[name] = value

    def found_in(self, output: str) -> list[str]:
        return [name for name, value in self.values.items() if value in output]


def check_answer(answer: httpx.Response, planted_: Secrets) -> None:
    shown = answer.text + json.dumps(dict(answer.headers))
    assert planted_.found_in(shown) == [], (answer.request.url.path, answer.text)


@pytest.fixture(params=["console", "json"])
def log_format(request: pytest.FixtureRequest) -> Iterator[str]:
    """A log format; the test configures it (:func:`configure_logs`), and the test process's
    logging is restored afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    client = logging.getLogger("httpx")  # the attacker's client, not the service
    client_level = client.level
    client.setLevel(logging.WARNING)
    yield request.param
    structlog.configure(**saved)
    root.handlers = handlers
    root.setLevel(level)
    client.setLevel(client_level)


def configure_logs(fmt: str) -> None:
    """``bulletin.logs`` configured as ``bulletin serve`` configures it, writing to the
    stderr that the test's ``capsys`` captures now."""
    logs.configure("info", fmt)
    # Loggers cached now would keep writing to this test's stderr in later tests.
    structlog.configure(cache_logger_on_first_use=False)


async def _explode(request: Request) -> None:
    """A defect in a route while secrets are in scope: the request's key, a decrypted SMTP
    password, a value only in a local variable; the message names two of them."""
    svc: Services = request.app.state.services
    authorization = request.headers.get("authorization", "")
    in_a_local = request.query_params.get("local", "")
    async with svc.db.read() as session:
        [row] = await providers_repository.of_provider(session, "smtp")
        config = providers.open_config(row, providers.secret_box(svc.settings))
    password = getattr(config, "password", None)
    smtp_password = password.get_secret_value() if password is not None else ""
    assert in_a_local
    assert smtp_password
    raise RuntimeError(f"the provider refused {authorization} with password={smtp_password}")


async def _database_error(request: Request) -> None:
    """A statement the database refuses, with a secret among its parameters."""
    svc: Services = request.app.state.services
    async with svc.db.transaction() as session:
        await session.execute(
            text("INSERT INTO no_such_table (secret) VALUES (:secret)"),
            {"secret": request.query_params.get("p", "")},
        )


@pytest.fixture
async def hostile_api(database_url: str) -> AsyncIterator[Api]:
    settings = make_settings(
        database_url, secret_key=generate_key(), allow_private_provider_addresses=True
    )
    app: FastAPI = create_app(settings)
    app.add_api_route("/test-only/explode", _explode)
    app.add_api_route("/test-only/database-error", _database_error)
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as c:
            api = Api(c, app.state.services)
            await api.new_org()
            yield api


async def test_no_planted_secret_reaches_a_log_or_an_answer(
    hostile_api: Api, log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logs(log_format)
    api, s = hostile_api, Secrets()
    s.add("admin_key", api.keys[Scope.ADMIN])
    s.add("send_key", api.keys[Scope.SEND])
    v = s.values
    admin = {"Authorization": f"Bearer {v['admin_key']}"}
    hostile_headers = {
        "X-API-Key": v["send_key"],
        "Cookie": f"bulletin_session={v['session']}; theme=dark",
        "X-CSRF-Token": v["csrf"],
    }
    answers: list[httpx.Response] = []

    async def call(method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**hostile_headers, **admin, **kw.pop("headers", {})}
        answer = await api.client.request(method, path, headers=headers, **kw)
        answers.append(answer)
        return answer

    # A stored SMTP password; then the same PUT without username: a 422 naming the field
    # (it was a 500 whose traceback showed the decrypted password).
    stored = await call(
        "PUT",
        "/v1/channels/email",
        json={**SMTP, "username": "news", "password": v["smtp_password"]},
    )
    assert stored.status_code == 201, stored.text
    again = await call("PUT", "/v1/channels/email", json=SMTP)
    assert again.status_code == 422, again.text
    assert [e["loc"] for e in again.json()["errors"]] == [["body", "username"]]

    # An unexpected exception with secrets in its locals and its message.
    exploded = await call(
        "GET", f"/test-only/explode?local={v['in_a_local']}&token={v['query_token']}"
    )
    assert exploded.status_code == 500
    # A database error whose statement carries a secret parameter.
    refused = await call("GET", f"/test-only/database-error?p={v['db_parameter']}")
    assert refused.status_code == 500

    # Validation errors whose inputs are secrets: unknown fields, wrong shapes, a bad query.
    bad_recipient = {
        "email": "not an address",
        "password": v["password"],
        "token": v["token"],
        "api_key": v["bad_key"],
    }
    assert (await call("PUT", "/v1/recipients/ada", json=bad_recipient)).status_code == 422
    whatsapp = {
        "provider": "whatsapp_cloud",
        "phone_number_id": "not digits",
        "access_token": v["access_token"],
        "app_secret": v["app_secret"],
        "verify_token": v["verify_token"],
    }
    assert (await call("PUT", "/v1/channels/whatsapp", json=whatsapp)).status_code == 422
    twilio = {"provider": "twilio", "account_sid": "nope", "auth_token": v["auth_token"]}
    assert (await call("PUT", "/v1/channels/sms", json=twilio)).status_code == 422
    wrong_type = {**whatsapp, "phone_number_id": "1", "access_token": {"v": v["access_token"]}}
    assert (await call("PUT", "/v1/channels/whatsapp", json=wrong_type)).status_code == 422
    listed = await call("GET", f"/v1/recipients?limit={v['query_token']}&token={v['token']}")
    assert listed.status_code == 422
    # Refused credentials and a refused webhook handshake.
    refused_key = await call(
        "GET", "/v1/recipients", headers={"Authorization": f"Bearer {v['bad_key']}"}
    )
    assert refused_key.status_code == 401
    handshake = await call(
        "GET",
        f"/v1/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={v['verify_token']}"
        "&hub.challenge=1",
    )
    assert handshake.status_code in (403, 422)
    # A wrong portal password.
    form = await api.client.get("/portal/sign-in")
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert nonce is not None
    sign_in = await api.client.post(
        "/portal/sign-in",
        data={"email": "admin@example.com", "password": v["password"], "csrf_token": nonce[1]},
    )
    answers.append(sign_in)

    for answer in answers:
        check_answer(answer, s)
    output = capsys.readouterr().err
    # What was logged is there (so the absence below means something)...
    assert "api.unhandled_error" in output
    assert "RuntimeError: the provider refused" in output
    assert "no_such_table" in output
    assert "raise RuntimeError(f" in output  # code lines stay
    if log_format == "json":
        assert all(json.loads(line) for line in output.splitlines() if line.strip())
    # ...and no planted value, no local variable.
    leaked = s.found_in(output)
    assert leaked == [], f"{leaked} leaked:\n{output}"
    assert "smtp_password =" not in output
    assert "in_a_local =" not in output


def test_masking_covers_api_keys_cookies_and_named_values() -> None:
    """The second line of defence, on text no processor knows the origin of."""
    key = "bk_" + secrets.token_urlsafe(32)
    session = signed_looking()
    samples = {
        f"presented {key} twice: {key}": [key],
        f"Cookie: bulletin_session={session}; theme=dark": [session],
        "GET /v1/webhooks/whatsapp?hub.verify_token=abc123xyz&hub.challenge=9 HTTP/1.1": [
            "abc123xyz"
        ],
        "{'username': 'u', 'password': 'hunter2hunter2'}": ["hunter2hunter2"],
        '{"app_secret": "s3cret-value", "request_id": "r-1"}': ["s3cret-value"],
        "[(b'x-api-key', b'zz-top-secret')]": ["zz-top-secret"],
        "Value error [type=value_error, input_value={'a': 'given'}, input_type=dict]": ["given"],
        "[SQL: INSERT]\n[parameters: ('p4ram',)]": ["p4ram"],
    }
    for sample, hidden in samples.items():
        masked = logs.mask(sample)
        assert all(value not in masked for value in hidden), masked
    assert logs.mask("request_id=r-1 key_id=k-1 keyword=STOP") == (
        "request_id=r-1 key_id=k-1 keyword=STOP"
    )


# --- A real `bulletin serve` ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_served_process_writes_no_secret_to_its_output(tmp_path: Path, fmt: str) -> None:
    """stderr and stdout of ``bulletin serve`` (uvicorn's lines, the request lines, the first
    start) hold no credential: the first start's are in a file only its owner can read."""
    s = Secrets()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULLETIN_")}
    env.update(
        BULLETIN_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}",
        BULLETIN_PORT=str(port),
        BULLETIN_LOG_FORMAT=fmt,
        BULLETIN_LOG_LEVEL="debug",
        BULLETIN_SECRET_KEY=generate_key(),
    )
    output = tmp_path / "output.log"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [BULLETIN, "serve"], env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(base, proc)
            credentials = (tmp_path / "bulletin-credentials.txt").read_text()
            assert (tmp_path / "bulletin-credentials.txt").stat().st_mode & 0o777 == 0o600
            key = re.search(r"API key\s+(bk_\S+)", credentials)
            password = re.search(r"password\s+(\S+)", credentials)
            assert key is not None
            assert password is not None
            s.add("admin_key", key[1])
            s.add("portal_password", password[1])
            v = s.values
            headers = {
                "Authorization": f"Bearer {v['admin_key']}",
                "Cookie": f"bulletin_session={v['session']}",
                "X-CSRF-Token": v["csrf"],
            }
            with httpx.Client(base_url=base, headers=headers) as client:
                answers = [
                    client.put(
                        f"/v1/channels/email?token={v['query_token']}",
                        json={**SMTP, "username": "u", "password": v["smtp_password"]},
                    ),
                    client.put("/v1/channels/email", json=SMTP),
                    client.put(
                        "/v1/recipients/ada",
                        json={"email": "x", "password": v["password"], "token": v["token"]},
                    ),
                    client.get(f"/v1/recipients?limit=x&token={v['query_token']}"),
                    client.get(
                        "/v1/webhooks/whatsapp?hub.mode=subscribe"
                        f"&hub.verify_token={v['verify_token']}&hub.challenge=1"
                    ),
                    client.get(
                        "/v1/recipients", headers={"Authorization": f"Bearer {v['bad_key']}"}
                    ),
                ]
            assert [a.status_code for a in answers[:4]] == [201, 422, 422, 422]
            for answer in answers:
                check_answer(answer, s)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    written = output.read_text()
    assert "first_start.credentials_written" in written
    assert "http.request" in written  # the request lines are there
    leaked = s.found_in(written)
    assert leaked == [], f"{leaked} leaked:\n{written}"


async def test_a_body_too_deep_to_parse_is_refused_while_logging_reads_requests(
    hostile_api: Api, log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The refusal of a deep body is logged, and logging looks for the body's secrets: that look
    # parsed the body again and raised RecursionError, turning the 422 into a 500.
    configure_logs(log_format)
    deep = b"[" * 100_000
    for path, content_type, status in [
        ("/v1/webhooks/whatsapp", "application/json", 422),
        ("/v1/webhooks/whatsapp", "application/vnd.example+json", 422),
        ("/v1/recipients/batch", "application/json", 422),
    ]:
        headers = {"Content-Type": content_type, "X-Hub-Signature-256": "sha256=00"}
        headers |= hostile_api.headers(Scope.SEND)
        answer = await hostile_api.client.post(path, content=deep, headers=headers)
        assert answer.status_code == status, (path, content_type, answer.text)
    assert "api.unhandled_error" not in capsys.readouterr().err
