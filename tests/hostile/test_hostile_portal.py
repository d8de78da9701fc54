"""Issue 12, finding 8 (its smaller holes of the portal and of the pages behind links).

On SQLite and PostgreSQL through the real migrations, with two organizations:

* a numeric id in a portal path that cannot exist (20 digits, beyond 64 bits, not a number)
  is a 404 page, never a 500, and logs no error; another organization's real id is a 404 too
  and changes nothing;
* every portal page and every page behind a person's link carries ``Cache-Control: no-store``,
  a Content-Security-Policy, ``nosniff``, and a ``Referrer-Policy`` that keeps a link's token
  from leaving in a ``Referer``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import select
from structlog.testing import capture_logs

from bulletin.deliveries.models import Delivery
from bulletin.messages.models import Message
from bulletin.recipients.links import PreferenceLinks
from bulletin.recipients.models import Recipient
from bulletin.web.portal import accounts
from conftest import Api
from support.http import body_of
from support.http_factories import post_people

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
MAX_ID = 2**63 - 1


async def signed_in(api: Api, email: str) -> str:
    """Sign a new portal user of ``api``'s organization in; returns the session's CSRF token."""
    async with api.services.db.transaction() as session:
        await accounts.create_user(session, api.org_id, email, "Ops", PASSWORD)
    api.client.cookies.clear()
    form = await api.client.get("/portal/sign-in")
    nonce = _CSRF.search(form.text)
    assert nonce is not None
    answer = await api.client.post(
        "/portal/sign-in", data={"email": email, "password": PASSWORD, "csrf_token": nonce[1]}
    )
    assert answer.status_code == 303, answer.text
    page = await api.client.get("/portal/announcements/new")
    token = _CSRF.search(page.text)
    assert token is not None
    return token[1]


async def unknown_delivery(api: Api) -> tuple[uuid.UUID, int]:
    """A completed announcement of ``api``'s organization with one delivery in ``unknown``."""
    await post_people(api, {"external_id": "p1", "name": "P", "email": "p1@example.com"})
    now = dt.datetime.now(dt.UTC)
    async with api.services.db.transaction() as session:
        recipient_id = (
            await session.execute(select(Recipient.id).where(Recipient.org_id == api.org_id))
        ).scalar_one()
        message = Message(
            org_id=api.org_id,
            kind="announcement",
            title="t",
            body="b",
            audience={"all": True},
            channels=["email"],
            routing="first",
            send_at=now,
            state="completed",
        )
        session.add(message)
        await session.flush()
        delivery = Delivery(
            org_id=api.org_id,
            message_id=message.id,
            recipient_id=recipient_id,
            channel="email",
            state="unknown",
            attempt=1,
            send_attempts=1,
            next_attempt_at=now,
            reason="lease expired",
        )
        session.add(delivery)
        await session.flush()
        return message.id, delivery.id


def errors_in(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e.get("log_level") in ("error", "critical") or "exc_info" in e]


@pytest.mark.parametrize(
    "bad_id",
    ["1" * 20, str(MAX_ID + 1), str(MAX_ID), "-1", "0", "abc", "1e3", "%00", " 1"],
)
async def test_an_id_that_cannot_exist_is_a_404_page(api: Api, bad_id: str) -> None:
    victim = await api.other_org("Victim")
    message_id, delivery_id = await unknown_delivery(victim)
    csrf = await signed_in(api, "ops@attacker.example")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        answer = await api.client.post(
            f"/portal/deliveries/{bad_id}/resend", data={"csrf_token": csrf}
        )
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "Not found" in answer.text
    assert errors_in(logs) == []
    # The victim's delivery is untouched.
    shown = body_of(await victim.get(f"/v1/deliveries/{delivery_id}"), 200)
    assert shown["state"] == "unknown"
    assert all(e["detail"] != "resent by an operator" for e in shown["events"])
    assert message_id


async def test_another_organization_s_delivery_cannot_be_resent(api: Api) -> None:
    victim = await api.other_org("Victim")
    message_id, delivery_id = await unknown_delivery(victim)
    csrf = await signed_in(api, "ops@attacker.example")
    answer = await api.client.post(
        f"/portal/deliveries/{delivery_id}/resend", data={"csrf_token": csrf}
    )
    assert answer.status_code == 404
    assert str(message_id) not in answer.text
    shown = body_of(await victim.get(f"/v1/deliveries/{delivery_id}"), 200)
    assert shown["state"] == "unknown"
    assert all(e["detail"] != "resent by an operator" for e in shown["events"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/portal/announcements/not-a-uuid"),
        ("GET", "/portal/announcements/" + "9" * 40),
        ("POST", "/portal/announcements/not-a-uuid/cancel"),
        ("GET", "/portal/recipients/%00"),
        ("GET", "/portal/recipients/" + "x" * 300),
    ],
)
async def test_other_paths_that_name_nothing_are_404_pages(
    api: Api, method: str, path: str
) -> None:
    csrf = await signed_in(api, "ops@example.com")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        answer = await api.client.request(method, path, data={"csrf_token": csrf})
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert errors_in(logs) == []


# --- headers --------------------------------------------------------------------------------


def assert_page_headers(answer: httpx.Response, *, referrer: str) -> None:
    where = f"{answer.request.method} {answer.request.url.path} ({answer.status_code})"
    headers = answer.headers
    assert headers.get("cache-control") == "no-store", where
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") == referrer, where
    policy = {
        part.strip().split(" ", 1)[0]: part.strip().split(" ", 1)[1:]
        for part in headers.get("content-security-policy", "").split(";")
        if part.strip()
    }
    assert policy.get("default-src") in (["'self'"], ["'none'"]), where
    assert policy.get("frame-ancestors") == ["'none'"], where
    assert policy.get("form-action") == ["'self'"], where
    assert policy.get("base-uri") == ["'none'"], where
    assert "unsafe-inline" not in headers["content-security-policy"], where
    assert "script-src" not in policy or policy["script-src"] == ["'self'"], where


async def test_every_portal_page_carries_the_headers(api: Api) -> None:
    # Before signing in: the sign-in page, the redirect to it, an unknown page.
    for path in ("/portal/sign-in", "/portal/announcements", "/portal/nothing-here"):
        assert_page_headers(await api.client.get(path), referrer="same-origin")
    csrf = await signed_in(api, "ops@example.com")
    message_id, _ = await unknown_delivery(api)
    pages = [
        "/portal/",
        "/portal/announcements",
        "/portal/announcements/new",
        f"/portal/announcements/{message_id}",
        f"/portal/announcements/progress?id={message_id}",
        "/portal/announcements/audience?audience=all",
        "/portal/recipients",
        "/portal/recipients/p1",
        "/portal/recipients/import",
        "/portal/announcements/not-a-uuid",
        "/portal/nothing-here",
    ]
    for path in pages:
        answer = await api.client.get(path)
        assert answer.status_code < 500, path
        assert_page_headers(answer, referrer="same-origin")
    refused = await api.client.post("/portal/deliveries/1/resend", data={"csrf_token": "x"})
    assert refused.status_code == 403
    assert_page_headers(refused, referrer="same-origin")
    resent = await api.client.post("/portal/deliveries/1/resend", data={"csrf_token": csrf})
    assert_page_headers(resent, referrer="same-origin")
    # The static files may be cached; they are still never sniffed.
    script = await api.client.get("/portal/static/portal.js")
    assert script.status_code == 200
    assert script.headers["x-content-type-options"] == "nosniff"


async def test_every_page_behind_a_link_carries_the_headers(api: Api) -> None:
    await post_people(api, {"external_id": "zoe", "name": "Zoë", "email": "zoe@example.org"})
    async with api.services.db.read() as session:
        zoe = (
            await session.execute(select(Recipient.id).where(Recipient.external_id == "zoe"))
        ).scalar_one()
    links = PreferenceLinks(api.services.db, api.services.settings.base_url)
    path = httpx.URL(await links.page(api.org_id, zoe)).path
    answers = [
        await api.client.get(path),
        await api.client.get(path + "x"),  # refused: not a valid link
        await api.client.get(f"{path}/unsubscribe"),
        await api.client.post(f"{path}/unsubscribe"),
        await api.client.post(path, data={"check": "forged"}),
        await api.client.get("/v1/unsubscribe/not-a-token"),
    ]
    assert [a.status_code for a in answers] == [200, 404, 200, 200, 403, 404]
    for answer in answers:
        # The link is a credential: no Referer at all, even to this site.
        assert_page_headers(answer, referrer="no-referrer")
    sheet = await api.client.get("/p/static/preferences.css")
    assert sheet.status_code == 200
    assert sheet.headers["x-content-type-options"] == "nosniff"


async def test_the_api_is_not_given_page_headers(api: Api) -> None:
    answer = await api.get("/v1/recipients")
    assert answer.status_code == 200
    assert "content-security-policy" not in answer.headers
