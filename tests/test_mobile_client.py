"""The command that plays the mobile app, run end to end against the live server and Chromium."""

from __future__ import annotations

import contextlib
import json
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from flask.cli import FlaskGroup
from werkzeug.wrappers import Response

from app import create_app
from extensions import db
from models import User
from services import long_poll
from tests.conftest import ROOT, _environ, wait_for
from tests.helpers import finish_widget
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, WALKTHROUGH
from tests.test_config import PRODUCTION
from tests.test_mobile_devices import POLL_AFTER_MS
from tools.mobile_client import (
    AppLinkCatcher,
    Backoff,
    MobileClient,
    deep_link_attempt_id,
    link_prefix,
    mobile_client_command,
    sandbox_init_connection_url,
)

LINKS = "https://links.example.com/terra"
PASSWORD = "correct horse battery"
ATTEMPTS, MOVED = "/api/v1/connect-attempts/", "/api/v1/moved-attempts/"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    if_none_match: str | None
    status: int | None = None
    etag: str | None = None


class WatchedApi:
    """The live server's API as the server sees it: each request under /api/v1/ (`seen`), and the
    status resource moved: a new attempt's `status_url` names /api/v1/moved-attempts/<id>, served as
    the real one. The API may move it (an app follows `status_url`, docs/mobile.md); a client that
    builds the path itself asks another one."""

    def __init__(self, app):
        self.wsgi_app, self.seen, self.status_urls = app.wsgi_app, [], []
        app.wsgi_app = self

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        if not path.startswith("/api/v1/"):
            return self.wsgi_app(environ, start_response)
        seen = Seen(
            environ["REQUEST_METHOD"],
            path,
            parse_qs(environ.get("QUERY_STRING", "")),
            environ.get("HTTP_IF_NONE_MATCH"),
        )
        self.seen.append(seen)
        if path.startswith(MOVED):
            environ["PATH_INFO"] = ATTEMPTS + path.removeprefix(MOVED)
        response = Response.from_app(self.wsgi_app, environ, buffered=True)
        seen.status, seen.etag = response.status_code, response.headers.get("ETag")
        if (seen.method, path, seen.status) == ("POST", "/api/v1/connect-attempts", 201):
            created = response.get_json()
            created["status_url"] = MOVED + created["attempt_id"]
            self.status_urls.append(created["status_url"])
            response.set_data(json.dumps(created))
        return response(environ, start_response)

    def attempt_requests(self) -> list[Seen]:
        """Every request for one attempt (its status, browser-closed), where the client sent it."""
        return [seen for seen in self.seen if seen.path.startswith((ATTEMPTS, MOVED))]


def signed_in(server, say, **options) -> MobileClient:
    client = MobileClient(server.url, say=say, **options)
    client.register("mobile@example.com", PASSWORD)
    client.sign_in("mobile@example.com", PASSWORD)
    return client


@pytest.mark.browser
@pytest.mark.parametrize(
    "return_mode, callback, outcome, final, caught",
    [
        ("page", "scheme", "success", "connected", "com.example.terraconnect://connect/success?attempt_id="),
        ("app", "scheme", "denied", "failed", "com.example.terraconnect://connect/failure?"),
        ("page", "https", "success", "connected", f"{LINKS}/connect/success?attempt_id="),  # tapped
        ("app", "https", "success", "connected", f"{LINKS}/connect/success?"),
    ],
)
def test_client_walks_the_whole_mobile_flow(start_live_server, return_mode, callback, outcome, final, caught):
    server = start_live_server(
        MOBILE_APP_SCHEME="com.example.terraconnect",
        MOBILE_UNIVERSAL_LINK_BASE=LINKS,
        STATUS_POLL_AFTER_MS=POLL_AFTER_MS,
    )
    steps: list[str] = []
    client = MobileClient(server.url, say=steps.append)
    client.register("mobile@example.com", "correct horse battery")
    client.sign_in("mobile@example.com", "correct horse battery")
    attempt = client.start_attempt(return_mode, ["OURA"], callback)
    prefix = link_prefix(callback, "com.example.terraconnect", LINKS)
    link = client.run_browser(attempt["url"], prefix, "OURA", "phone-user", outcome, CHROMIUM)
    assert link.startswith(caught)
    assert deep_link_attempt_id(link) == (attempt["attempt_id"] if return_mode == "page" else None)
    state = client.poll_until_final(attempt["status_url"], deadline_seconds=30)
    assert state["status"] == final
    assert [step.split(" ", 1)[0] for step in steps[:5]] == ["register", "1.", "2.", "3.", "4."]
    assert steps[-1].startswith(f"5. status {final}")


@pytest.mark.browser
@pytest.mark.parametrize("return_mode", ["page", "app"])
def test_a_failure_the_https_callback_does_not_catch_ends_through_browser_closed(start_live_server, return_mode):
    """An https callback names the success link only (docs/mobile.md, 7.1 and 8.1): a denial's failure
    link is not caught, the browser shows the links host's page, the user closes it, and the app
    reports `browser-closed` and asks the server, which says what Terra said."""
    server = start_live_server(
        MOBILE_APP_SCHEME="com.example.terraconnect",
        MOBILE_UNIVERSAL_LINK_BASE=LINKS,
        STATUS_POLL_AFTER_MS=POLL_AFTER_MS,
    )
    api = WatchedApi(server.app)
    arguments = ["--base-url", server.url, "--email", "denied@example.com", "--password", PASSWORD, "--register"]
    result = server.app.test_cli_runner().invoke(
        mobile_client_command,
        [*arguments, "--callback", "https", "--return", return_mode, "--outcome", "denied", "--chromium", CHROMIUM],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "4. no deep link; browser closed" in lines
    assert "   told the server the browser closed without a deep link" in lines
    assert lines[-1] == "done: failed (access_denied)"
    [status_url] = api.status_urls
    closed = [(seen.path, seen.status) for seen in api.attempt_requests() if seen.method == "POST"]
    assert closed == [(f"{status_url}/browser-closed", 202)]


def test_the_client_long_polls_the_status_url_with_the_last_etag(start_live_server):
    """`?wait=` on every poll, If-None-Match naming the last 200's ETag, a 304 (a held poll that saw
    nothing new) asked again, and only ever the `status_url` the attempt was created with."""
    server = start_live_server(STATUS_POLL_AFTER_MS=POLL_AFTER_MS)
    api = WatchedApi(server.app)
    steps: list[str] = []
    client = signed_in(server, steps.append, wait_seconds=2)  # 304s come 2 s apart
    attempt = client.start_attempt("page", ["OURA"], "scheme")
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(client.poll_until_final, attempt["status_url"], 60)
        wait_for(lambda: [seen for seen in api.attempt_requests() if seen.status == 304], timeout=30)
        finish_widget(attempt["url"], account="long-poller", provider="OURA")  # Terra's webhook: connected
        assert polling.result(timeout=60)["status"] == "connected"

    polls = api.attempt_requests()
    assert {(seen.method, seen.path) for seen in polls} == {("GET", attempt["status_url"])}
    assert all(seen.query == {"wait": ["2"]} for seen in polls)
    last_etag = None
    for seen in polls:
        assert seen.if_none_match == last_etag
        last_etag = seen.etag if seen.status == 200 else last_etag
    assert [seen.status for seen in polls][-1] == 200 and 304 in [seen.status for seen in polls]
    assert any(step.startswith("5. status not modified (304") for step in steps)


def test_the_client_waits_out_retry_after_when_too_many_long_polls_are_held(start_live_server):
    """The user's other phone holds the one long poll allowed (STATUS_MAX_WAITERS_PER_USER=1): the
    client is answered 429 `too_many_long_polls`, waits its Retry-After and polls on."""
    server = start_live_server(STATUS_POLL_AFTER_MS=POLL_AFTER_MS, STATUS_MAX_WAITERS_PER_USER="1")
    api = WatchedApi(server.app)
    steps: list[str] = []
    client = signed_in(server, steps.append, wait_seconds=2)
    attempt = client.start_attempt("page", ["OURA"], "scheme")
    with ThreadPoolExecutor(1) as pool, server.app.app_context():
        user_id = db.session.execute(db.select(User.id)).scalar_one()
        another_phones_token = 0  # no token has it: the slot counts against the user only
        with long_poll.caller_slot(another_phones_token, user_id):
            polling = pool.submit(client.poll_until_final, attempt["status_url"], 60)
            wait_for(lambda: [seen for seen in api.attempt_requests() if seen.status == 429], timeout=30)
        finish_widget(attempt["url"], account="second-phone", provider="OURA")
        assert polling.result(timeout=60)["status"] == "connected"
    assert "5. status 429 too_many_long_polls: asking again in 1 s" in steps
    statuses = [seen.status for seen in api.attempt_requests()]
    assert statuses[0] == 429 and statuses[-1] == 200


@pytest.mark.browser
def test_command_prints_each_step(live_server):
    live_server.app.config["STATUS_POLL_AFTER_MS"] = int(POLL_AFTER_MS)
    runner = live_server.app.test_cli_runner()
    result = runner.invoke(
        mobile_client_command,
        [
            "--base-url",
            live_server.url,
            "--email",
            "cli@example.com",
            "--password",
            "correct horse battery",
            "--register",
            "--chromium",
            CHROMIUM,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "deep link caught: com.example.terraconnect://connect/success" in result.output
    assert result.output.strip().endswith("done: connected")
    # docs/walkthrough.md quotes the start of each numbered line the client prints.
    quoted = {number: start for start, number in re.findall(r"`((\d)\. [^`]+)`", WALKTHROUGH.read_text())}
    numbered = [line for line in result.output.splitlines() if re.match(r"\d\. ", line)]
    assert sorted(quoted) == ["1", "2", "3", "4", "5"] and len(numbered) >= 5
    assert [line for line in numbered if not line.startswith(quoted[line[0]])] == []


@pytest.mark.browser
@pytest.mark.parametrize("provider", ["APPLE", "HEALTH_CONNECT"])
def test_command_connects_an_sdk_provider_through_the_whole_sdk_path(live_server, provider):
    live_server.app.config["STATUS_POLL_AFTER_MS"] = int(POLL_AFTER_MS)
    email, password = f"{provider.lower()}@example.com", "correct horse battery"
    arguments = ["--base-url", live_server.url, "--email", email, "--password", password, "--register"]
    result = live_server.app.test_cli_runner().invoke(
        mobile_client_command, [*arguments, "--provider", provider, "--chromium", CHROMIUM]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"resource={provider}" in next(line for line in lines if line.startswith("4. deep link caught"))
    assert any(line.startswith("5. status sdk_required") for line in lines)
    assert [line.split(" ", 1)[0] for line in lines[-4:]] == ["6.", "7.", "8.", "done:"]
    assert lines[-1] == "done: connected (through Terra's mobile SDK)"
    # The app sees the connection too, as Terra's auth webhook made it.
    client = MobileClient(live_server.url, say=lambda _: None)
    client.sign_in(email, password)
    listed = client.http.get(live_server.url + "/api/v1/connections", timeout=10).json()["connections"]
    assert [(row["provider"], row["status"]) for row in listed] == [(provider, "active")]


def test_the_init_connection_stand_in_is_the_embedded_sandboxs_or_beside_terras_paths():
    embedded = {"TERRA_MODE": "sandbox", "TERRA_API_BASE_URL": "http://127.0.0.1:5000/sandbox/v2"}
    # `PORT=5811 make run` serves the sandbox on 5811; the client's own settings still say 5000.
    assert sandbox_init_connection_url("http://127.0.0.1:5811/", embedded) == (
        "http://127.0.0.1:5811/sandbox/sdk/init-connection"
    )
    for base in ("http://t.example/sandbox/v2", "http://t.example/sandbox/api/v2/"):  # a separate sandbox
        live = {"TERRA_MODE": "live", "TERRA_API_BASE_URL": base}
        assert (
            sandbox_init_connection_url("https://app.example", live) == "http://t.example/sandbox/sdk/init-connection"
        )


@pytest.mark.browser
def test_command_on_another_port_finds_the_sandbox_on_the_server_it_talks_to(live_server, database_uri):
    """As a newcomer runs it: the server on its own port, the client with the default settings (whose
    sandbox would be on 5000), pointed at the server by --base-url alone."""
    live_server.app.config["STATUS_POLL_AFTER_MS"] = int(POLL_AFTER_MS)
    defaults = create_app(environ=_environ(database_uri))
    assert urlsplit(defaults.config["TERRA_API_BASE_URL"]).port != urlsplit(live_server.url).port
    arguments = ["--base-url", live_server.url, "--email", "port@example.com", "--password", PASSWORD]
    result = defaults.test_cli_runner().invoke(
        mobile_client_command, [*arguments, "--register", "--provider", "APPLE", "--chromium", CHROMIUM]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "done: connected (through Terra's mobile SDK)"


def test_runs_as_a_module_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, "-m", "tools.mobile_client", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Play the mobile app against a running server" in result.stdout


def test_production_cli_does_not_carry_it(tmp_path):
    """`flask --help` under production settings: the app's own commands, not this developer tool."""
    environ = {**PRODUCTION, "DATABASE_URL": f"sqlite:///{tmp_path}/p.sqlite"}
    flask_command = FlaskGroup(create_app=lambda: create_app(environ=environ))
    result = CliRunner().invoke(flask_command, ["--help"])
    assert result.exit_code == 0, result.output
    assert "webhooks" in result.output and "terra" in result.output
    assert "mobile-client" not in result.output


def test_backoff_has_full_jitter_and_respects_the_server():
    random.seed(7)
    backoff = Backoff(base=1, cap=8)
    delays = [backoff.next_delay(0) for _ in range(8)]
    ceilings = [min(8, 2**n) for n in range(8)]
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(delays, ceilings))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    assert Backoff(base=1, cap=8).next_delay(server_minimum=2.5) >= 2.5


class SlowImagePage(BaseHTTPRequestHandler):
    """A page whose image takes a second: a request still in flight when the browser is closed, as the
    return page's favicon was (the flake of test_mobile_devices.py, issue 19 §5)."""

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(1)
        body = b'<html><body><img src="/slow"></body></html>' if self.path == "/" else b"x"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the browser may be gone by then
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.browser
def test_the_link_catcher_stops_before_its_context_closes_with_a_request_in_flight(stub_server):
    """Else the route handler fetches in a closed context, and the next call on the browser fails."""
    from playwright.sync_api import sync_playwright

    server = stub_server(SlowImagePage)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context()
        page = context.new_page()
        catcher = AppLinkCatcher(page, "com.example.terraconnect:")
        page.goto(f"http://127.0.0.1:{server.server_port}/", wait_until="domcontentloaded")
        page.wait_for_timeout(300)  # the image's request is in the route handler now
        catcher.stop()
        context.close()
        browser.new_page().goto("about:blank")  # the next case's first call on the module's browser
        browser.close()
