"""The preference centre in a real browser: a person follows the link from a message, changes
their choices with the keyboard, and the next announcement honours them; a forged link is
refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from browser.conftest import LiveBulletin
from support.waiting import wait_until

ZOE = {
    "name": "Zoë",
    "email": "zoe@example.org",
    "phone": "+27821234567",
    "timezone": "Africa/Johannesburg",
}


def client(live: LiveBulletin) -> httpx.Client:
    return httpx.Client(
        base_url=live.base_url, headers={"Authorization": f"Bearer {live.api_key}"}, timeout=10
    )


def announce(api: httpx.Client, **fields: Any) -> str:
    payload = {"title": "Hello", "body": "Body", "audience": {"all": True}, **fields}
    response = api.post("/v1/announcements", json=payload)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def settled(api: httpx.Client, message_id: str) -> list[dict[str, Any]]:
    """The deliveries of an announcement once it is completed."""
    path = f"/v1/announcements/{message_id}"
    wait_until(lambda: api.get(path).json()["state"] == "completed", timeout=20)
    deliveries: list[dict[str, Any]] = api.get(f"/v1/announcements/{message_id}/deliveries").json()[
        "items"
    ]
    return deliveries


def sandbox(api: httpx.Client, message_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(
        "/v1/sandbox/messages", params={"message_id": message_id}
    ).json()["items"]
    return items


def forged(link: str) -> str:
    """The link with one character of its MAC changed."""
    changed = "A" if link[-1] != "A" else "B"
    return link[:-1] + changed


def test_a_person_changes_their_preferences_and_the_next_announcement_honours_them(
    live: LiveBulletin, page: Page, screenshots: Path
) -> None:
    with client(live) as api:
        assert api.put("/v1/recipients/zoe", json=ZOE).status_code == 201
        first = announce(api, channels=["email", "sms"], category="payroll")
        [delivery] = settled(api, first)
        assert delivery["channel"] == "email"
        [sent] = sandbox(api, first)
        link = sent["preference_url"]
        assert link.startswith(f"{live.base_url}/p/")

        page.goto(link)
        expect(page.get_by_role("heading", name="Your message preferences")).to_be_visible()
        email = page.get_by_label("Email", exact=True)
        payroll = page.get_by_label("payroll", exact=True)
        expect(email).to_be_checked()
        expect(page.get_by_label("SMS (text messages)")).to_be_checked()
        expect(payroll).to_be_checked()
        expect(page.get_by_label("Your time zone")).to_have_value("Africa/Johannesburg")
        page.screenshot(path=str(screenshots / "preferences-page.png"), full_page=True)

        # With the keyboard only: space toggles a box, typing fills a field, Enter submits.
        email.focus()
        page.keyboard.press("Space")
        payroll.focus()
        page.keyboard.press("Space")
        page.get_by_label("From").fill("22:00")
        page.get_by_label("Until").fill("06:30")
        page.get_by_label("Your time zone").select_option("Europe/Berlin")
        page.get_by_role("button", name="Save preferences").focus()
        page.keyboard.press("Enter")

        expect(page.get_by_role("status")).to_contain_text("Your preferences are saved")
        expect(page.get_by_label("Email", exact=True)).not_to_be_checked()
        expect(page.get_by_label("payroll", exact=True)).not_to_be_checked()
        page.screenshot(path=str(screenshots / "preferences-saved.png"), full_page=True)

        preferences = api.get("/v1/recipients/zoe/preferences").json()
        assert preferences["channels"]["email"] is False
        assert preferences["categories"]["payroll"] is False
        assert preferences["quiet_hours"] == {"start": "22:00", "end": "06:30"}

        # Urgent, so that the quiet hours just chosen do not hold it back whatever the time.
        second = announce(api, channels=["email", "sms"], urgent=True)
        [delivery] = settled(api, second)
        assert (delivery["channel"], delivery["state"]) == ("sms", "sent")
        third = announce(api, channels=["email", "sms"], category="payroll", urgent=True)
        [delivery] = settled(api, third)
        assert delivery["state"] == "suppressed"
        assert sandbox(api, third) == []


def test_a_forged_link_is_refused(live: LiveBulletin, page: Page, screenshots: Path) -> None:
    with client(live) as api:
        assert api.put("/v1/recipients/zoe", json=ZOE).status_code == 201
        message_id = announce(api, channels=["email"])
        settled(api, message_id)
        [sent] = sandbox(api, message_id)

    response = page.goto(forged(sent["preference_url"]))
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("heading", name="Link not valid")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("This link is not valid")
    expect(page.locator("form")).to_have_count(0)
    page.screenshot(path=str(screenshots / "preferences-refused.png"), full_page=True)
