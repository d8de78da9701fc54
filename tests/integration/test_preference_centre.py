"""The preference centre over HTTP, on both databases: links, the page, the form, unsubscribe,
the organization setting, and the next message honouring what the person chose."""

from __future__ import annotations

import uuid
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bulletin.crypto import sign, signing_key
from bulletin.orgs.keys import Scope
from bulletin.recipients import repository as recipients
from bulletin.recipients.links import PreferenceLinks, base36, preference_token
from conftest import Api
from support.http import body_of, problem, sandbox_of
from support.http_factories import post_announcement, post_people
from support.settling import settled_deliveries

ZOE: dict[str, Any] = {
    "external_id": "zoe",
    "name": "Zoë",
    "email": "zoe@example.org",
    "phone": "+27821234567",
    "timezone": "Africa/Johannesburg",
}
SIPHO: dict[str, Any] = {"external_id": "sipho", "name": "Sipho", "email": "sipho@example.org"}


class Form(HTMLParser):
    """What a person sees in the page's form: boxes, their state, field values, messages."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.checkboxes: dict[tuple[str, str], bool] = {}
        self.values: dict[str, str] = {}
        self.labels: set[str] = set()
        self.selected: str | None = None
        self._in_select = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("type") == "checkbox":
            self.checkboxes[(a["name"] or "", a["value"] or "")] = "checked" in a
            assert a.get("id") in self.labels or a.get("id"), "every box has an id for a label"
        elif tag == "input" and a.get("name"):
            self.values[a["name"] or ""] = a.get("value") or ""
        elif tag == "label":
            self.labels.add(a.get("for") or "")
        elif tag == "select":
            self._in_select = True
        elif tag == "option" and self._in_select and "selected" in a:
            self.selected = a.get("value")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._in_select = False


async def recipient_id(api: Api, external_id: str) -> int:
    async with api.services.db.read() as session:
        found = await recipients.get(session, api.org_id, external_id)
    assert found is not None
    return found.id


async def link_of(api: Api, external_id: str) -> str:
    """The path of the person's preference link, as the engine makes it."""
    links = PreferenceLinks(api.services.db, api.services.settings.base_url)
    url = await links.page(api.org_id, await recipient_id(api, external_id))
    return urlsplit(url).path


async def preferences(api: Api, external_id: str) -> dict[str, Any]:
    return body_of(await api.get(f"/v1/recipients/{external_id}/preferences"), 200)


async def open_form(api: Api, path: str) -> Form:
    page = await api.client.get(path)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    return Form(page.text)


def submission(form: Form, **changes: Any) -> list[tuple[str, str]]:
    """The fields the browser would post for ``form``, with ``changes`` made by the person."""
    ticked = {k for k, on in form.checkboxes.items() if on}
    for (name, value), on in changes.pop("boxes", {}).items():
        (ticked.add if on else ticked.discard)((name, value))
    fields = [("check", form.values["check"])]
    fields += [("category", value) for (name, value) in form.checkboxes if name == "receive"]
    fields += sorted(ticked)
    values = {
        "quiet_start": form.values.get("quiet_start", ""),
        "quiet_end": form.values.get("quiet_end", ""),
        "timezone": form.selected or "",
    } | changes
    fields += list(values.items())
    return fields


async def post_form(
    api: Api, path: str, fields: list[tuple[str, str]], **headers: str
) -> httpx.Response:
    return await api.client.post(
        path,
        content="&".join(f"{k}={httpx.QueryParams({k: v})[k]}" for k, v in fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )


async def announce_payroll(api: Api) -> None:
    """Messages with categories sent to Zoë, so that her page lists their topics (a page lists
    only the topics of messages its person was sent: tests/hostile/test_hostile_leaks.py)."""
    for category in ("payroll", "safety"):
        await settled_deliveries(
            api, await post_announcement(api, {"recipients": ["zoe"]}, category=category)
        )


# --- the link and the page ------------------------------------------------------------------


async def test_the_page_shows_the_current_preferences(live_api: Api) -> None:
    api = live_api
    await post_people(api, ZOE, SIPHO)
    await announce_payroll(api)
    body = {
        "channels": {"sms": False},
        "categories": {"safety": False},
        "quiet_hours": {"start": "21:00", "end": "07:30"},
    }
    body_of(await api.put("/v1/recipients/zoe/preferences", body), 200)

    form = await open_form(api, await link_of(api, "zoe"))

    assert form.checkboxes == {
        ("channel", "email"): True,
        ("channel", "sms"): False,
        ("channel", "whatsapp"): True,
        ("receive", "payroll"): True,
        ("receive", "safety"): False,
    }
    assert form.values["quiet_start"] == "21:00"
    assert form.values["quiet_end"] == "07:30"
    assert form.selected == "Africa/Johannesburg"
    assert {"channel-email", "quiet-start", "quiet-end", "timezone"} <= form.labels


async def test_only_channels_with_an_address_are_offered(api: Api) -> None:
    await post_people(api, SIPHO)
    form = await open_form(api, await link_of(api, "sipho"))
    assert [v for (n, v) in form.checkboxes if n == "channel"] == ["email"]


async def refused(api: Api, path: str, method: str = "GET") -> str:
    response = await api.client.request(method, path)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "This link is not valid" in response.text
    return response.text


async def test_edited_truncated_and_foreign_links_are_refused_alike(api: Api) -> None:
    await post_people(api, ZOE, SIPHO)
    zoe = await link_of(api, "zoe")
    sipho_id = await recipient_id(api, "sipho")
    token = zoe.removeprefix("/p/")
    mac = token.split(".")[1]
    key = await signing_key(api.services.db)

    pages = {
        "edited to another person": await refused(api, f"/p/{base36(sipho_id)}.{mac}"),
        "truncated": await refused(api, zoe[:-1]),
        "mac cut off": await refused(api, zoe.split(".")[0]),
        "another installation": await refused(
            api, "/p/" + preference_token(b"another-key", api.org_id, sipho_id)
        ),
        "another organization": await refused(
            api, "/p/" + preference_token(key, uuid.uuid4(), sipho_id)
        ),
        "nobody": await refused(api, "/p/" + preference_token(key, api.org_id, 10**12)),
        "garbage": await refused(api, "/p/%00%ff" + "x" * 300),
    }
    # One page whatever is wrong: nothing tells a forged link from a missing person.
    assert len(set(pages.values())) == 1
    await refused(api, f"/p/{base36(sipho_id)}.{mac}", "POST")
    await refused(api, f"/p/{base36(sipho_id)}.{mac}/unsubscribe", "POST")
    assert (await preferences(api, "sipho"))["channels"]["email"] is True


async def test_a_deactivated_person_s_link_is_refused(api: Api) -> None:
    await post_people(api, ZOE)
    path = await link_of(api, "zoe")
    assert (await api.delete("/v1/recipients/zoe")).status_code == 204
    await refused(api, path)


# --- saving ---------------------------------------------------------------------------------


async def test_saving_changes_the_preferences_and_confirms(live_api: Api) -> None:
    api = live_api
    await post_people(api, ZOE, SIPHO)
    await announce_payroll(api)
    path = await link_of(api, "zoe")
    form = await open_form(api, path)

    fields = submission(
        form,
        boxes={("channel", "email"): False, ("receive", "payroll"): False},
        quiet_start="22:00",
        quiet_end="06:00",
        timezone="Europe/Berlin",
    )
    saved = await post_form(api, path, fields, Origin="http://bulletin.test")

    assert saved.status_code == 200, saved.text
    assert "Your preferences are saved" in saved.text
    after = Form(saved.text)
    assert after.checkboxes[("channel", "email")] is False
    assert after.checkboxes[("receive", "payroll")] is False
    assert await preferences(api, "zoe") == {
        "channels": {"whatsapp": True, "email": False, "sms": True},
        "categories": {"payroll": False, "safety": True},
        "quiet_hours": {"start": "22:00", "end": "06:00"},
    }
    person = body_of(await api.get("/v1/recipients/zoe"), 200)
    assert person["timezone"] == "Europe/Berlin"

    # Emptying both times removes the quiet hours.
    cleared = await post_form(api, path, submission(after, quiet_start="", quiet_end=""))
    assert cleared.status_code == 200, cleared.text
    assert (await preferences(api, "zoe"))["quiet_hours"] is None


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"quiet_start": "25:00"}, "is not a time of day"),
        ({"quiet_start": "22:00", "quiet_end": "22:00"}, "different start and end"),
        ({"quiet_start": "22:00"}, "is not a time of day"),
        ({"timezone": "Mars/Olympus"}, "is not an IANA time zone"),
        ({"boxes": {("channel", "fax"): True}}, "fax"),
        ({"boxes": {("receive", "Not A Category!"): True}}, "is not a category"),
    ],
)
async def test_bad_input_gives_a_4xx_page_and_changes_nothing(
    api: Api, changes: dict[str, Any], says: str
) -> None:
    await post_people(api, ZOE)
    path = await link_of(api, "zoe")
    before = await preferences(api, "zoe")
    fields = submission(await open_form(api, path), **changes)
    # The person also unticked email: nothing of it may be saved.
    fields.remove(("channel", "email"))

    response = await post_form(api, path, fields)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Nothing was saved" in response.text
    assert says in response.text
    assert await preferences(api, "zoe") == before


async def test_a_form_without_its_check_or_from_another_site_is_refused(api: Api) -> None:
    await post_people(api, ZOE)
    path = await link_of(api, "zoe")
    form = await open_form(api, path)
    fields = submission(form, boxes={("channel", "email"): False})
    other = await link_of(api, "zoe")  # same person: the check is bound to the link

    without = [f for f in fields if f[0] != "check"]
    assert (await post_form(api, path, without)).status_code == 403
    wrong = [("check", "A" * 22), *without]
    assert (await post_form(api, path, wrong)).status_code == 403
    cross = await post_form(api, other, fields, Origin="https://evil.example")
    assert cross.status_code == 403
    assert "did not come from this page" in cross.text
    assert (await preferences(api, "zoe"))["channels"]["email"] is True


# --- unsubscribe ----------------------------------------------------------------------------


async def test_one_click_unsubscribe_opts_out_of_the_category_or_of_email(api: Api) -> None:
    await post_people(api, ZOE)
    path = await link_of(api, "zoe")

    page = await api.client.get(f"{path}/unsubscribe?category=payroll")
    assert page.status_code == 200
    assert "payroll" in page.text
    assert "<form" in page.text
    assert (await preferences(api, "zoe"))["categories"] == {}  # opening changed nothing

    done = await api.client.post(
        f"{path}/unsubscribe?category=payroll", data={"List-Unsubscribe": "One-Click"}
    )
    assert done.status_code == 200
    assert "no longer receive messages about payroll" in done.text
    assert (await preferences(api, "zoe"))["categories"] == {"payroll": False}
    assert (await preferences(api, "zoe"))["channels"]["email"] is True

    done = await api.client.post(f"{path}/unsubscribe", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert (await preferences(api, "zoe"))["channels"]["email"] is False
    bad_category = await api.client.post(f"{path}/unsubscribe?category=Not%20One")
    assert bad_category.status_code == 404


async def test_unsubscribe_links_of_earlier_emails_still_work(live_api: Api) -> None:
    api = live_api
    await post_people(api, ZOE)
    message_id = await post_announcement(api, {"recipients": ["zoe"]}, category="payroll")
    [delivery] = await settled_deliveries(api, message_id)
    delivery_id = delivery["id"]
    key = await signing_key(api.services.db)
    path = f"/v1/unsubscribe/{sign(key, str(delivery_id))}"

    assert (await api.client.get(path)).status_code == 200
    assert (await preferences(api, "zoe"))["categories"] == {}
    assert (await api.client.post(path)).status_code == 200
    assert (await preferences(api, "zoe"))["categories"] == {"payroll": False}
    assert (await api.client.post(path[:-2])).status_code == 404


async def test_the_stylesheet_is_served(api: Api) -> None:
    response = await api.client.get("/p/static/preferences.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")


# --- the organization setting ---------------------------------------------------------------


async def test_the_organization_setting_is_read_and_changed_by_admins(api: Api) -> None:
    got = body_of(await api.get("/v1/organization", Scope.ADMIN), 200)
    assert got["id"] == str(api.org_id)
    assert got["preference_links_in_texts"] is False

    changed = await api.client.patch(
        "/v1/organization",
        json={"preference_links_in_texts": True},
        headers=api.headers(Scope.ADMIN),
    )
    assert body_of(changed, 200)["preference_links_in_texts"] is True
    assert body_of(changed, 200)["name"] == got["name"]
    again = body_of(await api.get("/v1/organization", Scope.ADMIN), 200)
    assert again["preference_links_in_texts"] is True

    problem(await api.get("/v1/organization", Scope.SEND), 403)
    problem(await api.client.get("/v1/organization"), 401)
    forbidden = await api.client.patch(
        "/v1/organization", json={"name": "X"}, headers=api.headers(Scope.SEND)
    )
    problem(forbidden, 403)
    for bad in ({"preference_links_in_texts": "sometimes"}, {"colour": "red"}, {"name": ""}):
        response = await api.client.patch(
            "/v1/organization", json=bad, headers=api.headers(Scope.ADMIN)
        )
        problem(response, 422)
    other = await api.other_org()
    theirs = body_of(await other.get("/v1/organization", Scope.ADMIN), 200)
    assert theirs["preference_links_in_texts"] is False


# --- the next message honours the choices ---------------------------------------------------


async def test_saved_choices_apply_to_the_next_announcement(live_api: Api) -> None:
    api = live_api
    await post_people(api, ZOE)
    first = await post_announcement(api, channels=["email", "sms"], category="payroll")
    await settled_deliveries(api, first)
    [email] = await sandbox_of(api, first)
    assert email["channel"] == "email"
    link = email["preference_url"]
    assert link.startswith(f"{api.services.settings.base_url}/p/")
    path = urlsplit(link).path

    form = await open_form(api, path)
    saved = await post_form(api, path, submission(form, boxes={("channel", "email"): False}))
    assert "Your preferences are saved" in saved.text

    second = await post_announcement(api, channels=["email", "sms"])
    [delivery] = await settled_deliveries(api, second)
    assert (delivery["channel"], delivery["state"]) == ("sms", "sent")
    [sms] = await sandbox_of(api, second)
    assert sms["channel"] == "sms"
    assert "/p/" not in sms["body"]  # the organization has not asked for links in texts

    form = await open_form(api, path)
    assert ("receive", "payroll") in form.checkboxes
    await post_form(api, path, submission(form, boxes={("receive", "payroll"): False}))
    third = await post_announcement(api, channels=["email", "sms"], category="payroll")
    [delivery] = await settled_deliveries(api, third)
    assert delivery["state"] == "suppressed"
    assert "payroll" in delivery["reason"]
    assert await sandbox_of(api, third) == []


async def test_texts_carry_the_link_only_when_the_organization_enables_it(
    live_api: Api,
) -> None:
    api = live_api
    other = await api.other_org()
    for org in (api, other):
        await post_people(org, ZOE)
    enabled = await api.client.patch(
        "/v1/organization",
        json={"preference_links_in_texts": True},
        headers=api.headers(Scope.ADMIN),
    )
    body_of(enabled, 200)

    on = await post_announcement(api, channels=["sms"], title="Gate", body="Closed")
    off = await post_announcement(other, channels=["sms"], title="Gate", body="Closed")
    await settled_deliveries(api, on)
    await settled_deliveries(other, off)
    [with_link] = await sandbox_of(api, on)
    [without] = await sandbox_of(other, off)
    path = urlsplit(with_link["preference_url"]).path
    assert with_link["body"].endswith(f"\n\nPreferences: {with_link['preference_url']}")
    assert without["preference_url"] is None
    assert "/p/" not in without["body"]
    assert (await api.client.get(path)).status_code == 200


async def test_deliveries_name_the_person_s_link_not_the_delivery(live_api: Api) -> None:
    """The link is per person: two messages to one person carry the same link."""
    api = live_api
    await post_people(api, ZOE)
    links = set()
    for _ in range(2):
        message_id = await post_announcement(api, channels=["email"])
        await settled_deliveries(api, message_id)
        links |= {row["preference_url"] for row in await sandbox_of(api, message_id)}
    assert len(links) == 1
