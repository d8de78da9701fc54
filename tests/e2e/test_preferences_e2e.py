"""Preference links in real wire formats: an email through SMTP, an SMS through Twilio's API,
WhatsApp free text and templates through the Cloud API, with Bulletin served over HTTP."""

from __future__ import annotations

from bulletin.devservers.whatsapp import inbound_payload
from bulletin.orgs.keys import Scope
from e2e.stack import WA_NUMBER_ID, Stack
from e2e.test_channels_e2e import PHONE, ZANELE, post_whatsapp
from support.http import body_of
from support.http_factories import notify, post_people
from support.settling import settled_notification


async def enable_text_links(stack: Stack) -> None:
    response = await stack.api.client.patch(
        "/v1/organization",
        json={"preference_links_in_texts": True},
        headers=stack.api.headers(Scope.ADMIN),
    )
    assert body_of(response, 200)["preference_links_in_texts"] is True


def split_link(text: str) -> tuple[str, str]:
    """A text's own content, and the preference link appended to it (empty if none)."""
    content, _, link = text.rpartition("\n\nPreferences: ")
    return content, link


async def test_an_email_carries_the_link_in_its_footer_and_one_click_headers(
    stack: Stack,
) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(
        stack.api, "zanele", title="Canteen", body="Closed", channels=["email"]
    )
    await settled_notification(stack.api, message_id)
    [mail] = stack.smtp.received
    email = mail.message

    # The stack is served over http: the link is listed, but one-click needs https (RFC 8058).
    assert "List-Unsubscribe-Post" not in email
    one_click = str(email["List-Unsubscribe"]).strip().strip("<>")
    assert one_click.startswith(f"{stack.base_url}/p/")
    assert one_click.endswith("/unsubscribe")  # no category: it unsubscribes from email
    page = one_click.removesuffix("/unsubscribe")
    html = email.get_body(("html",))
    text = email.get_body(("plain",))
    assert html is not None
    assert text is not None
    assert f'<a href="{page}">Manage your preferences</a>' in html.get_content()
    assert f'<a href="{one_click}">Unsubscribe</a>' in html.get_content()
    assert f"Manage your preferences: {page}" in text.get_content()

    async with stack.http.get(page) as opened:
        assert opened.status == 200
        assert "Your message preferences" in await opened.text()
    async with stack.http.post(one_click, data={"List-Unsubscribe": "One-Click"}) as done:
        assert done.status == 200
    person = body_of(await stack.api.get("/v1/recipients/zanele/preferences"), 200)
    assert person["channels"]["email"] is False


async def test_texts_carry_no_link_unless_the_organization_enables_it(stack: Stack) -> None:
    await stack.configure()
    await post_people(stack.api, ZANELE)
    message_id = await notify(stack.api, "zanele", title="Gate", body="Closed", channels=["sms"])
    await settled_notification(stack.api, message_id)
    [sms] = stack.twilio.accepted
    assert sms.body == "Gate\nClosed"


async def test_an_sms_carries_the_short_link_when_enabled(stack: Stack) -> None:
    await stack.configure()
    await enable_text_links(stack)
    await post_people(stack.api, ZANELE)
    message_id = await notify(stack.api, "zanele", title="Gate", body="Closed", channels=["sms"])
    await settled_notification(stack.api, message_id)
    [sms] = stack.twilio.accepted

    text, link = split_link(sms.body)
    assert text == "Gate\nClosed"
    assert link.startswith(f"{stack.base_url}/p/")
    assert len(link) - len(stack.base_url) <= 3 + 30  # /p/ and the token
    async with stack.http.get(link) as opened:
        assert opened.status == 200


async def test_whatsapp_free_text_carries_the_link_and_a_template_does_not(stack: Stack) -> None:
    await stack.configure()
    await enable_text_links(stack)
    await post_people(stack.api, ZANELE)

    # The window is closed: an approved template goes, its parameters exactly as configured.
    template_id = await notify(stack.api, "zanele", title="Hi", body="Shift", channels=["whatsapp"])
    await settled_notification(stack.api, template_id)
    [template] = stack.whatsapp.accepted
    assert template.body["type"] == "template"
    parameters = [p["text"] for p in template.body["template"]["components"][0]["parameters"]]
    assert parameters == ["Hi", "Shift"]

    assert await post_whatsapp(stack, inbound_payload(WA_NUMBER_ID, PHONE, "hello")) == 200
    text_id = await notify(stack.api, "zanele", title="Hi", body="Inside", channels=["whatsapp"])
    await settled_notification(stack.api, text_id)
    free = stack.whatsapp.accepted[-1]
    assert free.body["type"] == "text"
    body, link = split_link(free.body["text"]["body"])
    assert body == "*Hi*\n\nInside"
    assert link.startswith(f"{stack.base_url}/p/")
