"""The portal as a person uses it: signing in, announcing, cancelling and importing people."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from browser.conftest import LiveBulletin

#: The page's script polls every second; deliveries to the sandbox take well under this.
PROGRESS_TIMEOUT_MS = 30_000
ZONE = "Asia/Kolkata"  # UTC+05:30: a zone whose offset is not whole hours


def api(live: LiveBulletin, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A call to the REST API with the organization's admin key."""
    headers = {"Authorization": f"Bearer {live.api_key}"}
    return httpx.request(method, live.base_url + path, headers=headers, timeout=10, **kwargs)


def add_people(live: LiveBulletin, count: int) -> None:
    for n in range(1, count + 1):
        answer = api(
            live,
            "PUT",
            f"/v1/recipients/p{n}",
            json={"name": f"Person {n}", "email": f"p{n}@x.org"},
        )
        assert answer.status_code in (200, 201), answer.text


def sign_in(page: Page, live: LiveBulletin) -> None:
    page.goto(f"{live.base_url}/portal/sign-in")
    page.get_by_label("Email").fill(live.portal_email)
    page.get_by_label("Password").fill(live.portal_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Announcements")).to_be_visible()


def compose(page: Page, live: LiveBulletin, title: str, at: dt.datetime) -> None:
    """Fill the compose form for everyone, to be sent at ``at`` in :data:`ZONE`."""
    local = at.astimezone(zoneinfo.ZoneInfo(ZONE))
    page.goto(f"{live.base_url}/portal/announcements/new")
    page.get_by_label("Title").fill(title)
    page.get_by_label("Message", exact=True).fill("The car park, at ten. Bring your badge.")
    page.get_by_label("Everyone").check()
    page.get_by_label("At", exact=True).check()
    page.get_by_label("Date").fill(local.strftime("%Y-%m-%d"))
    page.get_by_label("Time", exact=True).fill(local.strftime("%H:%M:%S"))
    page.get_by_label("Time zone").select_option(ZONE)


def test_sign_in_refuses_a_wrong_password_then_lets_the_right_one_in(
    page: Page, live: LiveBulletin, screenshots: Path
) -> None:
    page.goto(f"{live.base_url}/portal/announcements")
    expect(page).to_have_url(re.compile(r"/portal/sign-in"))
    page.screenshot(path=screenshots / "sign-in.png")
    page.get_by_label("Email").fill(live.portal_email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The email or the password is wrong.")
    expect(page.get_by_label("Email")).to_have_value(live.portal_email)
    page.get_by_label("Password").fill(live.portal_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Announcements")).to_be_visible()
    expect(page.get_by_text("No announcements yet")).to_be_visible()


def test_the_sign_in_form_works_from_the_keyboard(page: Page, live: LiveBulletin) -> None:
    page.goto(f"{live.base_url}/portal/sign-in")
    email, password = page.get_by_label("Email"), page.get_by_label("Password")
    expect(email).to_be_focused()  # autofocus: typing can start at once
    page.keyboard.type(live.portal_email)
    page.keyboard.press("Tab")
    expect(password).to_be_focused()
    page.keyboard.type(live.portal_password)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Announcements")).to_be_visible()


UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea")]
  .filter((el) => el.type !== "hidden" && !el.labels.length && !el.getAttribute("aria-label"))
  .map((el) => el.name || el.id)"""


def test_every_form_field_has_a_label(page: Page, live: LiveBulletin) -> None:
    page.goto(f"{live.base_url}/portal/sign-in")
    assert page.evaluate(UNLABELLED) == []
    sign_in(page, live)
    for path in ("announcements/new", "recipients", "recipients/import"):
        page.goto(f"{live.base_url}/portal/{path}")
        assert page.evaluate(UNLABELLED) == [], path
    page.goto(f"{live.base_url}/portal/announcements/new")
    for label in ("Title", "Shorter SMS text (optional)", "Groups (comma-separated)", "Routing"):
        expect(page.get_by_label(label)).to_be_editable()


def test_an_announcement_scheduled_in_a_time_zone_is_sent_to_everyone(
    page: Page, live: LiveBulletin, screenshots: Path
) -> None:
    add_people(live, 3)
    sign_in(page, live)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    compose(page, live, "Fire drill on Friday", soon)
    expect(page.locator("#audience-count")).to_have_text("Reaches 3 people.")
    # The preview follows the text as it is typed: each channel as the channels render it.
    expect(page.locator("#sms-length")).to_contain_text("GSM-7, 1 segment")
    expect(page.locator("#whatsapp-text")).to_contain_text("*Fire drill on Friday*")
    email = page.frame_locator("#email-html").locator("body")
    expect(email).to_contain_text("Bring your badge.")
    page.get_by_role("heading", name="Compose an announcement").click()  # no focus ring shown
    # A full-page screenshot leaves the sandboxed email frame blank: a window as tall as the
    # page shows it.
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": 1280, "height": height})
    page.screenshot(path=screenshots / "compose.png")
    page.get_by_role("button", name="Send").click()

    expect(page.get_by_role("heading", name="Fire drill on Friday")).to_be_visible()
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text(soon.strftime("%Y-%m-%d %H:%M UTC"))
    expect(facts).to_contain_text("everyone")

    page.get_by_role("link", name="Announcements", exact=True).click()
    row = page.get_by_role("row").filter(has_text="Fire drill on Friday")
    expect(row).to_be_visible()
    expect(row.locator(".percent")).to_have_text("100 %", timeout=PROGRESS_TIMEOUT_MS)
    expect(row.locator(".state")).to_have_text("completed", timeout=PROGRESS_TIMEOUT_MS)
    # Email reports nothing after the server accepts it: "sent" is as far as it goes.
    expect(row.locator(".counts")).to_have_text(re.compile(r"^(delivered|sent) 3$"))
    page.screenshot(path=screenshots / "announcements.png", full_page=True)

    row.get_by_role("link", name="Fire drill on Friday").click()
    expect(page.locator("dd.state")).to_have_text("completed")
    deliveries = page.get_by_role("row").filter(has=page.get_by_role("link", name=re.compile("^p")))
    expect(deliveries).to_have_count(3)
    page.screenshot(path=screenshots / "announcement.png", full_page=True)


def test_an_announcement_for_later_can_be_cancelled(page: Page, live: LiveBulletin) -> None:
    add_people(live, 2)
    sign_in(page, live)
    compose(page, live, "Year-end party", dt.datetime.now(dt.UTC) + dt.timedelta(days=200))
    page.get_by_role("button", name="Send").click()
    expect(page.locator("dd.state")).to_have_text("scheduled")
    page.get_by_role("button", name="Cancel this announcement").click()
    expect(page.get_by_role("status")).to_contain_text("Cancelled")
    expect(page.locator("dd.state")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel this announcement")).to_have_count(0)
    listed = api(live, "GET", "/v1/announcements").json()["items"]
    assert [(a["title"], a["state"]) for a in listed] == [("Year-end party", "cancelled")]


def test_a_csv_with_a_bad_row_imports_nothing_until_it_is_fixed(
    page: Page, live: LiveBulletin, screenshots: Path
) -> None:
    sign_in(page, live)
    header = "external_id,name,email,groups\n"
    good = "e1,Ann Lee,ann@example.com,kitchen;night\ne3,Cy Dube,cy@example.com,night\n"
    page.get_by_role("link", name="Import", exact=True).click()
    page.get_by_label("CSV file").set_input_files(
        {
            "name": "people.csv",
            "mimeType": "text/csv",
            "buffer": (header + good + "e2,Bob Ray,bob-at-example,\n").encode(),
        }
    )
    page.get_by_role("button", name="Import").click()
    report = page.locator("#import-report")
    expect(report).to_contain_text("Nothing was imported.")
    bad = report.get_by_role("row").filter(has_text="email")
    expect(bad).to_have_count(1)
    expect(bad.get_by_role("cell").first).to_have_text("4")  # the header is row 1
    page.screenshot(path=screenshots / "import-report.png", full_page=True)
    assert api(live, "GET", "/v1/recipients").json()["items"] == []

    page.goto(f"{live.base_url}/portal/recipients/import")
    page.get_by_label("CSV file").set_input_files(
        {
            "name": "people.csv",
            "mimeType": "text/csv",
            "buffer": (header + good + "e2,Bob Ray,bob@example.com,\n").encode(),
        }
    )
    page.get_by_role("button", name="Import").click()
    expect(page.locator("#import-result")).to_have_text("Imported: 3 new, 0 updated.")

    page.get_by_role("link", name="Recipients", exact=True).click()
    for name in ("Ann Lee", "Bob Ray", "Cy Dube"):
        expect(page.get_by_role("cell", name=name)).to_be_visible()
    page.get_by_label("Group").select_option("night")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("cell", name="Bob Ray")).to_have_count(0)
    expect(page.get_by_role("cell", name="Ann Lee")).to_be_visible()
    page.get_by_label("Group").select_option("")
    page.get_by_role("button", name="Search").click()
    page.screenshot(path=screenshots / "recipients.png", full_page=True)
