"""The mobile return leg on every device, in every mode and configuration (issue 12), in Chromium
with Playwright's device emulation: where the browser ends up, which link is shown, how the attempt
ends. Route interception and request events stand in for the app catching its links.

One browser for the module, one context per case; one server per configuration.
"""

from __future__ import annotations

from contextlib import ExitStack
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import _empty_tables, serve_live_server
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tools.mobile_client import AppLinkCatcher, MobileClient, finish_widget

SCHEME = "com.example.terraconnect"
LINKS = "https://links.example.com/terra"
# iPadOS Safari, and the in-app browser sheets on iPad, send the desktop Safari user agent.
IPAD_USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)
DEVICES = {
    "iPhone": ("iPhone 15", {}),
    "iPad": ("iPad Pro 11", {"user_agent": IPAD_USER_AGENT}),
    "Pixel": ("Pixel 7", {}),
}
CONFIGURATIONS = {
    "scheme only": {"MOBILE_APP_SCHEME": SCHEME},
    "base only": {"MOBILE_UNIVERSAL_LINK_BASE": LINKS},
    "both": {"MOBILE_APP_SCHEME": SCHEME, "MOBILE_UNIVERSAL_LINK_BASE": LINKS},
}
# Each configuration with the callback its default gives, and "both" with the other one asked for.
CALLBACKS = [("scheme only", None), ("base only", None), ("both", None), ("both", "https")]
PASSWORD = "correct horse battery"
# What the status endpoint asks the app to wait between polls (2 s by default): each case's last step
# polls until the attempt ends, a moment after the browser is done.
POLL_AFTER_MS = "200"


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield playwright, browser
        browser.close()


@pytest.fixture(scope="module")
def clients(database_uri):
    """A signed-in stand-in app against one server per configuration."""
    started, clients = [], {}
    with ExitStack() as servers:
        for name, environ in CONFIGURATIONS.items():
            server = serve_live_server(
                servers,
                database_uri,
                ANDROID_PACKAGE_NAME=SCHEME,
                CONNECT_RATE_LIMIT="100 per minute",
                STATUS_POLL_AFTER_MS=POLL_AFTER_MS,
                **environ,
            )
            started.append(server)
            client = MobileClient(server.url, say=lambda _: None)
            client.register(f"{name.replace(' ', '-')}@example.com", PASSWORD)
            client.sign_in(f"{name.replace(' ', '-')}@example.com", PASSWORD)
            clients[name] = client
        yield clients
    _empty_tables(started[0].app)


def expected_link(callback: str, mode: str, device: str, attempt_id: str) -> str:
    """The link the app catches: of the attempt's callback kind whatever the device; on the return
    page it names the attempt, straight from Terra (app mode) it carries only Terra's parameters."""
    if mode == "app":
        return f"{SCHEME}://connect/success?" if callback == "scheme" else f"{LINKS}/connect/success?"
    if callback == "https":
        return f"{LINKS}/connect/success?attempt_id={attempt_id}"
    if device == "Pixel":
        return f"intent://connect/success?attempt_id={attempt_id}#Intent;scheme={SCHEME};package={SCHEME};"
    return f"{SCHEME}://connect/success?attempt_id={attempt_id}"


@pytest.mark.browser
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["page", "app"])
@pytest.mark.parametrize(
    "configuration, asked", CALLBACKS, ids=["scheme only", "base only", "both", "both, https asked"]
)
def test_the_way_back_to_the_app(chromium, clients, device, mode, configuration, asked):
    playwright, browser = chromium
    client = clients[configuration]
    attempt = client.start_attempt(mode, ["GARMIN"], asked)
    callback = attempt["callback"]
    assert callback == (asked or ("https" if configuration == "base only" else "scheme"))

    descriptor, overrides = DEVICES[device]
    options = {key: value for key, value in playwright.devices[descriptor].items() if key != "default_browser_type"}
    context = browser.new_context(**{**options, **overrides})
    page = context.new_page()
    page.set_default_timeout(15_000)
    catcher = AppLinkCatcher(page, f"{SCHEME}:", "intent:", f"{LINKS}/connect/")
    account = f"{device}-{mode}-{configuration}-{callback}".replace(" ", "-")
    finish_widget(page, attempt["url"], "GARMIN", account, "allow")
    link = expected_link(callback, mode, device, attempt["attempt_id"])

    if mode == "page":
        page.wait_for_url("**/mobile/return/success/**", wait_until="commit")
        shown = page.locator("#return-to-app")
        href = shown.get_attribute("href")
        assert shown.inner_text() == "Return to app" and href.startswith(link)
        if callback == "https":
            # Never tried by the page: the user's tap is what sends the browser to it.
            page.wait_for_load_state()
            assert catcher.caught == []
            shown.click()
        assert catcher.wait_for_link() is not None
        # The return page stays, "Return to app" on it, whatever the app did with the link.
        assert "/mobile/return/success/" in page.url and shown.is_visible()
    else:
        assert catcher.wait_for_link() is not None, page.url
        assert "/sandbox/widget/" in page.url  # no page in between: the app took the redirect
    caught = catcher.caught[0]
    assert caught.startswith(link.split("#")[0])  # a request's URL has no fragment
    if link.startswith("intent:"):  # Chrome comes back to the page, Terra's query and all, if it cannot open the app
        fallback = urlsplit(unquote(href.split("S.browser_fallback_url=")[1].split(";")[0]))
        returned = urlsplit(page.url)
        assert {"user_id", "resource", "reference_id"} <= set(parse_qs(returned.query))
        assert (fallback.path, parse_qs(fallback.query)) == (
            returned.path,
            {**parse_qs(returned.query), "tried": ["1"]},
        )
    if mode == "app":
        assert "attempt_id" not in caught and "reference_id=" in caught  # Terra's parameters, appended
    catcher.stop()
    context.close()

    final = client.poll_until_final(attempt["status_url"], deadline_seconds=30)
    assert (final["status"], final["hint"]) == ("connected", "returned_success" if mode == "page" else None)
