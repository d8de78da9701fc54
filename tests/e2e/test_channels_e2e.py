"""Real channels end to end: sends reach the providers in their wire formats, receipts and
replies come back through signed webhooks, and failures fall back so each person is reached once.
"""

from __future__ import annotations

import functools
from typing import Any

import aiohttp
import pytest

from bulletin.channels import twilio as twilio_wire
from bulletin.channels.accounts import webhook_path
from bulletin.channels.whatsapp import SIGNATURE_HEADER, sign
from bulletin.deliveries.models import Delivery
from bulletin.devservers.twilio import TwilioServer
from bulletin.devservers.whatsapp import (
    DropAfterAccept,
    inbound_payload,
    status_payload,
    webhook_body,
)
from bulletin.orgs.keys import Scope
from conftest import Api, make_settings
from e2e.stack import (
    TW_FROM,
    TW_SID,
    TW_TOKEN,
    WA_NUMBER_ID,
    WA_SECRET,
    WA_VERIFY,
    Stack,
    serve,
)
from support.http import body_of, problem
from support.http_factories import notify, post_people
from support.processes import free_port
from support.settling import settled_notification
from support.waiting import eventually

PHONE = "+27821234567"
ZANELE: dict[str, Any] = {
    "external_id": "zanele",
    "name": "Zanele",
    "email": "zanele@example.org",
    "phone": "+27821234567",
    "attributes": {"site": "Durban"},
}


async def deliveries(stack: Stack, message_id: str) -> list[dict[str, Any]]:
    body = body_of(await stack.api.get(f"/v1/notifications/{message_id}"), 200)
    found: list[dict[str, Any]] = body["deliveries"]
    return found


async def delivery(stack: Stack, delivery_id: int) -> dict[str, Any]:
    found: dict[str, Any] = body_of(await stack.api.get(f"/v1/deliveries/{delivery_id}"), 200)
    return found


def hook_url(stack: Stack, channel: str) -> str:
    """The webhook URL of the organization's own account on ``channel``."""
    return stack.base_url + webhook_path(channel, str(stack.api.org_id))


async def post_whatsapp(
    stack: Stack, payload: dict[str, Any], secret: str | None = WA_SECRET
) -> int:
    body = webhook_body(payload)
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    async with stack.http.post(hook_url(stack, "whatsapp"), data=body, headers=headers) as response:
        return response.status


async def whatsapp_status(stack: Stack, wamid: str, status: str, delivery_id: int) -> int:
    payload = status_payload(WA_NUMBER_ID, wamid, status, PHONE, str(delivery_id))
    return await post_whatsapp(stack, payload)


# --- WhatsApp ------------------------------------------------------------------------------


async def test_whatsapp_outside_the_window_sends_the_template_and_receipts_move_it_forward(
    stack: Stack,
) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(
        stack.api,
        "zanele",
        title="Hi {{ recipient.name }}",
        body="Shift at {{ recipient.attributes.site }}",
        channels=["whatsapp", "email"],
    )
    [sent] = await settled_notification(stack.api, message_id)
    assert (sent["channel"], sent["state"]) == ("whatsapp", "sent")
    [accepted] = stack.whatsapp.accepted
    assert accepted.to == "27821234567"
    assert accepted.body["type"] == "template"
    assert accepted.body["biz_opaque_callback_data"] == str(sent["id"])
    template = accepted.body["template"]
    assert template["name"] == "bulletin_notice"
    parameters = [p["text"] for p in template["components"][0]["parameters"]]
    assert parameters == ["Hi Zanele", "Shift at Durban"]
    assert stack.smtp.received == []

    wamid = accepted.wamid
    assert (await delivery(stack, sent["id"]))["provider_message_id"] == wamid
    # Out of order: read arrives before delivered; then delivered again, twice.
    assert await whatsapp_status(stack, wamid, "read", sent["id"]) == 200
    assert await whatsapp_status(stack, wamid, "delivered", sent["id"]) == 200
    assert await whatsapp_status(stack, wamid, "delivered", sent["id"]) == 200
    assert await whatsapp_status(stack, wamid, "sent", sent["id"]) == 200
    after = await delivery(stack, sent["id"])
    assert after["state"] == "read"
    states = [e["state"] for e in after["events"]]
    assert states.count("read") == 1
    assert "delivered" not in states  # it never moves backwards, so it was never recorded


async def test_whatsapp_webhooks_with_a_bad_or_missing_signature_change_nothing(
    stack: Stack,
) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(stack.api, "zanele", channels=["whatsapp"])
    [sent] = await settled_notification(stack.api, message_id)
    wamid = stack.whatsapp.accepted[0].wamid
    payload = status_payload(WA_NUMBER_ID, wamid, "delivered", PHONE, str(sent["id"]))
    assert await post_whatsapp(stack, payload, secret="not-the-secret") == 401
    assert await post_whatsapp(stack, payload, secret=None) == 401
    async with stack.http.post(
        hook_url(stack, "whatsapp"),
        data=webhook_body(payload),
        headers={SIGNATURE_HEADER: "sha256=zz", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
    assert (await delivery(stack, sent["id"]))["state"] == "sent"
    # A signed body that is not JSON is a 400, not a 500.
    garbage = b"{not json"
    async with stack.http.post(
        hook_url(stack, "whatsapp"),
        data=garbage,
        headers={SIGNATURE_HEADER: sign(WA_SECRET, garbage)},
    ) as response:
        assert response.status == 400


async def test_whatsapp_verification_handshake(stack: Stack) -> None:
    await stack.configure()
    url = hook_url(stack, "whatsapp")
    good = {"hub.mode": "subscribe", "hub.verify_token": WA_VERIFY, "hub.challenge": "1158201444"}
    async with stack.http.get(url, params=good) as response:
        assert response.status == 200
        assert await response.text() == "1158201444"
    async with stack.http.get(url, params={**good, "hub.verify_token": "wrong"}) as response:
        assert response.status == 403
    # The URL without an account is the environment's account only, and there is none here.
    async with stack.http.get(f"{stack.base_url}/v1/webhooks/whatsapp", params=good) as response:
        assert response.status == 403


async def test_an_inbound_message_opens_the_window_for_free_text_and_stop_opts_out(
    stack: Stack,
) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    assert await post_whatsapp(stack, inbound_payload(WA_NUMBER_ID, PHONE, "hello")) == 200
    message_id = await notify(stack.api, "zanele", title="Hi", body="Inside the window")
    [sent] = await settled_notification(stack.api, message_id)
    assert sent["channel"] == "whatsapp"
    accepted = stack.whatsapp.accepted[-1]
    assert accepted.body["type"] == "text"
    assert accepted.body["text"]["body"] == "*Hi*\n\nInside the window"

    assert await post_whatsapp(stack, inbound_payload(WA_NUMBER_ID, PHONE, "STOP")) == 200
    person = body_of(await stack.api.get("/v1/recipients/zanele/preferences"), 200)
    assert person["channels"]["whatsapp"] is False
    second = await notify(stack.api, "zanele", title="Hi", body="After STOP")
    [after] = await settled_notification(stack.api, second)
    assert after["channel"] == "email"
    assert len(stack.whatsapp.accepted) == 1


async def test_an_undeliverable_whatsapp_number_falls_back_to_email_once(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    stack.whatsapp.fail_next(code=131026)
    message_id = await notify(stack.api, "zanele", channels=["whatsapp", "email", "sms"])
    rows = await settled_notification(stack.api, message_id)
    by_channel = {d["channel"]: d["state"] for d in rows}
    assert by_channel == {"whatsapp": "failed", "email": "sent"}
    assert stack.whatsapp.accepted == []
    assert len(stack.smtp.received) == 1
    assert stack.twilio.accepted == []


async def test_a_failed_receipt_after_acceptance_falls_back(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(stack.api, "zanele", channels=["whatsapp", "sms"])
    [sent] = await settled_notification(stack.api, message_id)
    wamid = stack.whatsapp.accepted[0].wamid
    payload = status_payload(WA_NUMBER_ID, wamid, "failed", PHONE, str(sent["id"]))
    assert await post_whatsapp(stack, payload) == 200
    await eventually(lambda: _has_channel(stack, message_id, "sms", "sent"))
    rows = await settled_notification(stack.api, message_id)
    assert {d["channel"]: d["state"] for d in rows} == {"whatsapp": "failed", "sms": "sent"}
    assert len(stack.twilio.accepted) == 1
    # The same failure reported again makes nothing new.
    assert await post_whatsapp(stack, payload) == 200
    assert len(await deliveries(stack, message_id)) == 2


async def _has_channel(stack: Stack, message_id: str, channel: str, state: str) -> bool:
    return any(
        d["channel"] == channel and d["state"] == state for d in await deliveries(stack, message_id)
    )


async def test_a_send_in_doubt_is_not_resent_and_a_receipt_settles_it(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    stack.whatsapp.inject(DropAfterAccept())
    message_id = await notify(stack.api, "zanele", channels=["whatsapp", "email"])
    [doubt] = await settled_notification(stack.api, message_id)
    assert (doubt["channel"], doubt["state"]) == ("whatsapp", "unknown")
    [accepted] = stack.whatsapp.accepted
    assert stack.smtp.received == []  # unknown is not a failure: no fallback, no resend
    assert await whatsapp_status(stack, accepted.wamid, "delivered", doubt["id"]) == 200
    assert (await delivery(stack, doubt["id"]))["state"] == "delivered"
    assert len(stack.whatsapp.accepted) == 1


async def test_no_template_and_a_closed_window_moves_on_without_calling_whatsapp(
    stack: Stack,
) -> None:
    await stack.configure(template=None)
    await post_people(stack.api, ZANELE)
    message_id = await notify(stack.api, "zanele", channels=["whatsapp", "email"])
    rows = await settled_notification(stack.api, message_id)
    assert {d["channel"]: d["state"] for d in rows} == {"whatsapp": "failed", "email": "sent"}
    failed = next(d for d in rows if d["channel"] == "whatsapp")
    assert "24 hours" in failed["reason"]
    assert stack.whatsapp.requests == 0  # error 131047 cannot happen: nothing was asked


async def test_fallback_after_moves_on_when_no_delivery_report_comes(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(
        stack.api, "zanele", channels=["whatsapp", "email"], fallback_after="1s"
    )
    await eventually(lambda: _has_channel(stack, message_id, "email", "sent"))
    rows = await settled_notification(stack.api, message_id)
    assert {d["channel"]: d["state"] for d in rows} == {"whatsapp": "sent", "email": "sent"}
    assert len(stack.smtp.received) == 1


async def test_a_delivery_report_in_time_means_no_fallback(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(
        stack.api, "zanele", channels=["whatsapp", "email"], fallback_after="2s"
    )
    [sent] = await settled_notification(stack.api, message_id)
    wamid = stack.whatsapp.accepted[0].wamid
    assert await whatsapp_status(stack, wamid, "delivered", sent["id"]) == 200
    # A later notification without a report: once its fallback has gone out, the deadline of
    # the first, which is earlier, has been looked at too.
    marker_id = await notify(
        stack.api, "zanele", channels=["whatsapp", "email"], fallback_after="2s"
    )
    await eventually(lambda: _has_channel(stack, marker_id, "email", "sent"))
    rows = await deliveries(stack, message_id)
    assert [(d["channel"], d["state"]) for d in rows] == [("whatsapp", "delivered")]
    [marker_email] = [d for d in await deliveries(stack, marker_id) if d["channel"] == "email"]
    assert [r.message["X-Bulletin-Delivery"] for r in stack.smtp.received] == [
        str(marker_email["id"])
    ]


# --- Twilio SMS ----------------------------------------------------------------------------


async def test_sms_status_callbacks_are_verified_and_move_deliveries_forward(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(
        stack.api, "zanele", title="Gate", body="Closed today", channels=["sms"]
    )
    [sent] = await settled_notification(stack.api, message_id)
    [sms] = stack.twilio.accepted
    assert sms.to == PHONE
    assert sms.from_ == TW_FROM
    assert sms.body == "Gate\nClosed today"
    assert sms.status_callback == f"{hook_url(stack, 'sms')}?delivery={sent['id']}"
    async with stack.api.services.db.read() as session:
        row = await session.get(Delivery, sent["id"])
        assert row is not None
        # The completion recorded the account that accepted it: only its receipts count.
        assert (row.provider, row.provider_account) == ("twilio", str(stack.api.org_id))

    reply = await stack.twilio.send_status(stack.http, sms.sid, "delivered")
    assert reply.status == 200
    assert (await delivery(stack, sent["id"]))["state"] == "delivered"
    assert (await stack.twilio.send_status(stack.http, sms.sid, "sent")).status == 200
    assert (await delivery(stack, sent["id"]))["state"] == "delivered"

    # A forged callback (wrong token) is refused and changes nothing.
    params = {
        "AccountSid": stack.twilio.account_sid,
        "MessageSid": sms.sid,
        "MessageStatus": "failed",
    }
    url = sms.status_callback
    assert url is not None
    forged = twilio_wire.signature("wrong-token", url, params)
    for headers in ({"X-Twilio-Signature": forged}, {}):
        async with stack.http.post(url, data=params, headers=headers) as response:
            assert response.status == 401
    assert (await delivery(stack, sent["id"]))["state"] == "delivered"
    assert twilio_wire.verify_signature(
        TW_TOKEN, url, params, twilio_wire.signature(TW_TOKEN, url, params)
    )


async def test_sms_stop_and_start_replies_change_the_persons_choice(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    url = hook_url(stack, "sms")
    reply = await stack.twilio.send_inbound(stack.http, url, PHONE, TW_FROM, "Stop")
    assert reply.status == 200
    assert "<Response" in reply.body
    person = body_of(await stack.api.get("/v1/recipients/zanele/preferences"), 200)
    assert person["channels"]["sms"] is False
    message_id = await notify(stack.api, "zanele", channels=["sms"])
    [row] = await settled_notification(stack.api, message_id)
    assert row["state"] == "suppressed"
    assert stack.twilio.accepted == []

    await stack.twilio.send_inbound(stack.http, url, PHONE, TW_FROM, "START")
    person = body_of(await stack.api.get("/v1/recipients/zanele/preferences"), 200)
    assert person["channels"]["sms"] is True
    again = await notify(stack.api, "zanele", channels=["sms"])
    [row] = await settled_notification(stack.api, again)
    assert row["state"] == "sent"


async def test_twilio_21610_fails_and_suppresses_the_number(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    stack.twilio.fail_next(1, code=21610, http_status=400)
    first = await notify(stack.api, "zanele", channels=["sms", "email"])
    rows = await settled_notification(stack.api, first)
    assert {d["channel"]: d["state"] for d in rows} == {"sms": "failed", "email": "sent"}
    second = await notify(stack.api, "zanele", channels=["sms"])
    [row] = await settled_notification(stack.api, second)
    assert row["state"] == "suppressed"
    assert "suppression list" in row["reason"]


# --- Email ---------------------------------------------------------------------------------


async def test_email_arrives_with_unsubscribe_headers_and_the_link_works(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(
        stack.api,
        "zanele",
        title="Payslips",
        body="Hello {{ recipient.name }}",
        channels=["email"],
        category="payroll",
        overrides={"email": {"html": "<p>{{ body }}</p>"}},
    )
    [sent] = await settled_notification(stack.api, message_id)
    [mail] = stack.smtp.received
    email = mail.message
    assert email["Subject"] == "Payslips"
    assert email["Message-ID"] == f"<bulletin.{message_id}.{sent['id']}@acme.example>"
    # The stack is served over http: the link is listed, but one-click needs https (RFC 8058).
    assert "List-Unsubscribe-Post" not in email
    link = str(email["List-Unsubscribe"]).strip().strip("<>")
    assert link.startswith(f"{stack.base_url}/p/")
    assert link.endswith("/unsubscribe?category=payroll")
    preferences = link.split("/unsubscribe")[0]
    html = email.get_body(("html",))
    assert html is not None
    assert "<p>Hello Zanele</p>" in html.get_content()
    assert f'<a href="{preferences}">Manage your preferences</a>' in html.get_content()

    async with stack.http.get(link) as page:  # opening the link alone changes nothing
        assert page.status == 200
        assert "payroll" in await page.text()
    person = body_of(await stack.api.get("/v1/recipients/zanele/preferences"), 200)
    assert person["categories"].get("payroll") is not False

    async with stack.http.post(link, data={"List-Unsubscribe": "One-Click"}) as done:
        assert done.status == 200
    person = body_of(await stack.api.get("/v1/recipients/zanele/preferences"), 200)
    assert person["categories"]["payroll"] is False
    tampered = (
        preferences[:-3]
        + ("aaa" if not preferences.endswith("aaa") else "bbb")
        + "/unsubscribe?category=payroll"
    )
    async with stack.http.post(tampered) as refused:
        assert refused.status == 404


# --- Configuration -------------------------------------------------------------------------


async def test_secrets_are_write_only_and_encrypted_at_rest(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    await stack.configure()
    listed = body_of(await stack.api.get("/v1/channels"), 200)
    text = str(listed)
    for secret in ("EAAG-test-access-token", WA_SECRET, WA_VERIFY, TW_TOKEN):
        assert secret not in text
    whatsapp = next(c for c in listed["items"] if c["channel"] == "whatsapp")
    assert whatsapp["source"] == "organization"
    assert whatsapp["secrets_set"] == ["access_token", "app_secret", "verify_token"]

    # A PUT without the secrets keeps them; the version moves on.
    config = {
        "provider": "whatsapp_cloud",
        "phone_number_id": WA_NUMBER_ID,
        "base_url": stack.whatsapp.base_url,
        "rate_per_second": 5,
        "template": {"name": "bulletin_notice"},
    }
    changed = body_of(await stack.api.put("/v1/channels/whatsapp", config, Scope.ADMIN), 200)
    assert changed["secrets_set"] == ["access_token", "app_secret", "verify_token"]
    assert changed["version"] == 2

    from sqlalchemy import text as sql

    async with stack.api.services.db.read() as session:
        stored = (await session.execute(sql("SELECT secrets FROM channel_configs"))).scalars().all()
    sealed = [s for s in stored if s is not None]
    assert len(sealed) == 2  # WhatsApp and Twilio; this SMTP server needs no password
    assert all("EAAG" not in s and TW_TOKEN not in s and WA_SECRET not in s for s in sealed)

    # Sends still work with the kept token.
    await post_people(stack.api, ZANELE)
    message_id = await notify(stack.api, "zanele", channels=["whatsapp"])
    [sent] = await settled_notification(stack.api, message_id)
    assert sent["state"] == "sent"
    logged = capsys.readouterr()
    assert "channels.configured" in logged.out  # the logs were captured...
    for secret in ("EAAG-test-access-token", WA_SECRET, WA_VERIFY, TW_TOKEN):
        assert secret not in logged.out + logged.err  # ...and hold no secret


async def test_channel_configuration_rules(stack: Stack) -> None:
    api = stack.api
    twilio = {
        "provider": "twilio",
        "account_sid": "AC" + "2" * 32,
        "auth_token": "t",
        "from_number": "+14155550100",
    }
    assert problem(await api.put("/v1/channels/sms", twilio, Scope.SEND), 403)
    assert problem(await api.put("/v1/channels/email", twilio, Scope.ADMIN), 422)
    missing = {k: v for k, v in twilio.items() if k != "auth_token"}
    assert problem(await api.put("/v1/channels/sms", missing, Scope.ADMIN), 422)
    assert problem(await api.put("/v1/channels/fax", twilio, Scope.ADMIN), 422)
    created = await api.put("/v1/channels/sms", twilio, Scope.ADMIN)
    assert body_of(created, 201)["source"] == "organization"
    other = await api.other_org()
    theirs = body_of(await other.get("/v1/channels/sms"), 200)
    assert theirs["source"] == "sandbox"
    assert (await api.delete("/v1/channels/sms", Scope.ADMIN)).status_code == 204
    assert body_of(await api.get("/v1/channels/sms"), 200)["source"] == "sandbox"
    assert problem(await api.delete("/v1/channels/sms", Scope.ADMIN), 404)


async def _completed(api: Api, message_id: str) -> bool:
    body = body_of(await api.get(f"/v1/notifications/{message_id}"), 200)
    return bool(body["state"] == "completed")


async def test_a_single_organization_install_configures_providers_by_environment(
    database_url: str,
) -> None:
    """BULLETIN_TWILIO_* settings serve every organization that has no provider of its own,
    and the webhook is verified with the token from the settings."""
    port = free_port()
    async with (
        TwilioServer(account_sid=TW_SID, auth_token=TW_TOKEN) as twilio,
        aiohttp.ClientSession() as http,
    ):
        settings = make_settings(
            database_url,
            public_url=f"http://127.0.0.1:{port}",
            twilio_account_sid=TW_SID,
            twilio_auth_token=TW_TOKEN,
            twilio_from=TW_FROM,
            twilio_base_url=twilio.base_url,
            allow_private_provider_addresses=True,  # the stand-in listens on 127.0.0.1
        )
        async for api, _server in serve(settings, port):
            channels = body_of(await api.get("/v1/channels"), 200)["items"]
            sms = next(c for c in channels if c["channel"] == "sms")
            assert (sms["source"], sms["provider"], sms["secrets_set"]) == (
                "environment",
                "twilio",
                ["auth_token"],
            )
            assert TW_TOKEN not in str(channels)
            await post_people(api, ZANELE)
            message_id = await notify(api, "zanele", channels=["sms"])

            await eventually(functools.partial(_completed, api, message_id))
            [sms_sent] = twilio.accepted
            assert sms_sent.status_callback is not None
            assert sms_sent.status_callback.startswith(
                f"http://127.0.0.1:{port}/v1/webhooks/twilio/default?delivery="
            )
            reply = await twilio.send_status(http, sms_sent.sid, "delivered")
            assert reply.status == 200
            body = body_of(await api.get(f"/v1/notifications/{message_id}"), 200)
            assert body["deliveries"][0]["state"] == "delivered"
