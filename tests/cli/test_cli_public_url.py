"""Without ``BULLETIN_PUBLIC_URL``, links and callbacks name the address ``serve`` listens on."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import structlog
from twilio.request_validator import RequestValidator

from bulletin.cli import _warn_if_links_are_local
from bulletin.config import Settings
from support.processes import Process, environment, first_start_credentials, free_port, ready
from support.waiting import wait_until

TW_SID = "AC" + "2" * 32
TW_TOKEN = "public-url-auth-token"
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 (a setting under test, nothing binds to it)


@pytest.mark.parametrize(
    ("host", "public_url", "warning"),
    [
        ("127.0.0.1", None, "public_url.local_only"),
        ("192.0.2.7", None, "public_url.not_https"),
        ("127.0.0.1", "http://bulletin.example.com", "public_url.not_https"),
        ("127.0.0.1", "https://bulletin.example.com", None),
    ],
)
def test_start_up_warns_of_links_nobody_else_reaches_or_without_one_click(
    host: str, public_url: str | None, warning: str | None
) -> None:
    settings = Settings(_env_file=None, host=host, port=8101, public_url=public_url)
    with structlog.testing.capture_logs() as logs:
        _warn_if_links_are_local(settings)
    assert [line["event"] for line in logs] == ([warning] if warning else [])


@pytest.mark.parametrize(
    ("host", "public_url", "base_url", "local"),
    [
        ("127.0.0.1", None, "http://127.0.0.1:8101", True),
        ("localhost", None, "http://localhost:8101", True),
        # Every interface: 0.0.0.0 in a link leads nowhere; the loopback address answers.
        (EVERY_INTERFACE, None, "http://127.0.0.1:8101", True),
        ("::", None, "http://[::1]:8101", True),
        ("::1", None, "http://[::1]:8101", True),
        ("192.0.2.7", None, "http://192.0.2.7:8101", False),
        ("bulletin.internal", None, "http://bulletin.internal:8101", False),
        (EVERY_INTERFACE, "https://bulletin.example.com/", "https://bulletin.example.com", False),
        ("127.0.0.1", "http://127.0.0.1:9000", "http://127.0.0.1:9000", False),
    ],
)
def test_the_base_url_is_the_public_url_or_the_listening_address(
    host: str, public_url: str | None, base_url: str, local: bool
) -> None:
    settings = Settings(_env_file=None, host=host, port=8101, public_url=public_url)
    assert settings.base_url == base_url
    # Only a derived address is warned about: a public URL someone set is what they meant.
    assert settings.base_url_is_local is local


def test_serve_on_another_port_builds_links_and_checks_callbacks_with_that_port(
    tmp_path: Path, processes: list[Process]
) -> None:
    """``serve --port N``, no BULLETIN_PUBLIC_URL: a Twilio callback signed (by the ``twilio``
    package, as Twilio signs) for the URL it was really sent to is taken, and the in-process
    worker's preference links name port N. It warns that only this machine can follow them."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(
        f"sqlite:///{tmp_path / 'b.db'}",
        BULLETIN_TWILIO_ACCOUNT_SID=TW_SID,
        BULLETIN_TWILIO_AUTH_TOKEN=TW_TOKEN,
        BULLETIN_TWILIO_FROM="+14155550100",
    )
    server = Process(["serve", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
    processes.append(server)
    credentials = first_start_credentials(server)
    key = re.search(r"API key\s+(bk_\S+)", credentials)[1]  # type: ignore[index]
    wait_until(lambda: ready(base))
    auth = {"Authorization": f"Bearer {key}"}

    url = f"{base}/v1/webhooks/twilio/default?delivery=1"
    params = {
        "AccountSid": TW_SID,
        "MessageSid": "SM" + "3" * 32,
        "MessageStatus": "delivered",
        "To": "+14155550111",
        "From": "+14155550100",
        "ApiVersion": "2010-04-01",
    }
    signature = RequestValidator(TW_TOKEN).compute_signature(url, params)
    callback = httpx.post(url, data=params, headers={"X-Twilio-Signature": signature})
    assert callback.status_code == 200, callback.text

    put = httpx.put(f"{base}/v1/recipients/ada", json={"email": "ada@example.com"}, headers=auth)
    assert put.status_code == 201, put.text
    posted = httpx.post(
        f"{base}/v1/announcements",
        json={"title": "Hello", "body": "Links", "audience": {"all": True}, "channels": ["email"]},
        headers=auth,
    )
    assert posted.status_code == 202, posted.text

    def sandbox_items() -> list[dict[str, str]]:
        items: list[dict[str, str]] = httpx.get(f"{base}/v1/sandbox/messages", headers=auth).json()[
            "items"
        ]
        return items

    wait_until(lambda: len(sandbox_items()) == 1)
    [email] = sandbox_items()
    assert email["preference_url"].startswith(f"{base}/p/"), email

    server.terminate()
    warning = re.search(r"public_url\.local_only.*", server.output())
    assert warning is not None, server.output()
    assert base in warning[0]
    assert "BULLETIN_PUBLIC_URL" in warning[0]
