"""Faults from Terra, over real HTTP: the sandbox misbehaving on purpose (sandbox/faults.py), the
client's retries of safe reads (terra_integration/client.py), what the web pages and the mobile API show for each
fault, and webhook deliveries that come twice, out of order, late, or after the app answered 500.

The REST faults are switched per run (`app.config["SANDBOX_FAULTS"]`, or `SANDBOX_FAULTS` in the
environment) or per request (`X-Sandbox-Fault`). Timeouts are made small instead of waiting.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from config import ConfigError, read_settings
from extensions import db
from models import ConnectAttempt, Connection, User, WebhookEvent
from sandbox.delivery import deliver
from sandbox.models import SandboxSession
from sandbox.settings import SandboxSettings
from sandbox.traffic import traffic_of
from terra_integration.client import TerraClient, TerraRejected, TerraUnavailable
from tests.conftest import LIVE_TERRA, Browser, wait_for
from tests.helpers import finish_widget, lose_webhooks, token_of

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
NOBODY = "00000000-0000-0000-0000-000000000000"
# Small numbers so that each fault costs well under two seconds.
# Only the slow case shortens the Terra timeout (to 0.2 s): a loaded machine can miss a short one on
# a well-behaved call, as CI once did with 0.5 s.
FAST = {"SANDBOX_SLOW_SECONDS": "1.5", "SANDBOX_RETRY_AFTER_SECONDS": "0"}


# -- helpers --------------------------------------------------------------------------------------


def terra_headers(server) -> dict:
    return {"dev-id": server.app.config["TERRA_DEV_ID"], "x-api-key": server.app.config["TERRA_API_KEY"]}


def requests_to(server, *endpoints: str) -> int:
    """How many calls the sandbox received on these Terra endpoints (e.g. "user_info")."""
    traffic = traffic_of(server.app)
    return sum(len(traffic.requests("sandbox." + endpoint)) for endpoint in endpoints)


def assert_calls(server, expected: int, *endpoints: str) -> None:
    """The sandbox received exactly `expected` calls on these endpoints. A try that the client gave
    up on (a timeout) can reach the sandbox's handler a moment later on a busy machine: wait for it."""
    wait_for(lambda: requests_to(server, *endpoints) >= expected)
    assert requests_to(server, *endpoints) == expected


def fast_client(server, **options) -> TerraClient:
    """Short pauses between tries. The timeout is generous: only the slow fault's tests shorten it
    (to `SLOW_TIMEOUT`), since a loaded machine can miss a short one on an answer that is quick."""
    return TerraClient.from_config(
        server.app.config, **{"timeout": 5.0, "backoff_base": 0.01, "backoff_cap": 0.05} | options
    )


def signed_in_browser(server, email: str = "ada@example.com") -> Browser:
    browser = Browser(server.url)
    response = browser.register(email=email, password=PASSWORD)
    assert response.status_code == 200 and "Your connections" in response.text
    return browser


def press_connect(browser: Browser) -> str:
    response = browser.submit("/connections", "/connections/connect", allow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def attempt_status(browser: Browser, return_url: str) -> dict:
    response = browser.get("/connect/attempts/status", params={"attempt": token_of(return_url)})
    assert response.status_code == 200, response.text
    return response.json()


def terra_user_id(return_url: str) -> str:
    return parse_qs(urlsplit(return_url).query)["user_id"][0]


def connect_a_device(server, browser: Browser, account: str = "ada-garmin") -> dict:
    """A whole successful web flow (no faults); returns the attempt once connected."""
    return_url = finish_widget(press_connect(browser), account=account)
    return wait_for(lambda: (state := attempt_status(browser, return_url))["status"] == "connected" and state)


def api_client(server, email: str = "ada@example.com") -> requests.Session:
    Browser(server.url).register(email=email, password=PASSWORD)
    response = requests.post(server.url + "/api/v1/tokens", json={"email": email, "password": PASSWORD}, timeout=10)
    assert response.status_code == 201, response.text
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + response.json()["access_token"]
    return session


def rows(server, model, *where) -> list:
    with server.app.app_context():
        return db.session.scalars(select(model).where(*where)).all()


def snapshot(server) -> dict:
    """The app's own tables, in a comparable form (the sandbox's tables are Terra's side)."""
    with server.app.app_context():
        return {
            "users": db.session.scalar(select(func.count()).select_from(User)),
            "attempts": [
                (a.id, a.channel, a.status, a.error)
                for a in db.session.scalars(select(ConnectAttempt).order_by(ConnectAttempt.created_at))
            ],
            "connections": [
                (c.id, c.terra_user_id, c.status)
                for c in db.session.scalars(select(Connection).order_by(Connection.id))
            ],
            "webhook_events": sorted(e.trace_id for e in db.session.scalars(select(WebhookEvent))),
        }


def new_attempts(before: dict, after: dict) -> list[tuple]:
    known = {attempt[0] for attempt in before["attempts"]}
    return [attempt[1:] for attempt in after["attempts"] if attempt[0] not in known]


def assert_unchanged_apart_from_attempts(before: dict, after: dict) -> None:
    assert after["users"] == before["users"]
    assert after["connections"] == before["connections"]
    assert after["webhook_events"] == before["webhook_events"]
    assert after["attempts"][: len(before["attempts"])] == before["attempts"]


def assert_readable(response: requests.Response, *texts: str) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text
    for text in texts:
        assert text in response.text, f"{text!r} not in the answer:\n{response.text[:2000]}"


# -- the faults themselves, on the wire -----------------------------------------------------------


def test_every_fault_name_is_known_to_the_configuration():
    assert read_settings(SandboxSettings, {"SANDBOX_FAULTS": " slow, 5xx ,late"}).SANDBOX_FAULTS == [
        "slow",
        "5xx",
        "late",
    ]
    assert read_settings(SandboxSettings, {}).SANDBOX_FAULTS == []
    with pytest.raises(ConfigError, match="SANDBOX_FAULTS.*'sometimes'.*slow, 5xx, 429"):
        read_settings(SandboxSettings, {"SANDBOX_FAULTS": "5xx,sometimes"})


def test_a_run_fault_from_the_environment_applies_to_terra_endpoints_only(start_live_server):
    server = start_live_server(SANDBOX_FAULTS="5xx,duplicate")
    assert server.app.config["SANDBOX_FAULTS"] == ["5xx", "duplicate"]
    assert requests.get(server.url + "/sandbox/v2/integrations", timeout=5).status_code == 503
    # The widget pages, the automation endpoint and the console are the sandbox's own, not Terra's API.
    assert requests.get(server.url + "/sandbox/", timeout=5).status_code == 200
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/sandbox/v2/userInfo?user_id=x", "/sandbox/api/v2/userInfo?user_id=x", "/sandbox/v2/integrations/detailed"],
)
def test_5xx_is_a_503_with_a_json_body_in_the_shape_of_the_host(live_server, path):
    response = requests.get(
        live_server.url + path, headers={**terra_headers(live_server), "X-Sandbox-Fault": "5xx"}, timeout=5
    )
    assert response.status_code == 503
    body = response.json()
    assert "temporarily unavailable" in (body.get("message") or body.get("detail"))
    if "/api/v2/" in path:
        assert response.headers["Content-Type"] == "application/problem+json" and body["title"] == "service unavailable"
    else:
        assert body["status"] == "error"


def test_429_carries_retry_after_and_terras_body(live_server):
    live_server.app.config["SANDBOX_RETRY_AFTER_SECONDS"] = 7
    response = requests.post(
        live_server.url + "/sandbox/api/widget/session",
        json={},
        timeout=5,
        headers={**terra_headers(live_server), "X-Sandbox-Fault": "429"},
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json() == {"detail": "rate limit exceeded"}
    assert rows(live_server, SandboxSession) == []  # refused before any work


def test_malformed_is_a_200_whose_body_is_not_json(live_server):
    response = requests.get(
        live_server.url + "/sandbox/v2/integrations/detailed", timeout=5, headers={"X-Sandbox-Fault": "malformed"}
    )
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_reset_closes_the_connection_without_an_answer_and_the_server_carries_on(live_server):
    with pytest.raises(requests.ConnectionError):
        requests.get(live_server.url + "/sandbox/v2/integrations", headers={"X-Sandbox-Fault": "reset"}, timeout=5)
    # Raw socket: the peer closes without sending a single byte.
    with socket.create_connection(("127.0.0.1", int(live_server.url.rsplit(":", 1)[1])), timeout=5) as raw:
        raw.sendall(b"GET /sandbox/v2/integrations HTTP/1.1\r\nHost: x\r\nX-Sandbox-Fault: reset\r\n\r\n")
        assert raw.recv(1024) == b""
    assert requests.get(live_server.url + "/sandbox/v2/integrations", timeout=5).status_code == 200


def test_slow_answers_after_the_clients_timeout_but_does_the_work(live_server):
    live_server.app.config["SANDBOX_SLOW_SECONDS"] = 1.0
    with pytest.raises(requests.Timeout):
        requests.post(
            live_server.url + "/sandbox/api/widget/session",
            json={"reference_id": "slow"},
            timeout=0.3,
            headers={**terra_headers(live_server), "X-Sandbox-Fault": "slow"},
        )
    # Terra created the session all the same: the reason a timed-out POST must not be repeated.
    assert [row.reference_id for row in wait_for(lambda: rows(live_server, SandboxSession))] == ["slow"]
    started = time.monotonic()
    answer = requests.get(live_server.url + "/sandbox/v2/integrations", headers={"X-Sandbox-Fault": "slow"}, timeout=5)
    assert answer.status_code == 200 and time.monotonic() - started >= 1.0


def test_an_unknown_fault_name_is_refused(live_server):
    response = requests.get(
        live_server.url + "/sandbox/v2/integrations", headers={"X-Sandbox-Fault": "flaky"}, timeout=5
    )
    assert response.status_code == 400 and "unknown fault 'flaky'" in response.json()["message"]
    live_server.app.config["SANDBOX_FAULTS"] = ["5xx", "flaky"]  # a typo at runtime: refused before any work
    response = requests.get(live_server.url + "/sandbox/v2/integrations", timeout=5)
    assert response.status_code == 500 and "SANDBOX_FAULTS: unknown fault 'flaky'" in response.json()["message"]


def test_the_console_shows_and_switches_the_run_faults(live_server):
    page = requests.get(live_server.url + "/sandbox/", timeout=5)
    assert '<code id="sandbox-faults">none</code>' in page.text
    assert re.findall(r'name="fault" value="([^"]+)"', page.text) == [
        *("slow", "5xx", "429", "reset", "malformed"),  # Terra's API
        *("wrong_base_url", "invalid_dev_id", "rejected_api_key"),  # misconfigurations
        *("duplicate", "reorder", "late", "stale_signature", "s3_payload"),  # webhooks
        *("relink_across_users", "reauth_keeps_old_user", "foreign_flow_id", "appended_redirect"),  # widget flows
    ]
    switched = requests.post(live_server.url + "/sandbox/faults", data={"fault": ["late", "429", "bogus"]}, timeout=5)
    assert switched.status_code == 200
    assert live_server.app.config["SANDBOX_FAULTS"] == ["429", "late"]
    assert '<code id="sandbox-faults">429,late</code>' in switched.text
    requests.post(live_server.url + "/sandbox/faults", data={}, timeout=5)
    assert live_server.app.config["SANDBOX_FAULTS"] == []


# -- the client: clear errors, reads retried, writes never ----------------------------------------

SLOW_TIMEOUT = 0.3  # against SANDBOX_SLOW_SECONDS=1.0
CLIENT_FAULTS = {
    "slow": f"did not answer within {SLOW_TIMEOUT} s",
    "5xx": "Terra answered 503: Service temporarily unavailable",
    "429": "Terra answered 429: rate limit exceeded",
    "reset": "Terra closed the connection without answering",
    "malformed": "Terra answered 200 with a body that is not JSON",
}
URLS = {"success_url": "https://app.example/s", "failure_url": "https://app.example/f"}
CLIENT_CALLS = {
    # name: (call, the sandbox endpoint it reaches, tries expected)
    "create_widget_session": (lambda t: t.create_widget_session(reference_id="r", **URLS), "create_widget_session", 1),
    "authenticate_user": (
        lambda t: t.authenticate_user(provider="OURA", reference_id="r", **URLS),
        "authenticate_user",
        1,
    ),
    "deauthenticate_user": (lambda t: t.deauthenticate_user(NOBODY), "deauthenticate_user", 1),
    "generate_auth_token": (lambda t: t.generate_auth_token(), "generate_auth_token", 1),
    "user_info": (lambda t: t.user_info(NOBODY), "user_info", 3),
    "users_by_reference": (lambda t: t.users_by_reference("r"), "user_info", 3),
    "integrations_detailed": (lambda t: t.integrations_detailed(), "integrations_detailed", 3),
}


@pytest.mark.parametrize("call_name", CLIENT_CALLS)
@pytest.mark.parametrize("fault", CLIENT_FAULTS)
def test_each_fault_against_the_client(live_server, fault, call_name):
    live_server.app.config.update(SANDBOX_FAULTS=[fault], SANDBOX_SLOW_SECONDS=1.0, SANDBOX_RETRY_AFTER_SECONDS=0)
    call, endpoint, tries = CLIENT_CALLS[call_name]
    started = time.monotonic()
    with pytest.raises(TerraUnavailable) as raised:
        call(fast_client(live_server, **({"timeout": SLOW_TIMEOUT} if fault == "slow" else {})))
    assert time.monotonic() - started < 6  # well under one default 10 s timeout
    message = str(raised.value)
    assert CLIENT_FAULTS[fault] in message
    assert_calls(live_server, tries, endpoint)
    assert ("(tried 3 times)" in message) == (tries == 3)
    assert raised.value.code == "terra_unavailable"
    assert raised.value.status == {"5xx": 503, "429": 429, "malformed": 200}.get(fault)


MISCONFIGURATIONS = {
    "wrong_base_url": "Terra answered 404 with text/html at ",
    "invalid_dev_id": "Terra answered 404: Invalid dev-id was provided",
    "rejected_api_key": "Terra answered 401: unauthorized",
}
USER_CALLS = ("deauthenticate_user", "user_info", "users_by_reference")


@pytest.mark.parametrize("call_name", USER_CALLS)
@pytest.mark.parametrize("fault", MISCONFIGURATIONS)
def test_a_misconfiguration_is_an_error_tried_once_never_a_missing_user(live_server, fault, call_name):
    """Reconciliation revokes what Terra says it does not have, and disconnecting ends a connection
    Terra says is gone: a wrong URL, dev-id or key must never read as Terra's "user not found"."""
    live_server.app.config["SANDBOX_FAULTS"] = [fault]
    call, endpoint, _ = CLIENT_CALLS[call_name]
    with pytest.raises(TerraRejected) as raised:
        call(fast_client(live_server))
    assert type(raised.value) is TerraRejected  # not TerraNotFound
    assert str(raised.value).startswith(MISCONFIGURATIONS[fault])
    assert_calls(live_server, 1, endpoint)  # a misconfiguration is not worth a second try


def test_a_timed_out_widget_session_is_not_requested_twice(live_server):
    live_server.app.config.update(SANDBOX_FAULTS=["slow"], SANDBOX_SLOW_SECONDS=1.0)
    with pytest.raises(TerraUnavailable, match="did not answer"):
        fast_client(live_server, timeout=SLOW_TIMEOUT).create_widget_session(reference_id="once", **URLS)
    # The client has given up: had it tried again, it would have been before raising.
    assert_calls(live_server, 1, "create_widget_session")
    assert len(wait_for(lambda: rows(live_server, SandboxSession))) == 1  # the slow try's session


def test_a_read_that_recovers_is_answered_on_the_next_try(live_server):
    config = live_server.app.config
    config["SANDBOX_FAULTS"] = ["5xx"]
    # The client's pause between tries is where Terra "recovers".
    terra = fast_client(live_server, sleep=lambda seconds: config.update(SANDBOX_FAULTS=[]))
    providers = terra.integrations_detailed()
    assert "GARMIN" in {provider.code for provider in providers}
    assert_calls(live_server, 2, "integrations_detailed")
    assert [request.faults for request in traffic_of(live_server.app).requests()] == [("5xx",), ()]


def test_retry_after_is_waited_for_exactly(live_server):
    live_server.app.config.update(SANDBOX_FAULTS=["429"], SANDBOX_RETRY_AFTER_SECONDS=1)
    waits: list[float] = []
    terra = fast_client(live_server, sleep=waits.append)
    with pytest.raises(TerraUnavailable, match=r"rate limit exceeded \(retry after 1 s\) \(tried 3 times\)") as raised:
        terra.user_info(NOBODY)
    assert waits == [1.0, 1.0] and raised.value.retry_after == 1


def test_retry_after_beyond_the_cap_ends_the_retries_at_once(live_server):
    live_server.app.config.update(SANDBOX_FAULTS=["429"], SANDBOX_RETRY_AFTER_SECONDS=120)
    started = time.monotonic()
    with pytest.raises(TerraUnavailable, match=r"retry after 120 s\)$"):
        fast_client(live_server, max_retry_after=5).integrations_detailed()
    assert_calls(live_server, 1, "integrations_detailed")
    assert time.monotonic() - started < 10  # not the 120 s asked for


def test_the_retry_budget_bounds_the_total_time(live_server):
    live_server.app.config.update(SANDBOX_FAULTS=["slow"], SANDBOX_SLOW_SECONDS=1.5)
    with pytest.raises(TerraUnavailable, match="tried 2 times"):
        # Each try times out after 0.5 s: the second starts well within the budget, even on a loaded
        # machine, and a third could not start before 1.0 s.
        fast_client(live_server, timeout=0.5, retry_budget=0.9).user_info(NOBODY)
    assert_calls(live_server, 2, "user_info")


def test_default_retry_settings_are_small():
    terra = TerraClient.from_config(LIVE_TERRA, timeout=1)
    assert (terra.read_attempts, terra.backoff_cap, terra.max_retry_after, terra.retry_budget) == (3, 2.0, 5.0, 8.0)
    started = time.monotonic()
    with pytest.raises(TerraUnavailable, match=r"could not be reached \(ConnectionError\) \(tried 3 times\)"):
        terra.integrations_detailed()
    assert time.monotonic() - started < 5  # connection refused is quick; two short waits at most 0.75 s


# -- each fault through the web pages and the mobile API -------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    message: str  # what the person reads
    code: str  # the attempt's error code and the API's error code
    fault: str | None = None  # a REST fault, switched on for the run
    environ: dict = field(default_factory=dict)  # or settings that make Terra refuse

    def __str__(self) -> str:
        return self.name


REST_CASES = [
    # Every call to Terra times out here, each read three times: the shortest timeout keeps it quick.
    Case(
        "slow",
        "Terra did not answer within 0.2 s",
        "terra_unavailable",
        fault="slow",
        environ={"TERRA_TIMEOUT_SECONDS": "0.2"},
    ),
    Case("5xx", "Terra answered 503: Service temporarily unavailable", "terra_unavailable", fault="5xx"),
    Case("429", "Terra answered 429: rate limit exceeded", "terra_unavailable", fault="429"),
    Case("reset", "Terra closed the connection without answering", "terra_unavailable", fault="reset"),
    Case("malformed", "Terra answered 200 with a body that is not JSON", "terra_unavailable", fault="malformed"),
]
SETTING_CASES = [
    Case(
        "legacy_410",
        "Terra no longer serves the legacy widget endpoint for this account (410)",
        "legacy_widget_endpoint_gone",
        environ={"TERRA_WIDGET_API": "legacy", "SANDBOX_LEGACY_GONE": "true"},
    ),
    Case(
        "user_cap",
        "Terra answered 403: User limit reached",
        "terra_rejected",
        environ={"SANDBOX_USER_CAP_MODE": "session", "SANDBOX_USER_CAP": "0"},
    ),
]


def start_faulty(start_live_server, case: Case, *, now: bool = True):
    """A live server with the case's settings and, if `now`, its fault switched on from the start.
    Otherwise `switch_on` brings the fault and its timeout later, after a set-up that needs Terra."""
    if not now:
        return start_live_server(**FAST)
    environ = {**FAST, **case.environ}
    if case.fault:
        environ["SANDBOX_FAULTS"] = case.fault  # per run, from the environment
    return start_live_server(**environ)


def switch_on(server, case: Case) -> None:
    server.app.config["SANDBOX_FAULTS"] = [case.fault]  # per run, at runtime
    if "TERRA_TIMEOUT_SECONDS" in case.environ:
        server.app.extensions["terra_integration"].client.timeout = float(case.environ["TERRA_TIMEOUT_SECONDS"])


@pytest.mark.parametrize("case", REST_CASES + SETTING_CASES, ids=str)
def test_connect_button_shows_a_flash_on_the_dashboard(start_live_server, case):
    server = start_faulty(start_live_server, case)
    browser = signed_in_browser(server)
    before = snapshot(server)

    page = browser.submit("/connections", "/connections/connect")
    assert page.status_code == 200 and urlsplit(page.url).path == "/connections"
    assert_readable(page, "Could not start a connection: " + case.message, "state-failed")

    after = snapshot(server)
    assert_unchanged_apart_from_attempts(before, after)
    assert new_attempts(before, after) == [("web", "failed", case.code)]
    assert_calls(server, 1, "create_widget_session", "generate_widget_session")


@pytest.mark.parametrize("case", REST_CASES, ids=str)
def test_custom_ui_provider_page_and_provider_button(start_live_server, case):
    server = start_faulty(start_live_server, case)
    browser = signed_in_browser(server)
    before = snapshot(server)

    page = browser.get("/connections/providers")
    assert page.status_code == 502
    assert_readable(page, "Could not load the provider list: " + case.message, "(tried 3 times)")
    assert_calls(server, 3, "integrations_detailed")  # a read: retried

    # The button posts to authenticateUser: tried once, and the person lands back on the list.
    response = browser.submit("/connections", "/connections/connect/OURA")
    assert urlsplit(response.url).path == "/connections/providers"
    assert_readable(response, "Could not start a connection: " + case.message)
    assert_calls(server, 1, "authenticate_user")

    after = snapshot(server)
    assert_unchanged_apart_from_attempts(before, after)
    assert new_attempts(before, after) == [("web", "failed", case.code)]


@pytest.mark.parametrize("case", REST_CASES, ids=str)
def test_disconnect_keeps_the_connection_and_says_why(start_live_server, case):
    server = start_faulty(start_live_server, case, now=False)
    browser = signed_in_browser(server)
    connection = connect_a_device(server, browser)["connection"]
    before = snapshot(server)
    switch_on(server, case)

    page = browser.submit("/connections", f"/connections/{connection['id']}/disconnect", {"confirm": "yes"})
    assert page.status_code == 200 and urlsplit(page.url).path == "/connections"
    assert_readable(page, "Could not disconnect Garmin: " + case.message)
    assert_calls(server, 1, "deauthenticate_user")  # a DELETE: never repeated
    if case.fault == "slow":
        # Terra did deauthenticate, only too late to say so: its deauth webhook settles it.
        wait_for(lambda: [row.status for row in rows(server, Connection)] == ["revoked"])
    else:
        assert 'data-status="active"' in page.text
        assert snapshot(server) == before


@pytest.mark.parametrize("case", REST_CASES, ids=str)
def test_return_page_waits_when_the_userinfo_check_fails_and_settles_once_terra_recovers(start_live_server, case):
    server = start_faulty(start_live_server, case, now=False)
    server.app.config["USERINFO_CHECK_AFTER_SECONDS"] = 0
    lose_webhooks(server.app.config)
    browser = signed_in_browser(server)
    return_url = finish_widget(press_connect(browser))  # no webhook will come: only userInfo can tell
    switch_on(server, case)
    before = requests_to(server, "user_info")  # the dashboard's reconciliation at sign-up

    page = browser.get(return_url)
    assert page.status_code == 200
    assert_readable(page, "Finishing your connection")
    assert attempt_status(browser, return_url)["status"] == "pending"
    # At least one check, a read tried three times (not a multiple of three: a check begun before
    # `before` was counted, the sign-up's, may still have been retrying then).
    wait_for(lambda: requests_to(server, "user_info") - before >= 3)

    server.app.config["SANDBOX_FAULTS"] = []
    state = attempt_status(browser, return_url)
    assert state["status"] == "connected" and state["connection"]["terra_user_id"] == terra_user_id(return_url)


@pytest.mark.parametrize("case", REST_CASES + SETTING_CASES, ids=str)
def test_mobile_api_create_attempt_is_a_502_with_a_code(start_live_server, case):
    server = start_faulty(start_live_server, case)
    api = api_client(server)
    before = snapshot(server)

    response = api.post(server.url + "/api/v1/connect-attempts", json={}, timeout=10)
    assert response.status_code == 502
    assert response.headers["Cache-Control"] == "no-store"
    assert_readable(response)
    assert response.json()["error"]["code"] == case.code
    assert case.message in response.json()["error"]["message"]

    after = snapshot(server)
    assert_unchanged_apart_from_attempts(before, after)
    assert new_attempts(before, after) == [("mobile", "failed", case.code)]
    assert_calls(server, 1, "create_widget_session", "generate_widget_session")


@pytest.mark.parametrize("case", REST_CASES, ids=str)
def test_mobile_api_provider_check_and_delete_are_502s_with_a_code(start_live_server, case):
    server = start_faulty(start_live_server, case, now=False)
    api = api_client(server)
    # A connection to delete later, made while Terra behaves.
    attempt = api.post(server.url + "/api/v1/connect-attempts", json={}, timeout=10).json()
    finish_widget(attempt["url"])
    wait_for(lambda: api.get(server.url + attempt["status_url"], timeout=10).json()["status"] == "connected")
    [connection] = api.get(server.url + "/api/v1/connections", timeout=10).json()["connections"]
    before = snapshot(server)
    switch_on(server, case)

    listed = api.post(server.url + "/api/v1/connect-attempts", json={"providers": ["GARMIN"]}, timeout=10)
    assert listed.status_code == 502 and listed.json()["error"]["code"] == case.code
    assert case.message in listed.json()["error"]["message"] and "(tried 3 times)" in listed.json()["error"]["message"]
    assert_calls(server, 3, "integrations_detailed")
    assert snapshot(server) == before  # the provider check fails before any attempt exists

    deleted = api.delete(server.url + f"/api/v1/connections/{connection['id']}", timeout=10)
    assert deleted.status_code == 502 and deleted.json()["error"]["code"] == case.code
    assert_readable(deleted, "could not disconnect: " + case.message)
    assert_calls(server, 1, "deauthenticate_user")
    if case.fault == "slow":
        wait_for(lambda: [row.status for row in rows(server, Connection)] == ["revoked"])
    else:
        assert snapshot(server) == before


@pytest.mark.parametrize("case", REST_CASES, ids=str)
def test_mobile_api_sdk_token_is_a_502_with_a_code_and_tried_once(start_live_server, case):
    server = start_faulty(start_live_server, case)
    api = api_client(server)
    before = snapshot(server)

    response = api.post(server.url + "/api/v1/sdk-tokens", timeout=10)
    assert response.status_code == 502 and response.headers["Cache-Control"] == "no-store"
    assert_readable(response, case.message)
    assert response.json()["error"]["code"] == case.code
    assert_calls(server, 1, "generate_auth_token")  # a POST that makes a token: never tried twice
    assert snapshot(server) == before


def test_mobile_api_sdk_token_refused_by_terra_is_a_502_in_terras_words(live_server):
    live_server.app.extensions["terra_integration"].client.dev_id = "not-this-accounts"
    response = api_client(live_server).post(live_server.url + "/api/v1/sdk-tokens", timeout=10)
    assert response.status_code == 502
    assert response.json()["error"] == {
        "code": "terra_not_found",
        "message": "Terra answered 404: invalid dev-id or x-api-key",
    }


# -- reset under gunicorn's threaded workers --------------------------------------------------------


@pytest.fixture
def gunicorn_with_reset(start_gunicorn, tmp_path, app):  # `app` empties the tables afterwards
    url = start_gunicorn(WEB_CONCURRENCY="2", TERRA_TIMEOUT_SECONDS="2", SANDBOX_FAULTS="reset")
    return url, tmp_path / f"gunicorn-{url.rsplit(':', 1)[1]}.log"


def test_reset_under_gunicorn(gunicorn_with_reset):
    url, log_path = gunicorn_with_reset
    for _ in range(4):  # several requests, so both workers get some
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/sandbox/v2/integrations", timeout=5)
    assert requests.get(url + "/healthz", timeout=5).status_code == 200

    browser = signed_in_browser(SimpleNamespace(url=url))
    page = browser.get("/connections/providers")
    assert page.status_code == 502
    assert_readable(page, "Terra closed the connection without answering (tried 3 times)")
    page = browser.submit("/connections", "/connections/connect")
    assert_readable(page, "Could not start a connection: Terra closed the connection without answering")
    log = log_path.read_text()
    assert "Traceback" not in log and "Error handling request" not in log


# -- webhook faults ---------------------------------------------------------------------------------


def auth_posts(server, event_type: str = "auth") -> list:
    return [post for post in traffic_of(server.app).webhooks() if post.event_type == event_type]


def test_duplicate_delivery_gives_one_inbox_row_and_one_connection(live_server):
    browser = signed_in_browser(live_server)
    # Per request: the header on the automation endpoint makes this flow's webhooks come twice.
    return_url = finish_widget(press_connect(browser), headers={"X-Sandbox-Fault": "duplicate"})
    wait_for(lambda: attempt_status(browser, return_url)["status"] == "connected")
    posts = wait_for(lambda: (ok := [p for p in auth_posts(live_server) if p.ok]) and len(ok) == 2 and ok)
    assert {post.copy for post in posts} == {1, 2} and len({post.trace_id for post in posts}) == 1

    [event] = rows(live_server, WebhookEvent)
    assert event.trace_id == posts[0].trace_id and event.outcome == "applied"
    [connection] = rows(live_server, Connection)
    assert (connection.terra_user_id, connection.status) == (terra_user_id(return_url), "active")


def test_duplicates_of_every_event_for_a_whole_run(live_server):
    live_server.app.config["SANDBOX_FAULTS"] = ["duplicate"]
    browser = signed_in_browser(live_server)
    connect_a_device(live_server, browser, account="same")
    second = finish_widget(press_connect(browser), account="same")  # a re-auth: user_reauth and auth
    wait_for(lambda: len([p for p in traffic_of(live_server.app).webhooks() if p.ok]) == 6)
    assert sorted(event.event_type for event in rows(live_server, WebhookEvent)) == ["auth", "auth", "user_reauth"]
    wait_for(
        lambda: (
            [(c.terra_user_id, c.status) for c in rows(live_server, Connection)] == [(terra_user_id(second), "active")]
        )
    )


def test_reorder_user_reauth_after_auth_keeps_one_connection_with_the_new_id(live_server):
    browser = signed_in_browser(live_server)
    first = connect_a_device(live_server, browser, account="same")["connection"]
    live_server.app.config.update(
        SANDBOX_FAULTS=["reorder"], SANDBOX_REORDER_WINDOW_SECONDS=0.2, SANDBOX_REAUTH_ORDER="reauth_first"
    )
    return_url = finish_widget(press_connect(browser), account="same")
    new_id = terra_user_id(return_url)

    # Terra emitted user_reauth then auth; they arrive the other way round.
    wait_for(lambda: len(auth_posts(live_server, "user_reauth")) == 1)
    arrived = [post.event_type for post in traffic_of(live_server.app).webhooks() if post.ok]
    assert arrived == ["auth", "auth", "user_reauth"]
    wait_for(
        lambda: (
            [(c.id, c.terra_user_id, c.status) for c in rows(live_server, Connection)]
            == [(first["id"], new_id, "active")]
        )
    )
    state = attempt_status(browser, return_url)
    assert state["status"] == "connected" and state["connection"]["id"] == first["id"]


def test_reorder_deauth_before_auth_ends_revoked(live_server):
    live_server.app.config.update(SANDBOX_FAULTS=["reorder"], SANDBOX_REORDER_WINDOW_SECONDS=1.0)
    browser = signed_in_browser(live_server)
    return_url = finish_widget(press_connect(browser))
    user_id = terra_user_id(return_url)
    # While the auth is still held, the user is deauthenticated on Terra's side.
    sent = requests.post(live_server.url + f"/sandbox/users/{user_id}/events", json={"type": "deauth"}, timeout=5)
    assert sent.status_code == 202

    wait_for(lambda: len([p for p in traffic_of(live_server.app).webhooks() if p.ok]) == 2)
    assert [post.event_type for post in traffic_of(live_server.app).webhooks()] == ["deauth", "auth"]
    wait_for(lambda: len(rows(live_server, WebhookEvent, WebhookEvent.outcome != "received")) == 2)
    [connection] = rows(live_server, Connection)
    assert (connection.terra_user_id, connection.status) == (user_id, "revoked")
    assert attempt_status(browser, return_url)["status"] != "connected"


def test_late_delivery_after_the_attempt_expired(live_server):
    live_server.app.config.update(SANDBOX_FAULTS=["late"], SANDBOX_SESSION_TTL_SECONDS=1, SANDBOX_LATE_SECONDS=2.0)
    browser = signed_in_browser(live_server)
    finished_at = time.time()
    return_url = finish_widget(press_connect(browser))

    wait_for(lambda: attempt_status(browser, return_url)["status"] == "expired")
    assert auth_posts(live_server) == []  # still held back
    [post] = wait_for(lambda: auth_posts(live_server), timeout=10)
    assert post.ok and post.at - finished_at >= 2.0
    [event] = wait_for(lambda: rows(live_server, WebhookEvent, WebhookEvent.outcome != "received"))
    assert event.outcome == "applied"

    state = attempt_status(browser, return_url)
    assert (state["status"], state["error"]["code"]) == ("expired", "session_expired")
    [connection] = rows(live_server, Connection)
    assert (connection.terra_user_id, connection.status) == (terra_user_id(return_url), "active")


def test_a_500_from_the_app_is_retried_then_applied_once(live_server):
    app = live_server.app
    receiver = app.view_functions["webhooks.receive_terra_event"]
    calls = []

    def failing_the_first_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the receiver is down for a moment")
        return receiver(*args, **kwargs)

    app.view_functions["webhooks.receive_terra_event"] = failing_the_first_time
    browser = signed_in_browser(live_server)
    return_url = finish_widget(press_connect(browser))
    state = wait_for(lambda: (s := attempt_status(browser, return_url))["status"] == "connected" and s)

    # The sandbox notes a delivery once the answer is in, a moment after the app has applied it.
    posts = wait_for(lambda: (found := auth_posts(live_server)) and found[-1].status == 200 and found)
    assert [(post.attempt, post.status) for post in posts] == [(1, 500), (2, 200)]
    assert len({post.trace_id for post in posts}) == 1
    [event] = rows(live_server, WebhookEvent)
    assert (event.trace_id, event.outcome) == (posts[0].trace_id, "applied")
    [connection] = rows(live_server, Connection)
    assert connection.id == state["connection"]["id"] and connection.status == "active"


class RecordingReceiver(BaseHTTPRequestHandler):
    posted: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posted.append({"type": body["type"], "trace_id": self.headers["X-Terra-Trace-Id"]})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_faults_can_be_given_to_deliver_directly(app, stub_server):
    """Outside any request: one batch, reordered and duplicated, to a plain HTTP receiver."""
    handler = type("Receiver", (RecordingReceiver,), {"posted": []})
    server = stub_server(handler)
    config = dict(
        app.config,
        SANDBOX_WEBHOOK_URL=f"http://127.0.0.1:{server.server_port}/hook",
        SANDBOX_REORDER_WINDOW_SECONDS=0.05,
    )
    thread = deliver([{"type": "first"}, {"type": "second"}], config, faults=["reorder", "duplicate"])
    thread.join(timeout=5)
    assert thread.delivered == [True, True]
    posted = handler.posted
    assert posted[0]["type"] == "second"  # both senders start with the last event
    per_trace: dict[str, list[str]] = {}
    for item in posted:
        per_trace.setdefault(item["trace_id"], []).append(item["type"])
    assert sorted(per_trace.values()) == [["first", "first"], ["second", "second"]]
