"""The employer portal through HTTP, on SQLite and PostgreSQL built by the real migrations."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid

import httpx
import pytest
from sqlalchemy import select

from bulletin.deliveries.models import Delivery
from bulletin.messages.models import Message
from bulletin.web.portal import accounts
from conftest import Api
from support.http import body_of
from support.http_factories import notify, person_json, post_announcement, post_people
from support.settling import wait_for_state

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_ONCE = re.compile(r'name="submission_key" value="([^"]+)"')


async def make_user(api: Api, email: str = "ops@example.com") -> str:
    async with api.services.db.transaction() as session:
        await accounts.create_user(session, api.org_id, email, "Ops", PASSWORD)
    return email


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    form = await client.get("/portal/sign-in")
    nonce = _CSRF.search(form.text)
    assert nonce is not None
    return await client.post(
        "/portal/sign-in",
        data={"email": email, "password": password, "csrf_token": nonce.group(1)},
    )


async def signed_in(api: Api, email: str = "ops@example.com") -> str:
    """Sign a new user in on the API's client; returns the session's CSRF token."""
    api.client.cookies.clear()
    await make_user(api, email)
    assert (await sign_in(api.client, email)).status_code == 303
    page = await api.client.get("/portal/announcements/new")
    token = _CSRF.search(page.text)
    assert token is not None
    return token.group(1)


def compose_form(csrf: str, **fields: str | list[str]) -> dict[str, str | list[str]]:
    form: dict[str, str | list[str]] = {
        "csrf_token": csrf,
        "title": "Fire drill",
        "body": "At 10:00 in the car park.",
        "audience": "all",
        "channels": ["email", "sms"],
        "routing": "first",
        "when": "now",
        "action": "send",
    }
    form.update(fields)
    return form


async def test_sign_in_sets_a_strict_session_cookie(api: Api) -> None:
    await make_user(api)
    answer = await sign_in(api.client, "OPS@example.com")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/"
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("bulletin_session=")
    )
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags
    assert "samesite=lax" in flags
    assert "path=/portal" in flags
    assert "max-age=43200" in flags
    assert "secure" not in flags  # the test server's URL is http
    assert PASSWORD not in cookie
    page = await api.client.get("/portal/announcements")
    assert page.status_code == 200
    assert "No announcements yet" in page.text
    # Another site cannot frame the portal to trick a click.
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("email", "password"),
    [("ops@example.com", "wrong password!"), ("nobody@example.com", PASSWORD)],
)
async def test_sign_in_refuses_wrong_credentials(api: Api, email: str, password: str) -> None:
    await make_user(api)
    answer = await sign_in(api.client, email, password)
    assert answer.status_code == 401
    assert "The email or the password is wrong." in answer.text
    assert not any(c.startswith("bulletin_session=") for c in answer.headers.get_list("set-cookie"))
    assert (await api.client.get("/portal/announcements")).status_code == 303


async def test_sign_in_form_needs_its_token(api: Api) -> None:
    await make_user(api)
    answer = await api.client.post(
        "/portal/sign-in", data={"email": "ops@example.com", "password": PASSWORD}
    )
    assert answer.status_code == 403
    assert "text/html" in answer.headers["content-type"]


async def test_pages_send_strangers_to_sign_in(api: Api) -> None:
    answer = await api.client.get("/portal/recipients")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/sign-in?next=/portal/recipients"


POST_ROUTES = [
    "/portal/sign-out",
    "/portal/announcements/new",
    "/portal/announcements/preview",
    "/portal/announcements/{message}/cancel",
    "/portal/deliveries/1/resend",
    "/portal/recipients/import",
]


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_every_post_checks_the_csrf_token_and_origin(api: Api, route: str) -> None:
    csrf = await signed_in(api)
    path = route.format(message=uuid.uuid4())
    for data in ({}, {"csrf_token": "forged"}):
        answer = await api.client.post(path, data=data)
        assert answer.status_code == 403, (path, data, answer.text)
        assert "security token" in answer.text
    foreign = await api.client.post(
        path, data={"csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert "another site" in foreign.text
    # Still signed in: the refusals changed nothing.
    assert (await api.client.get("/portal/announcements")).status_code == 200


async def test_sign_out_ends_the_session(api: Api) -> None:
    csrf = await signed_in(api)
    cookie = api.client.cookies["bulletin_session"]
    answer = await api.client.post("/portal/sign-out", data={"csrf_token": csrf})
    assert answer.status_code == 303
    api.client.cookies.set("bulletin_session", cookie, path="/portal")
    assert (await api.client.get("/portal/announcements")).status_code == 303


async def test_an_organization_sees_only_its_own(api: Api) -> None:
    await post_people(api, person_json(1))
    other = await api.other_org()
    await post_people(other, person_json(9, name="Secret Person"))
    csrf = await signed_in(other, "boss@other.example")
    made = await other.client.post(
        "/portal/announcements/new", data=compose_form(csrf, title="Other news")
    )
    assert made.status_code == 303
    theirs = made.headers["location"]
    await signed_in(api)
    listing = await api.client.get("/portal/announcements")
    assert "Other news" not in listing.text
    assert (await api.client.get(theirs)).status_code == 404
    assert (await api.client.get("/portal/recipients/p9")).status_code == 404
    people = await api.client.get("/portal/recipients")
    assert "Secret Person" not in people.text
    assert "Person 1" in people.text


async def test_compose_now_creates_the_announcement(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2))
    csrf = await signed_in(api)
    answer = await api.client.post(
        "/portal/announcements/new", data=compose_form(csrf, urgent="on")
    )
    assert answer.status_code == 303, answer.text
    message_id = answer.headers["location"].rsplit("/", 1)[1]
    shown = body_of(await api.get(f"/v1/announcements/{message_id}"), 200)
    assert shown["title"] == "Fire drill"
    assert shown["channels"] == ["email", "sms"]
    assert shown["urgent"] is True
    sent_at = dt.datetime.fromisoformat(shown["send_at"])
    assert abs((sent_at - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    detail = await api.client.get(answer.headers["location"])
    assert detail.status_code == 200
    assert "Cancel this announcement" in detail.text


@pytest.mark.parametrize(
    ("zone", "date", "clock", "utc"),
    [
        ("Africa/Johannesburg", "2030-01-15", "09:00", "2030-01-15T07:00:00+00:00"),
        ("America/New_York", "2030-07-01", "09:30", "2030-07-01T13:30:00+00:00"),
        ("Asia/Kolkata", "2030-03-01", "00:15", "2030-02-28T18:45:00+00:00"),
    ],
)
async def test_compose_later_converts_the_local_time_to_utc(
    api: Api, zone: str, date: str, clock: str, utc: str
) -> None:
    await post_people(api, person_json(1))
    csrf = await signed_in(api)
    form = compose_form(csrf, when="later", send_date=date, send_time=clock, timezone=zone)
    answer = await api.client.post("/portal/announcements/new", data=form)
    assert answer.status_code == 303, answer.text
    message_id = answer.headers["location"].rsplit("/", 1)[1]
    shown = body_of(await api.get(f"/v1/announcements/{message_id}"), 200)
    assert dt.datetime.fromisoformat(shown["send_at"]) == dt.datetime.fromisoformat(utc)
    assert shown["state"] == "scheduled"


async def test_compose_rejects_bad_input_with_reasons(api: Api) -> None:
    await post_people(api, person_json(1))
    csrf = await signed_in(api)
    cases = [
        compose_form(csrf, title=""),
        compose_form(csrf, channels=[]),
        compose_form(csrf, when="later", send_date="tomorrow", send_time="9", timezone="UTC"),
        compose_form(
            csrf, when="later", send_date="2030-01-01", send_time="09:00", timezone="Mars/Base"
        ),
        compose_form(csrf, audience="recipients", recipients="p1 ghost"),
        compose_form(csrf, audience="groups", groups="nobody-here"),
    ]
    for form in cases:
        answer = await api.client.post("/portal/announcements/new", data=form)
        assert answer.status_code == 422, (form, answer.text)
        assert "was not sent" in answer.text
    assert body_of(await api.get("/v1/announcements"), 200)["items"] == []


async def test_audience_count(api: Api) -> None:
    await post_people(
        api,
        person_json(1, groups=["kitchen"]),
        person_json(2, groups=["kitchen", "night"]),
        person_json(3, groups=["night"]),
        person_json(4),
    )
    await signed_in(api)

    async def count(**params: str) -> dict[str, object]:
        return body_of(await api.client.get("/portal/announcements/audience", params=params), 200)

    assert (await count(audience="all"))["count"] == 4
    assert (await count(audience="groups", groups="kitchen, night"))["count"] == 3
    assert (await count(audience="groups", groups="night"))["count"] == 2
    named = await count(audience="recipients", recipients="p1, p4\nghost")
    assert named["count"] == 2
    assert named["unknown"] == ["ghost"]
    assert (await count(audience="groups", groups=""))["error"]


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("€" * 80, "GSM-7", 1),
        ("д" * 70, "UCS-2", 1),
        ("д" * 71, "UCS-2", 2),
        ("a" * 69 + "😀", "UCS-2", 2),
    ],
)
async def test_preview_counts_sms_segments(
    api: Api, text: str, encoding: str, segments: int
) -> None:
    csrf = await signed_in(api)
    answer = await api.client.post(
        "/portal/announcements/preview",
        data={"title": "", "body": "ignored", "sms_body": text},
        headers={"X-CSRF-Token": csrf},
    )
    shown = body_of(answer, 200)
    assert shown["sms"]["encoding"] == encoding
    assert shown["sms"]["segments"] == segments
    assert shown["sms"]["text"] == text


async def test_preview_renders_each_channel(api: Api) -> None:
    csrf = await signed_in(api)
    answer = await api.client.post(
        "/portal/announcements/new",
        data=compose_form(
            csrf, title="Hi <b>{{ recipient.name }}</b>", body="Line", action="preview"
        ),
    )
    assert answer.status_code == 200
    assert "*Hi &lt;b&gt;Probe Person&lt;/b&gt;*" in answer.text  # WhatsApp, escaped in the page
    assert "45 characters" not in answer.text
    assert re.search(r"\d+ characters, GSM-7, 1 segment", answer.text)
    assert "srcdoc=" in answer.text


async def test_cancel_a_scheduled_announcement(api: Api) -> None:
    await post_people(api, person_json(1))
    csrf = await signed_in(api)
    form = compose_form(
        csrf, when="later", send_date="2031-05-05", send_time="10:00", timezone="UTC"
    )
    made = await api.client.post("/portal/announcements/new", data=form)
    detail = made.headers["location"]
    answer = await api.client.post(f"{detail}/cancel", data={"csrf_token": csrf})
    assert answer.status_code == 303
    page = await api.client.get(answer.headers["location"])
    assert "Cancelled" in page.text
    message_id = detail.rsplit("/", 1)[1]
    assert body_of(await api.get(f"/v1/announcements/{message_id}"), 200)["state"] == "cancelled"
    again = await api.client.post(f"{detail}/cancel", data={"csrf_token": csrf})
    assert again.status_code == 409
    assert "already cancelled" in again.text


async def test_resend_an_unknown_delivery(api: Api) -> None:
    await post_people(api, person_json(1))
    csrf = await signed_in(api)
    made = await api.client.post("/portal/announcements/new", data=compose_form(csrf))
    message_id = uuid.UUID(made.headers["location"].rsplit("/", 1)[1])
    async with api.services.db.transaction() as session:
        message = (
            await session.execute(select(Message).where(Message.id == message_id))
        ).scalar_one()
        message.state = "completed"
        recipient_id = (
            await session.execute(select(Delivery.recipient_id).limit(1))
        ).scalar_one_or_none()
        from bulletin.recipients.models import Recipient

        recipient_id = (await session.execute(select(Recipient.id))).scalar_one()
        now = dt.datetime.now(dt.UTC)
        delivery = Delivery(
            org_id=api.org_id,
            message_id=message_id,
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
        delivery_id = delivery.id
    detail = await api.client.get(f"/portal/announcements/{message_id}?show=not-received")
    assert f"/portal/deliveries/{delivery_id}/resend" in detail.text
    answer = await api.client.post(
        f"/portal/deliveries/{delivery_id}/resend", data={"csrf_token": csrf}
    )
    assert answer.status_code == 303
    shown = body_of(await api.get(f"/v1/deliveries/{delivery_id}"), 200)
    assert shown["state"] == "pending"
    assert shown["events"][-1]["detail"] == "resent by an operator"
    assert body_of(await api.get(f"/v1/announcements/{message_id}"), 200)["state"] == "sending"
    again = await api.client.post(
        f"/portal/deliveries/{delivery_id}/resend", data={"csrf_token": csrf}
    )
    assert again.status_code == 409
    assert "only an unknown one" in again.text


async def _import(api: Api, csrf: str, text: str) -> httpx.Response:
    return await api.client.post(
        "/portal/recipients/import",
        data={"csrf_token": csrf},
        files={"file": ("people.csv", text.encode(), "text/csv")},
    )


async def test_import_with_a_bad_row_imports_nothing(api: Api) -> None:
    csrf = await signed_in(api)
    text = (
        "external_id,name,email,phone,groups\n"
        "e1,Ann,ann@example.com,,kitchen\n"
        "e2,Bob,not-an-email,,\n"
        "e3,Cy,cy@example.com,12345,night\n"
    )
    answer = await _import(api, csrf, text)
    assert answer.status_code == 422
    assert "Nothing was imported" in answer.text
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td><td>", answer.text)
    assert ("3", "email") in rows
    assert ("4", "phone") in rows
    assert body_of(await api.get("/v1/recipients"), 200)["items"] == []


async def test_a_valid_import_imports_every_row(api: Api) -> None:
    csrf = await signed_in(api)
    text = (
        "external_id,name,email,phone,groups\n"
        "e1,Ann,ann@example.com,,kitchen;night\n"
        "e2,Bob,bob@example.com,+27821234567,\n"
    )
    answer = await _import(api, csrf, text)
    assert answer.status_code == 200, answer.text
    assert "Imported: 2 new, 0 updated." in answer.text
    items = body_of(await api.get("/v1/recipients"), 200)["items"]
    assert {(i["external_id"], tuple(i["groups"])) for i in items} == {
        ("e1", ("kitchen", "night")),
        ("e2", ()),
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Choose a CSV file"),
        ("name\nAnn\n", "external_id"),
        ("external_id,shoe\nx,9\n", "Unknown column"),
    ],
)
async def test_an_unreadable_file_is_a_4xx_with_the_reason(
    api: Api, text: str, reason: str
) -> None:
    csrf = await signed_in(api)
    if text:
        answer = await _import(api, csrf, text)
    else:
        answer = await api.client.post("/portal/recipients/import", data={"csrf_token": csrf})
    assert answer.status_code == 400
    assert reason in answer.text


async def test_recipient_search_and_group_filter(api: Api) -> None:
    await post_people(
        api,
        person_json(1, name="Ann Lee", groups=["kitchen"]),
        person_json(2, name="Bob Ray", phone="+27821234567", groups=["night"]),
        person_json(3, name="Cy 100%", groups=["kitchen"]),
    )
    await signed_in(api)

    async def names(**params: str) -> set[str]:
        page = await api.client.get("/portal/recipients", params=params)
        assert page.status_code == 200
        return set(re.findall(r"<td>((?:Ann|Bob|Cy)[^<]*)</td>", page.text))

    assert await names() == {"Ann Lee", "Bob Ray", "Cy 100%"}
    assert await names(q="ann") == {"Ann Lee"}
    assert await names(q="P2") == {"Bob Ray"}
    assert await names(q="p3@example") == {"Cy 100%"}
    assert await names(q="2782123") == {"Bob Ray"}
    assert await names(q="%") == {"Cy 100%"}
    assert await names(group="kitchen") == {"Ann Lee", "Cy 100%"}
    assert await names(group="kitchen", q="cy") == {"Cy 100%"}
    person_page = await api.client.get("/portal/recipients/p2")
    assert "Bob Ray" in person_page.text
    assert "Nothing has been sent to this person yet." in person_page.text


async def test_unknown_pages_are_html_errors(api: Api) -> None:
    await signed_in(api)
    for path, status in [
        ("/portal/nothing-here", 404),
        (f"/portal/announcements/{uuid.uuid4()}", 404),
        ("/portal/recipients/ghost", 404),
        ("/portal/announcements/not-a-uuid", 404),  # a malformed id names nothing
    ]:
        answer = await api.client.get(path)
        assert answer.status_code == status, path
        assert answer.headers["content-type"].startswith("text/html")
        assert "<h1>" in answer.text


async def test_progress_endpoint(api: Api) -> None:
    await post_people(api, person_json(1))
    csrf = await signed_in(api)
    made = await api.client.post("/portal/announcements/new", data=compose_form(csrf))
    message_id = made.headers["location"].rsplit("/", 1)[1]
    shown = body_of(
        await api.client.get("/portal/announcements/progress", params={"id": message_id}), 200
    )
    assert shown["items"][0]["id"] == message_id
    assert shown["items"][0]["active"] is True
    listing = await api.client.get("/portal/announcements")
    assert f'data-announcement="{message_id}"' in listing.text


async def _submission_key(api: Api) -> str:
    page = await api.client.get("/portal/announcements/new")
    key = _ONCE.search(page.text)
    assert key is not None
    return key.group(1)


async def test_a_compose_form_sent_twice_makes_one_announcement(api: Api) -> None:
    await post_people(api, person_json(1))
    csrf = await signed_in(api)
    key = await _submission_key(api)
    assert key != await _submission_key(api)  # each rendering of the page has its own
    form = compose_form(csrf, submission_key=key)
    first = await api.client.post("/portal/announcements/new", data=form)
    assert first.status_code == 303, first.text
    # Sent again, even after going back and editing: the first announcement is shown.
    edited = {**form, "title": "Fire drill (edited)"}
    for again in (form, edited):
        answer = await api.client.post("/portal/announcements/new", data=again)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith(first.headers["location"] + "?")
        shown = await api.client.get(answer.headers["location"])
        assert "This form was already sent" in shown.text
        assert "<h1>Fire drill</h1>" in shown.text
    # A double click: two requests at once.
    twin = compose_form(csrf, submission_key=await _submission_key(api), title="Twin")
    both = await asyncio.gather(
        *(api.client.post("/portal/announcements/new", data=twin) for _ in range(2))
    )
    assert [a.status_code for a in both] == [303, 303]
    paths = sorted(a.headers["location"].split("?")[0] for a in both)
    assert paths[0] == paths[1]
    titles = sorted(i["title"] for i in body_of(await api.get("/v1/announcements"), 200)["items"])
    assert titles == ["Fire drill", "Twin"]


async def test_a_refused_compose_form_can_be_fixed_and_sent_with_its_key(api: Api) -> None:
    await post_people(api, person_json(1))
    csrf = await signed_in(api)
    key = await _submission_key(api)
    refused = await api.client.post(
        "/portal/announcements/new", data=compose_form(csrf, submission_key=key, title="")
    )
    assert refused.status_code == 422
    assert f'name="submission_key" value="{key}"' in refused.text
    fixed = await api.client.post(
        "/portal/announcements/new", data=compose_form(csrf, submission_key=key)
    )
    assert fixed.status_code == 303
    assert len(body_of(await api.get("/v1/announcements"), 200)["items"]) == 1


async def test_a_person_page_links_only_to_pages_that_exist(live_api: Api) -> None:
    api = live_api
    await post_people(api, person_json(1))
    announcement = await post_announcement(api, title="Everyone hears this")
    notification = await notify(api, "p1", title="Only for you")
    await wait_for_state(api, f"/v1/announcements/{announcement}", "completed")
    await wait_for_state(api, f"/v1/notifications/{notification}", "completed")
    await signed_in(api)
    page = await api.client.get("/portal/recipients/p1")
    assert page.status_code == 200
    assert f'<a href="/portal/announcements/{announcement}">Everyone hears this</a>' in page.text
    assert "Only for you" in page.text
    assert notification not in page.text
    for link in set(re.findall(r'href="(/portal/[^"?]*)"', page.text)):
        assert (await api.client.get(link)).status_code == 200, link
