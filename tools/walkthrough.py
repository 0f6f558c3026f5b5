"""The steps of docs/walkthrough.md, from a fresh app to a connected device, on the web and through
the mobile API, as a newcomer takes them in a browser. `make screenshots` (tools/screenshots.py)
takes each step's picture; tests/test_browser.py runs the same steps and fails when a page no
longer shows what the walkthrough says it shows (each step's `shows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from playwright.sync_api import Browser, Page, expect

DESKTOP = {"width": 1024, "height": 720}
PHONE = {"width": 390, "height": 844}
STEP_TIMEOUT_MS = 15_000  # generous: a busy machine hashes a password and calls the sandbox slowly
EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"


@dataclass
class Walk:
    """What the steps share: the app's address, and what earlier steps obtained."""

    base_url: str
    api: requests.Session = field(default_factory=requests.Session)
    attempt_id: str = ""


@dataclass(frozen=True)
class Step:
    image: str  # docs/images/<image>.png
    viewport: dict
    act: Callable[[Page, Walk], Page | None]  # from the previous step's page to this one (or a new page)
    shows: str  # text the page shows once the step is done, quoted in docs/walkthrough.md


def _open(path: str) -> Callable[[Page, Walk], None]:
    def act(page: Page, walk: Walk) -> None:
        page.goto(walk.base_url + path)

    return act


def _register(page: Page, walk: Walk) -> None:
    page.goto(walk.base_url + "/auth/register")
    page.fill("#email", EMAIL)
    page.fill("#password", PASSWORD)


def _choose_provider(provider: str, account: str) -> Callable[[Page, Walk], None]:
    def act(page: Page, walk: Walk) -> None:
        page.click(f"[data-provider={provider}]")
        page.fill("#account", account)

    return act


def _click(selector: str) -> Callable[[Page, Walk], None]:
    def act(page: Page, walk: Walk) -> None:
        page.click(selector)

    return act


def _start_mobile_attempt(page: Page, walk: Walk) -> None:
    """What the mobile app does before it opens the in-app browser: a token, then an attempt."""
    token = walk.api.post(walk.base_url + "/api/v1/tokens", json={"email": EMAIL, "password": PASSWORD}, timeout=30)
    token.raise_for_status()
    walk.api.headers["Authorization"] = "Bearer " + token.json()["access_token"]
    attempt = walk.api.post(walk.base_url + "/api/v1/connect-attempts", json={"return": "page"}, timeout=30)
    attempt.raise_for_status()
    walk.attempt_id = attempt.json()["attempt_id"]
    page.goto(attempt.json()["url"])


def _ask_for_history(page: Page, walk: Walk) -> None:
    """Back on the dashboard, the Garmin card's history button (the console's Backfill button is for demos)."""
    page.goto(walk.base_url + "/connections")
    page.click("#connections .history-request button")


def data_arrived(page: Page, walk: Walk) -> None:
    """The dashboard once the history has arrived: the sandbox delivers its chunks one after another
    and the app applies each in the background, so reload until the steps chart is drawn and the
    webhook timeline has stopped growing with nothing left to apply; then open the timeline."""
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    rows_before = -1
    while True:
        page.goto(walk.base_url + "/connections")
        rows = page.locator("table.events tbody tr").count()
        settled = (
            page.locator("svg.steps-chart").count() > 0
            and rows == rows_before
            and page.locator('table.events tr[data-outcome="received"]').count() == 0
        )
        if settled or time.monotonic() > deadline:
            break
        rows_before = rows
        time.sleep(1)
    page.click("summary:has-text('Webhooks received')")


def _disconnect(page: Page, walk: Walk) -> None:
    page.goto(walk.base_url + "/connections")
    page.click("#connections a.danger")
    page.click("#confirm-disconnect")


def _app_sees_connected_then_log_in(page: Page, walk: Walk) -> Page:
    """The app asks the status endpoint until the attempt is final, as tools/mobile_client does; then
    the same account, on the web, shows the new connection. The web is another tab: the in-app
    browser's last page tried to open the app's deep link, which no browser here can follow."""
    deadline = time.monotonic() + 30
    while True:
        state = walk.api.get(f"{walk.base_url}/api/v1/connect-attempts/{walk.attempt_id}", timeout=30).json()
        if state["terminal"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if state["status"] != "connected":
        raise AssertionError(f"the mobile attempt ended {state['status']}, not connected: {state}")
    web = page.context.new_page()
    web.set_default_timeout(STEP_TIMEOUT_MS)
    web.goto(walk.base_url + "/auth/login")
    web.fill("#email", EMAIL)
    web.fill("#password", PASSWORD)
    web.click("button[type=submit]")
    return web


WEB_STEPS = (
    Step("web-01-home", DESKTOP, _open("/"), "Connect your wearables"),
    Step("web-02-register", DESKTOP, _register, "Create an account"),
    Step("web-03-no-connections", DESKTOP, _click("button[type=submit]"), "No connections yet."),
    Step("web-04-widget", DESKTOP, _click("#connect-device"), "Choose the service that holds your health data."),
    Step("web-05-provider-login", DESKTOP, _choose_provider("GARMIN", "ada-garmin"), "Sign in to Garmin"),
    Step("web-06-consent", DESKTOP, _click("#sign-in"), "Allow access to your Garmin data?"),
    Step("web-07-connected", DESKTOP, _click("button[value=allow]"), "Connected to Garmin"),
    Step(
        "web-08-dashboard", DESKTOP, _click("text=Go to your connections"), "Terra sends the app this Garmin account's"
    ),
    Step("web-09-sandbox-console", DESKTOP, _open("/sandbox/"), "Sandbox console"),
    Step("web-10-history-sent", DESKTOP, _ask_for_history, "Asked Terra for 30 days of Garmin history"),
    Step("web-11-data-arrived", DESKTOP, data_arrived, "Last data received"),
    Step("web-12-disconnected", DESKTOP, _disconnect, "Garmin is disconnected."),
)

MOBILE_STEPS = (
    Step("mobile-01-widget", PHONE, _start_mobile_attempt, "Choose the service that holds your health data."),
    Step("mobile-02-provider-login", PHONE, _choose_provider("FITBIT", "ada-fitbit"), "Sign in to Fitbit"),
    Step("mobile-03-consent", PHONE, _click("#sign-in"), "Allow access to your Fitbit data?"),
    Step("mobile-04-return-page", PHONE, _click("button[value=allow]"), "Almost done"),
    Step("mobile-05-dashboard", PHONE, _app_sees_connected_then_log_in, "Terra sends the app this Fitbit account's"),
)


FLOWS = (WEB_STEPS, MOBILE_STEPS)


def run(steps: tuple[Step, ...], page: Page, walk: Walk, after: Callable[[Step, Page], None]) -> None:
    """Take `steps` in order on `page`; after each, wait until the page shows the step's text (it
    fails otherwise), then call `after` (the screenshot, or nothing)."""
    for step in steps:
        page = step.act(page, walk) or page
        page.set_viewport_size(step.viewport)
        expect(page.locator("body")).to_contain_text(step.shows, timeout=STEP_TIMEOUT_MS)
        after(step, page)


def walk_through(browser: Browser, base_url: str, after: Callable[[Step, Page], None]) -> None:
    """Both flows against the app at `base_url`, each in a browser of its own: the mobile app's
    in-app browser shares no cookies with the web's."""
    for steps in FLOWS:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            run(steps, page, Walk(base_url), after)
        finally:
            context.close()
