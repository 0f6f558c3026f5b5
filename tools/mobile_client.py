"""A stand-in for the mobile app, to try the mobile flow without a phone: `make mobile-client`, which
runs `python -m tools.mobile_client` (a developer tool: the app's own CLI, production's included, does
not carry it).

It does what an iOS or Android app must do, in the same order, and prints each step:
1. get a bearer token (POST /api/v1/tokens);
2. start a connect attempt (POST /api/v1/connect-attempts);
3. open the widget URL in a browser the app does not control (here headless Chromium, standing in for
   ASWebAuthenticationSession or Custom Tabs) and let the user finish (here: clicks on the sandbox pages);
4. catch the deep link the browser is sent to, as the app's in-app browser does: every link of the
   app's scheme, or (`--callback https`) its success link only, by route interception, tapping
   "Return to app" where a page offers a link it does not try itself. A failure link the browser does
   not catch leaves the user on a page that says to go back to the app: the user closes the browser
   and the app reports `browser-closed`;
5. long-poll the `status_url` the attempt was created with (`?wait=`, the last ETag in
   If-None-Match), waiting out Retry-After on 429 and backing off with full jitter when an answer
   comes back early with no news, until final;
6. for `sdk_required` (Apple Health, Samsung Health, Health Connect: `--provider APPLE`), do what the
   app does with Terra's mobile SDK: get a token from the backend (POST /api/v1/sdk-tokens), play the
   SDK's `initConnection` (the sandbox's stand-in, POST /sandbox/sdk/init-connection), and wait for
   the connection in the list (GET /api/v1/connections) once Terra's webhook has arrived.
It talks to the server only over HTTP, like a real app.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import click
import requests
from flask.cli import ScriptInfo, with_appcontext

# Without the background-networking flags Chromium keeps dialling Google, which this machine refuses.
# The browser tests launch Chromium with these too.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
DECISIONS = {"success": "allow", "denied": "deny", "cancelled": "cancel"}
# A status answer this long in coming was a held long poll: the next one goes out at once. One sooner,
# with no news, means the server (or a proxy) did not hold it: back off (docs/mobile.md, rule 4).
HELD_SECONDS = 1


@dataclass
class Backoff:
    """Full jitter: sleep a random time in [0, min(cap, base * 2**n)], never less than the server asks."""

    base: float = 1.0
    cap: float = 10.0
    tries: int = 0

    def next_delay(self, server_minimum: float) -> float:
        ceiling = min(self.cap, self.base * 2**self.tries)
        self.tries += 1
        return max(server_minimum, random.uniform(0, ceiling))


class MobileClient:
    def __init__(self, base_url: str, say: Callable[[str], None] = print, timeout: float = 30, wait_seconds: int = 20):
        self.base_url = base_url.rstrip("/")
        self.http = requests.Session()
        self.say = say
        self.wait_seconds = wait_seconds  # each status poll's ?wait=, as docs/mobile.md advises
        self.timeout = max(timeout, wait_seconds + 10)  # comfortably above the wait

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.http.request(method, self.base_url + path, timeout=self.timeout, **kwargs)

    def _call_url(self, method: str, url: str, **kwargs) -> requests.Response:
        """A URL the server handed out (`status_url`, a path), resolved against the base URL."""
        return self.http.request(method, urljoin(self.base_url + "/", url), timeout=self.timeout, **kwargs)

    def register(self, email: str, password: str) -> None:
        """The API has no sign-up; a new user registers on the web pages (with their CSRF token)."""
        page = self._call("GET", "/auth/register")
        match = CSRF_FIELD.search(page.text)
        if match is None:
            raise click.ClickException("the registration page has no CSRF token")
        token = match.group(1)
        response = self._call(
            "POST",
            "/auth/register",
            data={"csrf_token": token, "email": email, "password": password},
            allow_redirects=False,
        )
        self.say(f"register {email}: {'created' if response.status_code == 303 else 'already exists or refused'}")
        self.http.cookies.clear()  # the app itself never uses the web session

    def sign_in(self, email: str, password: str) -> None:
        response = self._call("POST", "/api/v1/tokens", json={"email": email, "password": password})
        if response.status_code != 201:
            raise click.ClickException(f"token refused ({response.status_code}): {response.text}")
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        self.say(f"1. token issued, valid {response.json()['expires_in']} s")

    def start_attempt(self, return_mode: str, providers: list[str] | None, callback: str | None = None) -> dict:
        body: dict = {"return": return_mode} | ({"callback": callback} if callback else {})
        if providers:
            body["providers"] = providers
        response = self._call("POST", "/api/v1/connect-attempts", json=body)
        if response.status_code != 201:
            raise click.ClickException(f"attempt refused ({response.status_code}): {response.text}")
        attempt = response.json()
        self.say(
            f"2. attempt {attempt['attempt_id']} started ({attempt['callback']} callback); widget {attempt['url']}"
        )
        return attempt

    def run_browser(
        self, url: str, link_prefix: str, provider: str, account: str, outcome: str, chromium: str
    ) -> str | None:
        """Finish the widget as a user would; return the deep link the app caught (one starting with
        `link_prefix`), or None when the browser came to rest without one."""
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(15_000)
            # The links host is this server under a second name (docs/mobile.md, "Hosting the links").
            served_by = {origin(link_prefix): origin(self.base_url)} if link_prefix.startswith("https://") else {}
            catcher = AppLinkCatcher(page, link_prefix, served_by=served_by)
            self.say("3. in-app browser opened")
            finish_widget(page, url, provider, account, DECISIONS[outcome])
            link = catcher.wait_for_link()
            catcher.stop()
            browser.close()
        self.say(f"4. deep link caught: {link}; browser closed" if link else "4. no deep link; browser closed")
        return link

    def browser_closed(self, status_url: str) -> None:
        response = self._call_url("POST", status_url + "/browser-closed")
        if response.status_code != 202:
            raise click.ClickException(f"browser-closed refused ({response.status_code}): {response.text}")
        self.say("   told the server the browser closed without a deep link")

    def poll_until_final(self, status_url: str, deadline_seconds: float = 120) -> dict:
        """Long-poll `status_url` as docs/mobile.md's "Polling the status" tells an app to: `?wait=`
        with the last ETag in If-None-Match, asked again at once after a held answer (304: nothing
        new); an early answer with no news backs off with full jitter, never under poll_after_ms; a
        429 or 503 waits out its Retry-After."""
        backoff, etag, state = Backoff(), None, None
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            headers = {"If-None-Match": etag} if etag else {}
            asked_at = time.monotonic()
            response = self._call_url("GET", status_url, params={"wait": self.wait_seconds}, headers=headers)
            if response.status_code in (429, 503) and response.headers.get("Retry-After", "").isdigit():
                retry_after = int(response.headers["Retry-After"])
                self.say(f"5. status {response.status_code} {error_code(response)}: asking again in {retry_after} s")
                time.sleep(retry_after)
                continue
            news = False
            if response.status_code == 200:
                answered = response.json()
                news = state is None or answered["version"] != state["version"]
                state, etag = answered, response.headers.get("ETag")
                self.say(f"5. status {state['status']} (version {state['version']}, hint {state['hint']})")
                if state["terminal"]:
                    return state
            elif response.status_code == 304:
                self.say(f"5. status not modified (304 after a wait of up to {self.wait_seconds} s)")
            else:
                raise click.ClickException(f"status failed ({response.status_code}): {response.text}")
            if news or time.monotonic() - asked_at >= HELD_SECONDS:
                backoff.tries = 0  # a held long poll, or news: ask again at once
                continue
            time.sleep(backoff.next_delay((state["poll_after_ms"] or 0) / 1000 if state else 0))
        raise click.ClickException("the attempt did not finish in time")

    def connect_with_sdk(self, init_connection_url: str, dev_id: str, provider: str, device: str) -> dict:
        """The SDK path for a provider that keeps its data on the phone; the connection once listed."""
        response = self._call("POST", "/api/v1/sdk-tokens")
        if response.status_code != 201:
            raise click.ClickException(f"SDK token refused ({response.status_code}): {response.text}")
        issued = response.json()
        self.say(f"6. SDK token from the backend, valid {issued['expires_in']} s")
        # The SDK itself talks to Terra (here the sandbox's stand-in), never to our backend.
        body = {
            "token": issued["token"],
            "provider": provider,
            "reference_id": issued["reference_id"],
            "dev_id": dev_id,
            "device": device,
        }
        response = requests.post(init_connection_url, json=body, timeout=self.timeout)
        if response.status_code != 201:
            raise click.ClickException(f"initConnection refused ({response.status_code}): {response.text}")
        terra_user_id = response.json()["user"]["user_id"]
        self.say(f"7. initConnection for {provider}: Terra user {terra_user_id}")
        return self.wait_for_connection(terra_user_id)

    def wait_for_connection(self, terra_user_id: str, deadline_seconds: float = 60) -> dict:
        backoff, deadline = Backoff(base=0.5, cap=4), time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            response = self._call("GET", "/api/v1/connections")
            if response.status_code != 200:
                raise click.ClickException(f"connections failed ({response.status_code}): {response.text}")
            for connection in response.json()["connections"]:
                if connection["terra_user_id"] == terra_user_id and connection["status"] == "active":
                    self.say(f"8. connection {connection['id']} {connection['status']} ({connection['provider']})")
                    return connection
            time.sleep(backoff.next_delay(0))
        raise click.ClickException("the connection did not appear in time (did Terra's webhook reach the server?)")


def sandbox_init_connection_url(server_url: str, config: Mapping[str, Any]) -> str:
    """The sandbox's stand-in for the SDK's initConnection. The embedded sandbox is on the server this
    client talks to, whatever port it serves on (this process's own settings may name another); a
    separately running one is beside the Terra REST paths it serves (`…/sandbox/v2`, `…/sandbox/api/v2`)."""
    if config["TERRA_MODE"] == "sandbox":
        return server_url.rstrip("/") + "/sandbox/sdk/init-connection"
    terra_api_base_url = config["TERRA_API_BASE_URL"]
    base = terra_api_base_url.rstrip("/")
    for suffix in ("/api/v2", "/v2"):
        if base.endswith(suffix):
            return base.removesuffix(suffix) + "/sdk/init-connection"
    raise click.ClickException(f"give --init-connection-url: cannot place it beside {terra_api_base_url}")


def finish_widget(page, url: str, provider: str, account: str, decision: str) -> None:
    """The user's part on the sandbox's widget pages: pick the provider, sign in, decide. An SDK-only
    provider has no sign-in: Terra's widget hands the user back to the app."""
    page.goto(url)
    if page.locator(f'[data-provider="{provider}"]').count():
        page.click(f'[data-provider="{provider}"]')
    if page.locator("#sdk-handoff").count():
        page.click("#sdk-handoff button[type=submit]")
        return
    page.fill("input[name=account]", account)
    page.click("button[type=submit]")
    page.click(f"button[name=decision][value={decision}]")


class AppLinkCatcher:
    """Stands in for the app around an in-app browser page: catches every navigation to a link the
    app claims (starting with one of `link_prefixes`: its scheme, its universal links, `intent:` on
    Android), as ASWebAuthenticationSession or an Auth Tab does. Route interception sees each
    response first: a redirect to such a link (app mode), or a universal link itself, is taken by the
    "app" and answered with an empty 204, so the browser stays where it was. A page that navigates
    itself to the app's scheme (the return page) shows up as a request to it. A link of another
    scheme goes nowhere, as in an in-app browser that is not set up for it. `served_by` maps an
    origin (`https://links.example.com`) to the one that serves its pages."""

    def __init__(self, page, *link_prefixes: str, served_by: dict[str, str] | None = None):
        self.page, self.link_prefixes, self.caught = page, link_prefixes, []
        self.served_by = served_by or {}
        page.on("request", self._seen)
        page.route("**/*", self._intercept)

    def _seen(self, request) -> None:
        if request.url.startswith(self.link_prefixes) and request.url not in self.caught:
            self.caught.append(request.url)

    def _intercept(self, route) -> None:
        url = route.request.url
        if url.startswith(self.link_prefixes):
            self._seen(route.request)
            route.fulfill(status=204)
            return
        if not url.startswith(("http://", "https://")):
            route.abort()
            return
        served_from = self.served_by.get(origin(url))
        response = route.fetch(url=served_from + url[len(origin(url)) :] if served_from else url, max_redirects=0)
        location = response.headers.get("location", "")
        if location.startswith(self.link_prefixes):
            self.caught.append(location)
            route.fulfill(status=204)
        else:
            route.fulfill(response=response)

    def stop(self) -> None:
        """Stop intercepting before the page's context closes: a request still in flight (the
        favicon, fetched after the page settled) would otherwise be fetched by a handler whose context
        is gone, and fail the caller."""
        self.page.unroute_all(behavior="ignoreErrors")

    def wait_for_link(self, timeout_seconds: float = 15) -> str | None:
        """The first link caught, or None once the user has nothing left to do but close the browser.
        A return page tries a scheme link itself; an https link it only offers (unclaimed, it would
        replace the page), so the user taps "Return to app". A page whose way back this browser does
        not catch (a failure link outside an https callback leads to the universal-link page, which
        offers the scheme) or that offers none is where the user gives up and closes the browser."""
        deadline = time.monotonic() + timeout_seconds
        tapped_on = None
        while not self.caught and time.monotonic() < deadline:
            if self.page.url != tapped_on and self.page.locator("main.return").count():
                offered = self.page.locator("#return-to-app")
                href = offered.get_attribute("href") if offered.count() else ""
                if href.startswith("https://"):
                    tapped_on = self.page.url  # the click may come back after the next page loaded
                    offered.click()
                elif not href.startswith(self.link_prefixes):
                    return None
            self.page.wait_for_timeout(50)
        return self.caught[0] if self.caught else None


def link_prefix(callback: str, scheme: str, link_base: str) -> str:
    """What the app's in-app browser catches (docs/mobile.md, 7.1 and 8.1): every link of the app's
    scheme (`<scheme>:`), or one https link, host and path exactly, whatever the query: the success
    link `<link base>/connect/success`. A failure link is then not caught."""
    value, name = (scheme, "--scheme") if callback == "scheme" else (link_base, "--link-base")
    if not value:
        raise click.ClickException(f"the attempt's callback is {callback}: give {name}")
    return f"{value}:" if callback == "scheme" else f"{value}/connect/success"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def error_code(response: requests.Response) -> str:
    """The API's error code, or what a proxy's answer without one looked like."""
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return response.reason


def deep_link_attempt_id(link: str) -> str | None:
    return parse_qs(urlsplit(link).query).get("attempt_id", [None])[0]


@click.command("mobile-client")
@with_appcontext
@click.option("--base-url", default=None, help="The server; defaults to PUBLIC_BASE_URL.")
@click.option("--email", required=True)
@click.option("--password", required=True)
@click.option("--register", is_flag=True, help="Create the account first (on the web pages).")
@click.option("--provider", default="GARMIN", show_default=True)
@click.option("--account", default="demo-account", show_default=True, help="The fake provider account.")
@click.option("--outcome", type=click.Choice(sorted(DECISIONS)), default="success", show_default=True)
@click.option("--return", "return_mode", type=click.Choice(["page", "app"]), default="page", show_default=True)
@click.option(
    "--callback",
    type=click.Choice(["scheme", "https"]),
    default=None,
    help="The link the in-app browser catches (https: the success link only); defaults to the server's MOBILE_CALLBACK.",
)
@click.option("--scheme", default=None, help="The app's scheme; defaults to MOBILE_APP_SCHEME.")
@click.option("--link-base", default=None, help="The app's universal links; defaults to MOBILE_UNIVERSAL_LINK_BASE.")
@click.option("--chromium", default="/usr/bin/chromium", show_default=True)
@click.option(
    "--init-connection-url",
    default=None,
    help="The sandbox's stand-in for the SDK's initConnection; defaults to the embedded sandbox's on the server, or the one beside TERRA_API_BASE_URL.",
)
def mobile_client_command(
    base_url,
    email,
    password,
    register,
    provider,
    account,
    outcome,
    return_mode,
    callback,
    scheme,
    link_base,
    chromium,
    init_connection_url,
):
    """Play the mobile app against a running server, end to end."""
    from flask import current_app

    config = current_app.config
    client = MobileClient(base_url or config["PUBLIC_BASE_URL"], say=click.echo)
    if register:
        client.register(email, password)
    client.sign_in(email, password)
    attempt = client.start_attempt(return_mode, [provider], callback)
    prefix = link_prefix(
        attempt["callback"] or "scheme",
        scheme or config["MOBILE_APP_SCHEME"],
        link_base or config["MOBILE_UNIVERSAL_LINK_BASE"],
    )
    link = client.run_browser(attempt["url"], prefix, provider, account, outcome, chromium)
    if link is None:
        client.browser_closed(attempt["status_url"])
    elif deep_link_attempt_id(link) not in (None, attempt["attempt_id"]):  # app mode's link names none
        raise click.ClickException("the deep link names another attempt")
    final = client.poll_until_final(attempt["status_url"])
    if final["status"] == "sdk_required":
        url = init_connection_url or sandbox_init_connection_url(client.base_url, config)
        client.connect_with_sdk(url, config["TERRA_DEV_ID"], final["resource"] or provider, account)
        click.echo("done: connected (through Terra's mobile SDK)")
        return
    click.echo(f"done: {final['status']}" + (f" ({final['error']['code']})" if final["error"] else ""))


if __name__ == "__main__":
    from app import create_app

    # The app's settings (PUBLIC_BASE_URL, MOBILE_APP_SCHEME) as `flask --app app` would load them.
    mobile_client_command(obj=ScriptInfo(create_app=create_app))
