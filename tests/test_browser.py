"""The pages in headless Chromium (Debian's): the connect flow clicked through; how the pages look
(they fit phone and desktop widths, load nothing that fails, the favicon included, and pass
axe-core's accessibility rules); and docs/walkthrough.md's steps."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect, sync_playwright

from extensions import db
from models import Connection, User
from tools.mobile_client import CHROMIUM_ARGS
from tools.walkthrough import FLOWS, walk_through

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def chromium():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is needed at {CHROMIUM} (`make test` installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def register_and_connect(page, base_url: str, email: str, provider: str, decision: str) -> None:
    """Register, press "Connect a device", and go through the sandbox widget's three pages."""
    page.goto(base_url + "/auth/register")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Your connections")
    page.click("#connect-device")
    page.click(f"[data-provider={provider}]")
    page.fill("input[name=account]", email.split("@")[0] + "-" + provider.lower())
    page.click("button[type=submit]")
    page.click(f"button[name=decision][value={decision}]")


@pytest.mark.browser
def test_register_connect_consent_and_see_the_connection(page, live_server):
    register_and_connect(page, live_server.url, "grace@example.com", "GARMIN", "allow")
    page.wait_for_url("**/connect/return/success**")
    # The page polls until the signed webhook has been applied, then shows the outcome.
    expect(page.locator("#attempt h1")).to_have_text("Connected to Garmin")
    page.click("text=Go to your connections")
    card = page.locator('#connections [data-provider="GARMIN"]')
    expect(card).to_have_attribute("data-status", "active")
    expect(card.locator(".state")).to_have_text("Connected")
    # Disconnecting says it is done, in words.
    card.get_by_role("button", name="Disconnect Garmin").click()
    expect(page.locator(".flash")).to_contain_text("Garmin is disconnected.")
    expect(card).to_have_attribute("data-status", "revoked")
    expect(card).to_contain_text("You disconnected it.")


@pytest.mark.browser
def test_denying_consent_shows_why(page, live_server):
    register_and_connect(page, live_server.url, "linus@example.com", "OURA", "deny")
    page.wait_for_url("**/connect/return/failure**")
    expect(page.locator("#attempt h1")).to_have_text("The connection was not made")
    expect(page.locator("#reason")).to_contain_text("declined the permissions")


# -- how the pages look ----------------------------------------------------------------------------

WIDTHS = (360, 390, 1280)
# A connection in each state the dashboard explains, besides the live one the browser makes.
SEEDED = (("FITBIT", "degraded", None), ("OURA", "revoked", "access_revoked"), ("WAHOO", "revoked", "deauth"))


def seed_pages(page, server) -> list[str]:
    """Register, connect Garmin through the sandbox, add connections in other states; return the
    addresses of the pages a newcomer sees, signed in or not."""
    register_and_connect(page, server.url, "ada@example.com", "GARMIN", "allow")
    page.wait_for_url("**/connect/return/success/**")
    expect(page.locator("#attempt h1")).to_have_text("Connected to Garmin")
    return_page = page.url
    with server.app.app_context():
        user_id = db.session.query(User.id).scalar()
        for provider, status, reason in SEEDED:
            db.session.add(
                Connection(
                    user_id=user_id,
                    terra_user_id=str(uuid.uuid4()),
                    provider=provider,
                    status=status,
                    status_reason=reason,
                    scopes="activity,sleep",
                )
            )
        db.session.commit()
    page.goto(server.url + "/connections")
    page.click("#connect-device")
    widget = page.url
    return [
        "/connections",
        "/connections/providers",
        return_page,
        # The mobile return page as after its one automatic try of the app link (which never loads here).
        return_page.replace("/connect/return/", "/mobile/return/") + "&tried=1",
        widget,
        "/sandbox/",
        "/no-such-page",  # errors are pages of the layout too
    ]


def signed_out_pages() -> list[str]:
    return ["/", "/auth/login", "/auth/register"]


def absolute(server, address: str) -> str:
    return address if address.startswith("http") else server.url + address


@pytest.mark.browser
@pytest.mark.sandbox
def test_pages_fit_phone_and_desktop_widths_and_nothing_they_load_fails(chromium, live_server):
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    failed, icons = [], []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("response", lambda r: icons.append(r.status) if r.url.endswith("/static/favicon.svg") else None)
    signed_in = seed_pages(page, live_server)
    anonymous = chromium.new_context().new_page()

    too_wide = []
    for width in WIDTHS:
        for viewer, addresses in ((page, signed_in), (anonymous, signed_out_pages())):
            viewer.set_viewport_size({"width": width, "height": 800})
            for address in addresses:
                viewer.goto(absolute(live_server, address))
                overflow = viewer.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                if overflow > 0:
                    too_wide.append(f"{address} at {width} px: {overflow} px too wide")
                if viewer is anonymous and width == 390:
                    # Each header link on one line.
                    assert viewer.evaluate(
                        "[...document.querySelectorAll('.bar nav a')].every(a => a.getClientRects().length === 1"
                        " && a.getBoundingClientRect().height < 1.6 * parseFloat(getComputedStyle(a).lineHeight))"
                    ), f"a header link wraps on {address} at 390 px"
    assert too_wide == []

    # The sandbox console at 1280 px: each group of Send buttons on one row, none wrapping its text.
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(live_server.url + "/sandbox/")
    rows = page.evaluate(
        "[...document.querySelectorAll('#sandbox-users .button-group')].map(group =>"
        " new Set([...group.querySelectorAll('button')].map(b => b.getBoundingClientRect().top)).size)"
    )
    assert rows and set(rows) == {1}
    heights = page.evaluate("[...document.querySelectorAll('#sandbox-users button')].map(b => b.offsetHeight)")
    assert len(set(heights)) == 1

    assert [entry for entry in failed if not entry.endswith("/no-such-page")] == []
    assert icons and all(status in (200, 304) for status in icons)
    anonymous.context.close()
    context.close()


@pytest.mark.browser
@pytest.mark.sandbox
def test_every_page_passes_axe_core(chromium, live_server):
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    signed_in = seed_pages(page, live_server)
    anonymous = chromium.new_context().new_page()
    axe = Axe()
    problems = []
    for width in (360, 1280):
        for viewer, addresses in ((page, signed_in), (anonymous, signed_out_pages())):
            viewer.set_viewport_size({"width": width, "height": 800})
            for address in addresses:
                viewer.goto(absolute(live_server, address))
                results = axe.run(viewer)
                if results.violations_count:
                    problems.append(f"{address} at {width} px:\n{results.generate_report()}")
    assert problems == [], "\n".join(problems)
    anonymous.context.close()
    context.close()


# -- docs/walkthrough.md ---------------------------------------------------------------------------

WALKTHROUGH = ROOT / "docs" / "walkthrough.md"


@pytest.mark.browser
@pytest.mark.sandbox
def test_each_walkthrough_step_shows_what_the_walkthrough_says(chromium, live_server):
    taken = []
    walk_through(chromium, live_server.url, lambda step, page: taken.append(step.image))
    assert taken == [step.image for steps in FLOWS for step in steps]


def test_the_walkthrough_quotes_each_step_and_shows_its_picture():
    text = WALKTHROUGH.read_text()
    for step in (step for steps in FLOWS for step in steps):
        assert step.shows in text, f"docs/walkthrough.md does not quote {step.shows!r}"
        assert f"(images/{step.image}.png)" in text, f"docs/walkthrough.md does not show {step.image}.png"
        assert (WALKTHROUGH.parent / "images" / f"{step.image}.png").is_file(), "run `make screenshots`"
