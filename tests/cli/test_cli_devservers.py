"""``bulletin devservers``: the stand-ins a new user runs to watch real adapters work."""

from __future__ import annotations

import os
import re
import signal
import smtplib
from pathlib import Path

import httpx
import pytest

from bulletin.channels.configs import from_settings
from bulletin.config import Settings
from bulletin.devservers.run import DevServers, environment_text
from support.processes import Process, environment, first_start_credentials, free_port, ready
from support.waiting import wait_until


async def test_the_printed_settings_are_settings_bulletin_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Pasted into a shell or written as ``.env``, they configure all three providers."""
    for name in list(os.environ):
        if name.startswith("BULLETIN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    async with DevServers(bulletin_url="http://127.0.0.1:8000") as servers:
        (tmp_path / ".env").write_text(environment_text(servers.environment()))
        settings = Settings()
        configs = from_settings(settings)
        assert set(configs) == {"whatsapp", "sms", "email"}
        assert settings.allow_private_provider_addresses
        assert settings.whatsapp_base_url == servers.whatsapp.base_url
        assert settings.twilio_base_url == servers.twilio.base_url
        assert (settings.smtp_host, settings.smtp_port) == (servers.smtp.host, servers.smtp.port)
        c = servers.credentials
        assert settings.whatsapp_app_secret is not None
        assert settings.whatsapp_app_secret.get_secret_value() == c.whatsapp_app_secret
        assert settings.twilio_auth_token is not None
        assert settings.twilio_auth_token.get_secret_value() == c.twilio_auth_token
        assert settings.smtp_password is not None
        assert settings.smtp_password.get_secret_value() == c.smtp_password


def test_a_new_user_watches_real_adapters_deliver_and_receipts_come_back(
    tmp_path: Path, processes: list[Process]
) -> None:
    """Terminal one: ``bulletin devservers --env-file .env``. Terminal two, in the same
    directory: ``bulletin serve``, which reads the ``.env``. An announcement goes out over
    WhatsApp, SMS and email through the real adapters, and the stand-ins' signed receipts
    mark the WhatsApp and SMS deliveries delivered. Both stop cleanly."""
    ports = {"whatsapp": free_port(), "twilio": free_port(), "smtp": free_port()}
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    env = environment()
    stand_ins = Process(
        [
            "devservers",
            "--whatsapp-port", str(ports["whatsapp"]),
            "--twilio-port", str(ports["twilio"]),
            "--smtp-port", str(ports["smtp"]),
            "--bulletin-url", base,
            "--env-file", ".env",
        ],
        env,
        tmp_path,
    )  # fmt: skip
    processes.append(stand_ins)
    stand_ins.wait_for(r"BULLETIN_SMTP_FROM=\S+\n")
    printed = dict(re.findall(r"^export (BULLETIN_\w+)=(\S+)$", stand_ins.output(), re.M))
    assert printed["BULLETIN_WHATSAPP_BASE_URL"] == f"http://127.0.0.1:{ports['whatsapp']}"
    assert printed["BULLETIN_TWILIO_BASE_URL"] == f"http://127.0.0.1:{ports['twilio']}"
    assert printed["BULLETIN_SMTP_PORT"] == str(ports["smtp"])
    assert printed["BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES"] == "true"
    written = (tmp_path / ".env").read_text()
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert dict(re.findall(r"^export (BULLETIN_\w+)=(\S+)$", written, re.M)) == printed

    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
        code, features = smtp.ehlo()
        assert code == 250
        assert b"AUTH" in features
        smtp.login(printed["BULLETIN_SMTP_USERNAME"], printed["BULLETIN_SMTP_PASSWORD"])
    sid, token = printed["BULLETIN_TWILIO_ACCOUNT_SID"], printed["BULLETIN_TWILIO_AUTH_TOKEN"]
    create = f"{printed['BULLETIN_TWILIO_BASE_URL']}/2010-04-01/Accounts/{sid}/Messages.json"
    text = {"To": "+14155550111", "From": printed["BULLETIN_TWILIO_FROM"], "Body": "Hi"}
    assert httpx.post(create, auth=(sid, token), data=text).status_code == 201
    assert httpx.post(create, auth=(sid, "not-the-token"), data=text).status_code == 401

    server = Process(["serve", "--port", str(api_port)], env, tmp_path)
    processes.append(server)
    key = re.search(r"API key\s+(bk_\S+)", first_start_credentials(server))[1]  # type: ignore[index]
    wait_until(lambda: ready(base))
    auth = {"Authorization": f"Bearer {key}"}
    person = {"name": "Ada", "email": "ada@example.com", "phone": "+14155550111"}
    assert httpx.put(f"{base}/v1/recipients/ada", json=person, headers=auth).status_code == 201
    posted = httpx.post(
        f"{base}/v1/announcements",
        json={
            "title": "Site closed",
            "body": "The site is closed on Friday.",
            "audience": {"all": True},
            "channels": ["whatsapp", "sms", "email"],
            "routing": "all",
        },
        headers=auth,
    )
    assert posted.status_code == 202, posted.text

    def states() -> dict[str, str]:
        items = httpx.get(
            f"{base}/v1/announcements/{posted.json()['id']}/deliveries", headers=auth
        ).json()["items"]
        return {item["channel"]: item["state"] for item in items}

    expected = {"whatsapp": "delivered", "sms": "delivered", "email": "sent"}
    try:
        wait_until(lambda: states() == expected, timeout=60)
    except AssertionError:
        raise AssertionError(f"{states()}\n{stand_ins.output()}\n{server.output()}") from None
    output = stand_ins.output()
    assert "devservers.whatsapp_accepted" in output
    assert "type=template" in output  # nobody wrote, so the window is closed: the template
    assert "devservers.email_received" in output
    assert len(re.findall(r"devservers\.webhook_taken", output)) == 4

    server.terminate()
    stand_ins.proc.send_signal(signal.SIGTERM)
    assert stand_ins.proc.wait(timeout=15) == 0, stand_ins.output()
    assert "Traceback" not in stand_ins.output()
