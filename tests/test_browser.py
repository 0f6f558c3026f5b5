"""The connect flow clicked through in headless Chromium (Debian's), on the real pages."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect, sync_playwright

from tools.mobile_client import CHROMIUM_ARGS

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
    expect(page.locator("#attempt h1")).to_have_text("Connected to GARMIN")
    page.click("text=Go to your connections")
    expect(page.locator('tr[data-provider="GARMIN"]')).to_have_attribute("data-status", "active")


@pytest.mark.browser
def test_denying_consent_shows_why(page, live_server):
    register_and_connect(page, live_server.url, "linus@example.com", "OURA", "deny")
    page.wait_for_url("**/connect/return/failure**")
    expect(page.locator("#attempt h1")).to_have_text("The connection was not made")
    expect(page.locator("#reason")).to_contain_text("declined the permissions")
