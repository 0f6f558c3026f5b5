"""The pages in headless Chromium (Debian's): the connect flow clicked through; how the pages look
(they fit phone and desktop widths, load nothing that fails, the favicon included, and pass
axe-core's accessibility rules); and docs/walkthrough.md's steps."""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from click.testing import CliRunner
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import select

from extensions import db
from models import Connection, User
from tests.conftest import _empty_tables, serve_live_server
from tools.mobile_client import CHROMIUM_ARGS
from tools.screenshots import DOCUMENTED_PORT
from tools.screenshots import main as take_screenshots
from tools.walkthrough import FLOWS, Walk, data_arrived, walk_through

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
    # Only once confirmed: it cannot be undone.
    card.get_by_role("link", name="Disconnect Garmin").click()
    expect(page.locator("h1")).to_have_text("Disconnect Garmin?")
    page.get_by_role("button", name="Disconnect Garmin").click()
    expect(page.locator(".flash")).to_contain_text("Garmin is disconnected.")
    expect(card).to_have_attribute("data-status", "revoked")
    # The reason depends on which lands last, the app's own record or the deauth webhook Terra sends.
    expect(card.locator(".state")).to_have_text("Disconnected")


@pytest.mark.browser
def test_denying_consent_shows_why(page, live_server):
    register_and_connect(page, live_server.url, "linus@example.com", "OURA", "deny")
    page.wait_for_url("**/connect/return/failure**")
    expect(page.locator("#attempt h1")).to_have_text("The connection was not made")
    expect(page.locator("#reason")).to_contain_text("declined the permissions")


# -- how the pages look ----------------------------------------------------------------------------

WIDTHS = (360, 375, 390, 1280)
# Long enough that the header's old 16rem cut it, at 1280 px.
TOUR_EMAIL = "alexandra.montgomery@long-company-name.example.com"
# A connection in each state the dashboard explains, besides the live one the browser makes.
SEEDED = (("FITBIT", "degraded", None), ("OURA", "revoked", "access_revoked"), ("WAHOO", "revoked", "deauth"))


@dataclass
class Tour:
    """A newcomer's pages, seen by a signed-in browser and an anonymous one, with every response
    that failed (status 400 or more) and the favicon's answers, recorded from the start."""

    server: object
    signed_in: Page
    anonymous: Page
    failed: list[str] = field(default_factory=list)
    favicons: list[int] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)

    def record(self, response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")
        if response.url.endswith("/static/favicon.svg"):
            self.favicons.append(response.status)

    def visits(self, widths):
        """Each page at each width: (the browser, now showing it, the address, the width)."""
        signed_out = ["/", "/auth/login", "/auth/register"]
        for width in widths:
            for viewer, addresses in ((self.signed_in, self.addresses), (self.anonymous, signed_out)):
                viewer.set_viewport_size({"width": width, "height": 800})
                for address in addresses:
                    viewer.goto(address if address.startswith("http") else self.server.url + address)
                    yield viewer, address, width


@pytest.fixture(scope="module")
def tour_server(database_uri):
    """The tour's server, for the module: its tests only look at pages."""
    with ExitStack() as servers:
        # Reconciliation would revoke the tour's seeded connections, which the sandbox does not know,
        # on the first dashboard visit after the interval: a slow run of the module lasts longer.
        server = serve_live_server(servers, database_uri, RECONCILE_INTERVAL_SECONDS="3600")
        yield server
    _empty_tables(server.app)


@pytest.fixture(scope="module")
def shared_tour(chromium, tour_server):
    """Register, connect Garmin through the sandbox, add connections in the other states: once for the
    tests that only look (each starts at Playwright's default viewport, `tour`)."""
    live_server = tour_server
    contexts = [chromium.new_context(), chromium.new_context()]
    tour = Tour(live_server, *(context.new_page() for context in contexts))
    for context in contexts:
        context.set_default_timeout(15_000)
        context.on("response", tour.record)
    page = tour.signed_in
    # Not the walkthrough's address (ada@): its test, later in this module, registers while this user exists.
    register_and_connect(page, live_server.url, TOUR_EMAIL, "GARMIN", "allow")
    page.wait_for_url("**/connect/return/success/**")
    expect(page.locator("#attempt h1")).to_have_text("Connected to Garmin")
    return_page = page.url
    with live_server.app.app_context():
        user_id = db.session.query(User.id).scalar()
        garmin = db.session.scalars(select(Connection.id).where(Connection.provider == "GARMIN")).one()
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
    # A month of history from the sandbox's console: the steps chart and a timeline of webhooks.
    page.goto(live_server.url + "/sandbox/")
    page.click("#sandbox-users button[name=days]")
    data_arrived(page, Walk(live_server.url))
    page.goto(live_server.url + "/connections")
    page.click("#connect-device")
    tour.addresses = [
        "/connections",
        "/connections/providers",
        f"/connections/{garmin}/disconnect",  # the confirmation page, which disconnects nothing by itself
        return_page,
        # The mobile return page as after its one automatic try of the app link (which never loads here).
        return_page.replace("/connect/return/", "/mobile/return/") + "&tried=1",
        page.url,  # the sandbox widget
        "/sandbox/",
        "/no-such-page",  # errors are pages of the layout too
    ]
    yield tour
    for context in contexts:
        context.close()


@pytest.fixture
def tour(shared_tour):
    for viewer in (shared_tour.signed_in, shared_tour.anonymous):
        viewer.set_viewport_size({"width": 1280, "height": 720})
    return shared_tour


@pytest.mark.browser
@pytest.mark.sandbox
def test_pages_fit_phone_and_desktop_widths_and_nothing_they_load_fails(tour):
    too_wide = []
    for viewer, address, width in tour.visits(WIDTHS):
        overflow = viewer.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 0:
            too_wide.append(f"{address} at {width} px: {overflow} px too wide")
        if viewer is tour.anonymous and width == 390:
            # Each header link on one line.
            assert viewer.evaluate(
                "[...document.querySelectorAll('.bar nav a')].every(a => a.getClientRects().length === 1"
                " && a.getBoundingClientRect().height < 1.6 * parseFloat(getComputedStyle(a).lineHeight))"
            ), f"a header link wraps on {address} at 390 px"
    assert too_wide == []

    # The sandbox console at 1280 px: each group of Send buttons on one row, none wrapping its text.
    page = tour.signed_in
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(tour.server.url + "/sandbox/")
    rows = page.evaluate(
        "[...document.querySelectorAll('#sandbox-users .button-group')].map(group =>"
        " new Set([...group.querySelectorAll('button')].map(b => b.getBoundingClientRect().top)).size)"
    )
    assert rows and set(rows) == {1}
    heights = page.evaluate("[...document.querySelectorAll('#sandbox-users button')].map(b => b.offsetHeight)")
    assert len(set(heights)) == 1

    assert [entry for entry in tour.failed if not entry.endswith("/no-such-page")] == []
    assert tour.favicons and all(status in (200, 304) for status in tour.favicons)


@pytest.mark.browser
@pytest.mark.sandbox
def test_every_page_passes_axe_core(tour):
    axe = Axe()
    problems = []
    for viewer, address, width in tour.visits((360, 1280)):
        results = axe.run(viewer)
        if results.violations_count:
            problems.append(f"{address} at {width} px:\n{results.generate_report()}")
    assert problems == [], "\n".join(problems)


@pytest.mark.browser
@pytest.mark.sandbox
def test_the_dashboard_says_in_words_what_each_connection_is(tour):
    page = tour.signed_in
    page.goto(tour.server.url + "/connections")
    cards = page.locator("#connections > li")
    expect(cards).to_have_count(4)
    text = page.locator("main").inner_text()
    for name, state, explanation in (
        ("Garmin", "Connected", "Terra sends the app this Garmin account's new data"),
        ("Fitbit", "Needs attention", "Fitbit stopped accepting Terra's access"),
        ("Oura", "Disconnected", "Access was withdrawn in the provider's own settings."),
        ("Wahoo", "Disconnected", "It was disconnected at Terra."),
    ):
        card = page.locator(f"#connections > li:has(h2:text-is('{name}'))")
        expect(card.locator(".state")).to_have_text(state)
        expect(card).to_contain_text(explanation)
    expect(page.get_by_role("button", name="Connect Fitbit again")).to_be_visible()
    # No codes, no Terra user ids: what Terra and the database call things is no news to a person.
    for code in ("GARMIN", "FITBIT", "access_revoked", "deauth", "degraded", "revoked", "active"):
        assert code not in text
    with tour.server.app.app_context():
        terra_user_ids = db.session.scalars(select(Connection.terra_user_id)).all()
    assert terra_user_ids and not any(terra_user_id in page.content() for terra_user_id in terra_user_ids)


CHART_TEXT_SIZES = """[...document.querySelectorAll('svg.steps-chart text')]
    .filter(text => getComputedStyle(text).visibility === 'visible')
    .map(text => parseFloat(getComputedStyle(text).fontSize) * text.getScreenCTM().a)"""


@pytest.mark.browser
@pytest.mark.sandbox
def test_the_steps_chart_reads_at_phone_width_and_tells_each_day_on_focus_or_tap(tour, chromium):
    page = tour.signed_in
    for width in (360, 375, 1280):
        page.set_viewport_size({"width": width, "height": 800})
        page.goto(tour.server.url + "/connections")
        chart = page.locator("svg.steps-chart")
        # Every visible label at 12 CSS px or more once the SVG is scaled to its column.
        sizes = page.evaluate(CHART_TEXT_SIZES)
        assert len(sizes) >= 10 and min(sizes) >= 12, f"chart text of {min(sizes):.1f} px at {width} px"
        # The top line says it is the peak; a labelled scale from 0 reaches it.
        peak = chart.locator(".chart-peak")
        expect(peak).to_contain_text("Peak: ")
        peak_steps = int(peak.text_content().split()[1].replace(",", ""))
        scale = [int(label.replace(",", "")) for label in chart.locator(".chart-scale").all_text_contents()]
        assert scale[0] == 0 and len(scale) >= 2 and scale[-1] >= peak_steps > scale[-2]
        # A day's value: on keyboard focus, and on a tap (a click here) on its column.
        days = chart.locator("g[tabindex]")
        expect(days).to_have_count(14)
        days.nth(3).focus()
        readout = days.nth(3).locator(".chart-readout")
        expect(readout).to_be_visible()
        expect(readout).to_have_text(days.nth(3).get_attribute("aria-label"))
        expect(peak).to_be_hidden()
        days.nth(10).locator(".chart-hit").click()
        expect(days.nth(10).locator(".chart-readout")).to_be_visible()
        expect(readout).to_be_hidden()
        assert days.nth(10).get_attribute("aria-label").endswith(" steps")
    # A phone's tap, in a touch browser signed in as the same user.
    phone = chromium.new_context(
        storage_state=page.context.storage_state(),
        viewport={"width": 360, "height": 800},
        has_touch=True,
        is_mobile=True,
    )
    try:
        touch = phone.new_page()
        touch.goto(tour.server.url + "/connections")
        day = touch.locator("svg.steps-chart g[tabindex]").nth(6)
        expect(day.locator(".chart-readout")).to_be_hidden()
        day.locator(".chart-hit").tap()
        expect(day.locator(".chart-readout")).to_be_visible()
        expect(touch.locator("svg.steps-chart .chart-peak")).to_be_hidden()
    finally:
        phone.close()


@pytest.mark.browser
@pytest.mark.sandbox
def test_the_webhook_timeline_never_breaks_an_event_name(tour):
    page = tour.signed_in
    for width in (360, 375, 1280):
        page.set_viewport_size({"width": width, "height": 800})
        page.goto(tour.server.url + "/connections")
        page.click("#connections [data-provider=GARMIN] summary:has-text('Webhooks received')")
        names = page.locator("table.events code")
        assert "large_request_sending" in names.all_inner_texts()
        broken = page.evaluate(
            "[...document.querySelectorAll('table.events code')]"
            ".filter(code => code.getClientRects().length !== 1"
            " || code.getBoundingClientRect().height > 1.6 * parseFloat(getComputedStyle(code).fontSize))"
            ".map(code => code.textContent)"
        )
        assert broken == [], f"event names broken at {width} px"
        assert page.evaluate(
            "[...document.querySelectorAll('.connection-data .table-wrap')].every(wrap =>"
            " wrap.scrollWidth <= wrap.clientWidth)"
        ), f"the timeline scrolls sideways at {width} px"


@pytest.mark.browser
@pytest.mark.sandbox
def test_the_header_shows_the_whole_email_on_a_desktop(tour):
    page = tour.signed_in
    page.goto(tour.server.url + "/connections")
    who = page.locator(".bar .who")
    expect(who).to_have_text(TOUR_EMAIL)
    widths = who.evaluate("element => [element.scrollWidth, element.clientWidth, getComputedStyle(element).maxWidth]")
    assert widths[0] <= widths[1], f"the email is cut: {widths}"


@pytest.mark.browser
@pytest.mark.sandbox
def test_the_sandbox_console_links_back_to_the_app(tour):
    page = tour.signed_in
    page.goto(tour.server.url + "/sandbox/")
    page.get_by_role("link", name="Back to the app").click()
    expect(page.locator("h1")).to_have_text("Your connections")


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
    pictures = {path.stem for path in (WALKTHROUGH.parent / "images").glob("*.png")}
    assert pictures == {step.image for steps in FLOWS for step in steps}, "a picture no step takes any more"


def test_the_pictures_are_taken_at_the_walkthroughs_address_or_not_at_all(tmp_path, monkeypatch):
    # The sandbox console pictures the address its webhooks go to: the one the text gives.
    assert f"Open http://127.0.0.1:{DOCUMENTED_PORT}/sandbox/" in WALKTHROUGH.read_text()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr("tools.screenshots.DOCUMENTED_PORT", taken.getsockname()[1])
        result = CliRunner().invoke(take_screenshots, ["--out", str(tmp_path)])
    assert result.exit_code != 0 and "the pictures show the walkthrough's address" in result.output
    assert list(tmp_path.iterdir()) == []
