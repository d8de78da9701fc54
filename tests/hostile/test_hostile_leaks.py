"""Issue 12, finding 7: what one organization, or a ``read`` key, could learn that it must not.

Two organizations on one installation, on SQLite and PostgreSQL through the real migrations:

* the installation's own (environment) provider accounts are shown to no organization: their
  settings named the account a forged webhook needs (finding 1);
* a person's preference page names only the topics of messages that person was sent, and its
  form cannot store others;
* a ``read`` key never sees a person's preference link (the link is that person's credential).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bulletin.app import create_app
from bulletin.crypto import generate_key
from bulletin.orgs.keys import Scope
from bulletin.recipients import repository as recipients
from bulletin.recipients.links import PreferenceLinks
from bulletin.sandbox.schemas import redact_preference_links
from conftest import Api, make_settings
from support.http import body_of, get_deliveries
from support.http_factories import post_announcement, post_people
from support.settling import settled_deliveries

# The environment's accounts: every value here identifies them, and none may reach a tenant.
ENV_WHATSAPP_NUMBER_ID = "109876543210987"
ENV_TWILIO_SID = "AC" + "7e" * 16
ENV_TWILIO_FROM = "+27215550123"
ENV_SMTP_HOST = "relay.internal.example"
ENV_SMTP_USER = "bulletin-relay-user"
ENV_SMTP_FROM = "announcements@installation.example"
ENV_WHATSAPP_BASE = "https://graph.internal.example"
ENV_TWILIO_BASE = "https://twilio.internal.example"
ENV_VALUES = (
    ENV_WHATSAPP_NUMBER_ID,
    ENV_TWILIO_SID,
    ENV_TWILIO_FROM,
    ENV_SMTP_HOST,
    ENV_SMTP_USER,
    ENV_SMTP_FROM,
    ENV_WHATSAPP_BASE,
    ENV_TWILIO_BASE,
    "graph.internal",
    "twilio.internal",
)
ORG_A_NUMBER_ID = "200000000000001"
PUBLIC_URL = "https://bulletin.example"


@pytest.fixture
async def env_api(database_url: str) -> AsyncIterator[Api]:
    """The API of an installation with its own WhatsApp, Twilio and SMTP accounts."""
    settings = make_settings(
        database_url,
        public_url=PUBLIC_URL,
        secret_key=generate_key(),
        whatsapp_phone_number_id=ENV_WHATSAPP_NUMBER_ID,
        whatsapp_access_token="env-access-token",
        whatsapp_app_secret="env-app-secret",
        whatsapp_base_url=ENV_WHATSAPP_BASE,
        twilio_account_sid=ENV_TWILIO_SID,
        twilio_auth_token="env-auth-token",
        twilio_from=ENV_TWILIO_FROM,
        twilio_base_url=ENV_TWILIO_BASE,
        smtp_host=ENV_SMTP_HOST,
        smtp_username=ENV_SMTP_USER,
        smtp_password="env-smtp-password",
        smtp_from=ENV_SMTP_FROM,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as c:
            api = Api(c, app.state.services)
            await api.new_org("A")
            yield api


def _environment_free(text: str) -> list[str]:
    return [value for value in ENV_VALUES if value in text]


async def test_no_organization_sees_the_environment_accounts(env_api: Api) -> None:
    a = env_api
    b = await a.other_org("B")
    own = {
        "provider": "whatsapp_cloud",
        "phone_number_id": ORG_A_NUMBER_ID,
        "access_token": "a-access-token",
        "app_secret": "a-app-secret",
    }
    body_of(await a.put("/v1/channels/whatsapp", own, Scope.ADMIN), 201)

    for scope in Scope:
        listed = await b.get("/v1/channels", scope)
        items = body_of(listed, 200)["items"]
        assert _environment_free(listed.text) == [], listed.text
        assert {(c["channel"], c["source"], c["provider"]) for c in items} == {
            ("whatsapp", "environment", "whatsapp_cloud"),
            ("sms", "environment", "twilio"),
            ("email", "environment", "smtp"),
        }
        assert all(c["settings"] == {} and c["webhook_url"] is None for c in items)
        for channel in ("whatsapp", "sms", "email"):
            one = await b.get(f"/v1/channels/{channel}", scope)
            assert body_of(one, 200)["source"] == "environment"
            assert _environment_free(one.text) == [], one.text

    # A's own account shows its own settings and where its webhooks go; still nothing of the
    # environment's accounts on the channels A leaves to them.
    mine = await a.get("/v1/channels")
    by_channel = {c["channel"]: c for c in body_of(mine, 200)["items"]}
    assert _environment_free(mine.text) == [], mine.text
    whatsapp = by_channel["whatsapp"]
    assert whatsapp["source"] == "organization"
    assert whatsapp["settings"]["phone_number_id"] == ORG_A_NUMBER_ID
    assert whatsapp["webhook_url"] == f"{PUBLIC_URL}/v1/webhooks/whatsapp/{a.org_id}"
    assert by_channel["email"]["webhook_url"] is None
    assert "a-access-token" not in mine.text
    assert "a-app-secret" not in mine.text
    # B sees nothing of A's account either.
    theirs = await b.get("/v1/channels/whatsapp")
    assert ORG_A_NUMBER_ID not in theirs.text


async def test_a_twilio_account_of_the_organization_shows_its_webhook(env_api: Api) -> None:
    a = env_api
    own = {
        "provider": "twilio",
        "account_sid": "AC" + "1f" * 16,
        "auth_token": "a-auth-token",
        "from_number": "+27215550999",
    }
    put = await a.put("/v1/channels/sms", own, Scope.ADMIN)
    assert body_of(put, 201)["webhook_url"] == f"{PUBLIC_URL}/v1/webhooks/twilio/{a.org_id}"
    got = body_of(await a.get("/v1/channels/sms"), 200)
    assert got["webhook_url"] == f"{PUBLIC_URL}/v1/webhooks/twilio/{a.org_id}"
    assert got["settings"]["account_sid"] == own["account_sid"]


# --- the preference page --------------------------------------------------------------------


ZOE: dict[str, Any] = {"external_id": "zoe", "name": "Zoë", "email": "zoe@example.org"}
SIPHO: dict[str, Any] = {"external_id": "sipho", "name": "Sipho", "email": "sipho@example.org"}


async def recipient_id(api: Api, external_id: str) -> int:
    async with api.services.db.read() as session:
        found = await recipients.get(session, api.org_id, external_id)
    assert found is not None
    return found.id


async def link_of(api: Api, external_id: str) -> str:
    links = PreferenceLinks(api.services.db, api.services.settings.base_url)
    return await links.page(api.org_id, await recipient_id(api, external_id))


async def stored_categories(api: Api, external_id: str) -> dict[str, bool]:
    body = body_of(await api.get(f"/v1/recipients/{external_id}/preferences"), 200)
    categories: dict[str, bool] = body["categories"]
    return categories


async def test_a_preference_page_names_only_topics_its_person_was_sent(live_api: Api) -> None:
    a = live_api
    b = await a.other_org("B")
    await post_people(a, ZOE, SIPHO)
    await post_people(b, ZOE)
    for org, to, category in (
        (a, "zoe", "payroll"),
        (a, "sipho", "confidential-layoffs"),  # A's, but never sent to Zoë
        (a, "zoe", None),
        (b, "zoe", "b-only-topic"),  # another organization's, to its own Zoë
    ):
        extra = {"category": category} if category else {}
        await settled_deliveries(org, await post_announcement(org, {"recipients": [to]}, **extra))
    body_of(await a.put("/v1/recipients/zoe/preferences", {"categories": {"canteen": False}}), 200)

    path = urlsplit(await link_of(a, "zoe")).path
    page = await a.client.get(path)
    assert page.status_code == 200, page.text
    assert 'value="payroll"' in page.text
    assert 'value="canteen"' in page.text  # a stored choice stays visible and changeable
    assert "confidential-layoffs" not in page.text
    assert "b-only-topic" not in page.text

    # A crafted form cannot store a topic the page did not offer; the rest of it is saved.
    check = page.text.split('name="check" value="', 1)[1].split('"', 1)[0]
    fields = [
        ("check", check),
        ("channel", "email"),
        ("category", "payroll"),
        ("category", "confidential-layoffs"),
        ("receive", "confidential-layoffs"),
        ("receive", "never-sent-topic"),
    ]
    saved = await a.client.post(
        path,
        content="&".join(f"{k}={httpx.QueryParams({k: v})[k]}" for k, v in fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert saved.status_code == 200, saved.text
    assert await stored_categories(a, "zoe") == {"payroll": False, "canteen": False}
    assert "confidential-layoffs" not in saved.text
    assert "never-sent-topic" not in saved.text
    # The other people's choices are untouched.
    assert await stored_categories(a, "sipho") == {}
    assert await stored_categories(b, "zoe") == {}


# --- a read key and preference links --------------------------------------------------------


async def test_a_read_key_never_sees_a_preference_link(live_api: Api) -> None:
    a = live_api
    b = await a.other_org("B")
    zoe = {**ZOE, "phone": "+27821234567"}
    await post_people(a, zoe)
    await post_people(b, zoe)
    enabled = await a.client.patch(
        "/v1/organization",
        json={"preference_links_in_texts": True},
        headers=a.headers(Scope.ADMIN),
    )
    body_of(enabled, 200)
    email = await post_announcement(a, channels=["email"], category="payroll")
    sms = await post_announcement(a, channels=["sms"], title="Gate", body="Closed")
    theirs = await post_announcement(b, channels=["email"])
    for org, message in ((a, email), (a, sms), (b, theirs)):
        await settled_deliveries(org, message)
    link = await link_of(a, "zoe")
    token = link.rsplit("/", 1)[1]
    assert len(token) > 16

    # What a read key can read: the sandbox, and every read route about these messages.
    read_routes = [
        "/v1/sandbox/messages",
        f"/v1/sandbox/messages?message_id={email}",
        f"/v1/announcements/{email}",
        f"/v1/announcements/{email}/deliveries",
        f"/v1/announcements/{sms}/deliveries",
        "/v1/announcements",
        "/v1/recipients/zoe",
        "/v1/recipients/zoe/preferences",
    ]
    for route in read_routes:
        answer = await a.get(route, Scope.READ)
        assert answer.status_code == 200, (route, answer.text)
        assert token not in answer.text, route
    for delivery in await get_deliveries(a, email) + await get_deliveries(a, sms):
        detail = await a.get(f"/v1/deliveries/{delivery['id']}", Scope.READ)
        assert detail.status_code == 200, detail.text
        assert token not in detail.text

    listed = body_of(await a.get("/v1/sandbox/messages", Scope.READ), 200)["items"]
    assert {m["channel"] for m in listed} == {"email", "sms"}
    assert all(m["preference_url"] is None for m in listed)
    [text] = [m for m in listed if m["channel"] == "sms"]
    base = a.services.settings.base_url
    assert text["body"] == f"Closed\n\nPreferences: {base}/p/[redacted]"

    # The organization's operators (send and admin keys) see the links, as an inbox would.
    for scope in (Scope.SEND, Scope.ADMIN):
        seen = body_of(await a.get("/v1/sandbox/messages", scope), 200)["items"]
        assert {m["preference_url"] for m in seen} == {link}
        [text] = [m for m in seen if m["channel"] == "sms"]
        assert text["body"] == f"Closed\n\nPreferences: {link}"
    # Nor does another organization's key of any scope see A's person's link.
    for scope in Scope:
        assert token not in (await b.get("/v1/sandbox/messages", scope)).text


def test_the_redaction_leaves_other_text_alone() -> None:
    text = (
        "See https://b.example/p/1a.AbCdEfGhIjKlMnOp and "
        "<https://b.example/p/1a.AbCdEfGhIjKlMnOp/unsubscribe?category=x>; map.png stays."
    )
    assert redact_preference_links(text) == (
        "See https://b.example/p/[redacted] and "
        "<https://b.example/p/[redacted]/unsubscribe?category=x>; map.png stays."
    )
    assert redact_preference_links("no link: /portal/x") == "no link: /portal/x"
