"""The portal's webhook pages as a person uses them: add an endpoint, copy its secret (shown
once), send a test event, disable it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from browser.conftest import LiveBulletin

# A name that never resolves (RFC 2606): the server's sender tries the test event and fails,
# reaching nothing.
URL = "https://hooks.bulletin.invalid/in"
UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea")]
  .filter((el) => el.type !== "hidden" && !el.labels.length && !el.getAttribute("aria-label"))
  .map((el) => el.name || el.id)"""


def admin_api(live: LiveBulletin, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {live.api_key}"}
    return httpx.request(method, live.base_url + path, headers=headers, timeout=10, **kwargs)


def test_an_endpoint_is_added_and_its_secret_is_shown_once(
    page: Page, live: LiveBulletin, screenshots: Path
) -> None:
    page.goto(f"{live.base_url}/portal/sign-in")
    page.get_by_label("Email").fill(live.portal_email)
    page.get_by_label("Password").fill(live.portal_password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Webhooks", exact=True).click()
    expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    expect(page.get_by_text("No webhook endpoints yet")).to_be_visible()
    assert page.evaluate(UNLABELLED) == []

    page.get_by_label("URL").fill(URL)
    page.get_by_label("Description (optional)").fill("Orders <system>")
    page.get_by_label(re.compile("^delivery.sent")).uncheck()
    page.get_by_role("button", name="Add endpoint").click()

    secret_box = page.locator("#webhook-secret")
    expect(secret_box).to_have_text(re.compile(r"^whsec_[A-Za-z0-9+/]{43}=$"))
    secret = secret_box.inner_text()
    expect(page.locator("#webhook-description")).to_have_text("Orders <system>")
    page.screenshot(path=screenshots / "webhook-created.png", full_page=True)
    [listed] = admin_api(live, "GET", "/v1/webhook-endpoints").json()["items"]
    assert listed["url"] == URL
    assert "delivery.sent" not in listed["kinds"]
    assert "delivery.failed" in listed["kinds"]
    assert "secret" not in listed

    # Back on the list, and on the endpoint's page again: the secret is not shown any more.
    page.get_by_role("link", name="All webhook endpoints").click()
    row = page.get_by_role("row").filter(has_text=URL)
    expect(row).to_contain_text("active")
    row.get_by_role("link", name=URL).click()
    expect(page.locator("#webhook-url")).to_have_text(URL)
    expect(page.locator("#webhook-secret")).to_have_count(0)
    assert secret not in page.content()
    assert "whsec_" not in page.content()

    page.get_by_role("button", name="Send a test event").click()
    expect(page.get_by_role("status")).to_contain_text("webhook.test event is on its way")
    deliveries = page.locator("#webhook-deliveries")
    expect(deliveries.get_by_role("row").filter(has_text="webhook.test")).to_have_count(1)

    page.get_by_role("button", name="Disable").click()
    expect(page.locator("#webhook-state")).to_have_text("disabled")
    expect(page.get_by_role("button", name="Send a test event")).to_have_count(0)
    assert admin_api(live, "GET", f"/v1/webhook-endpoints/{listed['id']}").json()["state"] == (
        "disabled"
    )
    page.screenshot(path=screenshots / "webhook.png", full_page=True)
