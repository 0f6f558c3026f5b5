"""The embedded Terra sandbox: its REST and widget endpoints, the widget pages, and signed webhook
delivery over real HTTP to a small receiver started inside each test that needs one."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, select, text, update
from sqlalchemy.engine import make_url

import sandbox.models  # noqa: F401  (registers the sandbox tables before the schema is created)
from app import create_app
from config import database_url
from extensions import db
from models.time import utcnow
from sandbox.delivery import DeliveryThread, deliver
from sandbox.models import SandboxPayload, SandboxSession, SandboxUser
from terra_integration.signature import verify
from tests.conftest import (
    LIVE_TERRA,
    ROOT,
    VENV_BIN,
    _environ,
    _recreate_postgres_database,
    free_port,
    server_process,
)
from tests.helpers import terra_settings

# -- helpers --------------------------------------------------------------------------------------


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with scripted statuses."""

    def __init__(self, serve: Callable[[type[BaseHTTPRequestHandler]], ThreadingHTTPServer]):
        self.deliveries: list[dict] = []
        self.statuses: list[int] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.changed:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.deliveries.append({"headers": self.headers, "body": body, "status": status})
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = serve(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/terra"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.deliveries) >= count, timeout=timeout)
            assert len(self.deliveries) >= count, f"expected {count} webhooks, got {len(self.deliveries)}"
            return list(self.deliveries)

    def events(self, count: int) -> list[dict]:
        return [json.loads(delivery["body"]) for delivery in self.wait_for(count)]


@pytest.fixture(autouse=True)
def no_stray_webhooks(app):
    # Tests without a receiver send nothing (an empty URL turns delivery off).
    app.config["SANDBOX_WEBHOOK_URL"] = ""
    app.config["SANDBOX_WEBHOOK_RETRY_BASE_SECONDS"] = 0.01
    app.config["SANDBOX_WEBHOOK_RETRY_CAP_SECONDS"] = 0.05


@contextmanager
def deliveries_finished(timeout: float = 10) -> Iterator[None]:
    """At the end of the block, wait for the sandbox's webhook deliveries begun in it, while their
    receiver still listens: else a test that ends just after Terra's side acted (a deauth, a re-auth)
    leaves a thread retrying against a closed port, logging into the next tests' output."""
    before = set(threading.enumerate())
    yield
    begun = [thread for thread in threading.enumerate() if isinstance(thread, DeliveryThread) and thread not in before]
    for thread in begun:
        thread.join(timeout)
    assert not [thread.name for thread in begun if thread.is_alive()]


@pytest.fixture
def webhooks(app, stub_server):
    receiver = WebhookReceiver(stub_server)
    app.config["SANDBOX_WEBHOOK_URL"] = receiver.url
    with deliveries_finished():
        yield receiver


@pytest.fixture
def headers(app):
    return {"dev-id": app.config["TERRA_DEV_ID"], "x-api-key": app.config["TERRA_API_KEY"]}


def new_session(client, headers, **body) -> dict:
    body.setdefault("reference_id", "ref-1")
    body.setdefault("auth_success_redirect_url", "https://app.example/return/success?attempt=abc")
    body.setdefault("auth_failure_redirect_url", "https://app.example/return/failure?attempt=abc")
    response = client.post("/sandbox/api/widget/session", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def complete(client, session_id, provider="GARMIN", account="alice", outcome="success", fault=None):
    return client.post(
        f"/sandbox/widget/{session_id}/complete",
        json={"provider": provider, "account": account, "outcome": outcome},
        headers={"X-Sandbox-Fault": fault} if fault else {},
    )


def connect(client, headers, account="alice", **body) -> str:
    """Run a whole successful widget flow; returns the new Terra user id."""
    session = new_session(client, headers, **body)
    response = complete(client, session["session_id"], account=account)
    assert response.status_code == 200, response.get_json()
    return query_of(response.get_json()["redirect_url"])["user_id"]


def query_of(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


# -- widget session endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("sent", [{}, {"dev-id": "sandbox-dev-id"}, {"dev-id": "sandbox-dev-id", "x-api-key": "wrong"}])
def test_widget_session_rejects_bad_credentials(client, sent):
    response = client.post("/sandbox/api/widget/session", json={}, headers=sent)
    assert response.status_code == 403
    body = response.get_json()
    assert body["status"] == "error" and body["message"]


def test_widget_session_answers_200_with_warnings_for_unusable_providers(client, headers):
    response = client.post(
        "/sandbox/api/widget/session", json={"providers": "garmin,NOPE,SUUNTO", "extra": 1}, headers=headers
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "success"
    assert body["expires_in"] == 900
    # On PUBLIC_BASE_URL, whatever the request's Host (the test client's is "localhost").
    assert body["url"] == f"{client.application.config['PUBLIC_BASE_URL']}/sandbox/widget/{body['session_id']}"
    assert len(body["warnings"]) == 2
    assert any("NOPE" in w for w in body["warnings"]) and any("SUUNTO" in w for w in body["warnings"])
    # Only GARMIN is left, so the widget goes straight to its login.
    page = client.get(urlsplit(body["url"]).path)
    assert page.status_code == 303 and "provider=GARMIN" in page.headers["Location"]


@pytest.mark.parametrize("provider", ["APPLE", "SAMSUNG", "HEALTH_CONNECT"])
def test_sdk_only_providers_hand_back_to_the_app_with_a_null_user_and_no_webhook(client, headers, webhooks, provider):
    session = new_session(client, headers, providers=f"{provider},GARMIN")
    picker = client.get(f"/sandbox/widget/{session['session_id']}").get_data(as_text=True)
    assert f'data-provider="{provider}"' in picker
    handoff = client.get(f"/sandbox/widget/{session['session_id']}/login", query_string={"provider": provider})
    assert 'id="sdk-handoff"' in handoff.get_data(as_text=True)
    decided = client.post(
        f"/sandbox/widget/{session['session_id']}/decision", data={"provider": provider, "decision": "allow"}
    )
    assert decided.status_code == 303
    assert query_of(decided.headers["Location"]) == {
        "attempt": "abc",
        "user_id": "null",
        "resource": provider,
        "reference_id": "ref-1",
    }
    connect(client, headers, account="after")  # one delivery later: the SDK handoff sent none before it
    assert [event["type"] for event in webhooks.events(1)] == ["auth"]


def test_widget_session_alias_path(client, headers):
    response = client.post("/sandbox/widget/api/session", json={"providers": "OURA"}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["warnings"] == []


def test_widget_session_with_no_usable_provider_is_400(client, headers):
    response = client.post("/sandbox/api/widget/session", json={"providers": "NOPE,SUUNTO"}, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["status"] == "error"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "reference_id=x", "content_type": "application/x-www-form-urlencoded"},
        {"data": "[1, 2]", "content_type": "application/json"},
        {"data": "{not json", "content_type": "application/json"},
    ],
)
def test_widget_session_needs_a_json_object(client, headers, kwargs):
    response = client.post("/sandbox/api/widget/session", headers=headers, **kwargs)
    assert response.status_code == 400
    assert response.get_json()["status"] == "error"


def test_reference_id_longer_than_255_is_rejected(client, headers):
    ok = client.post("/sandbox/api/widget/session", json={"reference_id": "r" * 255}, headers=headers)
    too_long = client.post("/sandbox/api/widget/session", json={"reference_id": "r" * 256}, headers=headers)
    assert ok.status_code == 200
    assert too_long.status_code == 400
    assert "reference_id" in too_long.get_json()["message"]


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "javascript://example.com/%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
        "https://",
        "not a url",
        "//example.com/no-scheme",
    ],
)
def test_bad_redirect_urls_are_rejected(client, headers, url):
    response = client.post("/sandbox/api/widget/session", json={"auth_failure_redirect_url": url}, headers=headers)
    assert response.status_code == 400
    assert "auth_failure_redirect_url" in response.get_json()["message"]


@pytest.mark.parametrize("url", ["https://app.example/cb?x=1", "http://localhost:5000/return", "myapp://connect/done"])
def test_web_and_app_link_redirect_urls_are_accepted(client, headers, url):
    response = client.post("/sandbox/api/widget/session", json={"auth_success_redirect_url": url}, headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("prefix", ["/sandbox/v2", "/sandbox/api/v2"])
def test_legacy_widget_endpoint_answers_200_until_gone(app, client, headers, prefix):
    response = client.post(f"{prefix}/auth/generateWidgetSession", json={"language": "en"}, headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "success" and body["session_id"] and "warnings" not in body

    app.config["SANDBOX_LEGACY_GONE"] = True
    gone = client.post(f"{prefix}/auth/generateWidgetSession", json={"language": "en"}, headers=headers)
    assert gone.status_code == 410
    error = gone.get_json(force=True)
    text = error.get("message") or error.get("detail")
    assert "deprecated" in text and "https://access.tryterra.co/api/widget/session" in text


def test_session_mode_user_cap_refuses_new_sessions(app, client, headers):
    app.config.update(SANDBOX_USER_CAP=1, SANDBOX_USER_CAP_MODE="session")
    connect(client, headers)
    response = client.post("/sandbox/api/widget/session", json={}, headers=headers)
    assert response.status_code == 403
    assert response.get_json()["message"].startswith("User limit reached")


# -- completing a flow ----------------------------------------------------------------------------


def test_success_merges_parameters_into_the_redirect_and_sends_auth(client, headers, webhooks):
    session = new_session(client, headers)
    response = complete(client, session["session_id"])
    assert response.status_code == 200
    url = response.get_json()["redirect_url"]
    assert url.startswith("https://app.example/return/success?") and url.count("?") == 1
    params = query_of(url)
    assert params["attempt"] == "abc"
    assert params["resource"] == "GARMIN" and params["reference_id"] == "ref-1"

    [event] = webhooks.events(1)
    assert event["type"] == "auth" and event["status"] == "success"
    assert event["user"]["user_id"] == params["user_id"]
    assert event["user"]["reference_id"] == event["reference_id"] == "ref-1"
    assert event["widget_session_id"] == event["flow_id"] == session["session_id"]
    assert event["user"]["created_at"].endswith("+00:00") and event["version"] == "2022-03-16"


@pytest.mark.parametrize("outcome", ["success", "denied"])
def test_appended_redirect_adds_a_second_query_string_as_terras_docs_describe(client, headers, outcome):
    session = new_session(client, headers)
    response = complete(client, session["session_id"], outcome=outcome, fault="appended_redirect")
    base, _, appended = response.get_json()["redirect_url"].partition("?attempt=abc?")
    assert base.startswith("https://app.example/return/")
    assert appended.startswith("user_id=" if outcome == "success" else "reference_id=")


def test_success_without_reference_id_sends_literal_null(client, headers):
    session = new_session(client, headers, reference_id=None)
    params = query_of(complete(client, session["session_id"]).get_json()["redirect_url"])
    assert params["reference_id"] == "null"


@pytest.mark.parametrize("outcome, reason", [("denied", "access_denied"), ("cancelled", "auth_cancelled")])
def test_failure_redirects_with_the_reference_id_and_sends_auth_cancelled(client, headers, webhooks, outcome, reason):
    session = new_session(client, headers)
    url = complete(client, session["session_id"], outcome=outcome).get_json()["redirect_url"]
    assert url.startswith("https://app.example/return/failure?") and url.count("?") == 1
    assert query_of(url) == {"attempt": "abc", "reference_id": "ref-1"}

    [event] = webhooks.events(1)
    assert event == {
        "type": "auth_cancelled",
        "status": "error",
        "flow_id": session["session_id"],
        "reason": reason,
        "reference_id": "ref-1",
    }


def test_legacy_failure_shape(app, client, headers, webhooks):
    app.config["SANDBOX_AUTH_FAILURE_SHAPE"] = "auth_error"
    session = new_session(client, headers)
    complete(client, session["session_id"], provider="OURA", outcome="denied")
    [event] = webhooks.events(1)
    assert event["type"] == "auth" and event["status"] == "error"
    assert event["reason"] == "access_denied" and event["widget_session_id"] == session["session_id"]
    assert event["user"]["provider"] == "OURA" and event["user"]["user_id"]


def test_a_session_is_single_use_and_expires(app, client, headers):
    used = new_session(client, headers)
    assert complete(client, used["session_id"]).status_code == 200
    again = complete(client, used["session_id"])
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "session_used"

    expired = new_session(client, headers)
    with app.app_context():
        db.session.get(SandboxSession, expired["session_id"]).expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    late = complete(client, expired["session_id"])
    assert late.status_code == 410 and late.get_json()["error"]["code"] == "session_expired"

    assert complete(client, "no-such-session").status_code == 404


@pytest.mark.parametrize(
    "change",
    [{"provider": "NOPE"}, {"provider": "OURA"}, {"outcome": "maybe"}, {"account": "   "}, {"account": None}],
)
def test_automation_endpoint_rejects_bad_input_without_using_the_session(client, headers, change):
    session = new_session(client, headers, providers="GARMIN,FITBIT")
    body = {"provider": "GARMIN", "account": "alice", "outcome": "success"} | change
    response = client.post(f"/sandbox/widget/{session['session_id']}/complete", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert complete(client, session["session_id"]).status_code == 200


@pytest.mark.parametrize("order", ["reauth_first", "auth_first"])
def test_same_account_again_is_a_reauth_with_a_new_user_id(app, client, headers, webhooks, order):
    app.config["SANDBOX_REAUTH_ORDER"] = order
    first = connect(client, headers, account="Alice")
    webhooks.wait_for(1)  # each flow's batch comes from a thread of its own: the first must land first
    second = connect(client, headers, account="alice ")  # same account: case and spaces do not matter
    assert second != first

    events = webhooks.events(3)[1:]
    types = [event["type"] for event in events]
    assert types == (["user_reauth", "auth"] if order == "reauth_first" else ["auth", "user_reauth"])
    reauth = events[types.index("user_reauth")]
    assert reauth["status"] == "warning" and reauth["version"] == "2022-03-16"
    assert reauth["old_user"]["user_id"] == first and reauth["old_user"]["active"] is False
    assert reauth["new_user"]["user_id"] == second and reauth["new_user"]["active"] is True

    # Terra deletes the earlier user: userInfo knows it no more, by id or under the reference_id.
    assert client.get("/sandbox/v2/userInfo", query_string={"user_id": first}, headers=headers).status_code == 404
    listed = client.get("/sandbox/v2/userInfo", query_string={"reference_id": "ref-1"}, headers=headers).get_json()
    assert [user["user_id"] for user in listed] == [second]


def test_reauth_keeps_old_user_lists_the_earlier_user_inactive(app, client, headers, webhooks):
    first = connect(client, headers)
    app.config["SANDBOX_FAULTS"] = ["reauth_keeps_old_user"]
    second = connect(client, headers)
    webhooks.wait_for(3)
    listed = client.get("/sandbox/v2/userInfo", query_string={"reference_id": "ref-1"}, headers=headers).get_json()
    assert [(user["user_id"], user["active"]) for user in listed] == [(first, False), (second, True)]
    old = client.get("/sandbox/v2/userInfo", query_string={"user_id": first}, headers=headers).get_json()
    assert old["is_authenticated"] is False


def test_another_account_or_reference_is_a_new_user_not_a_reauth(client, headers, webhooks):
    connect(client, headers, account="alice")
    connect(client, headers, account="bob")
    connect(client, headers, account="alice", reference_id="ref-2")
    assert [event["type"] for event in webhooks.events(3)] == ["auth", "auth", "auth"]


def test_relink_across_users_makes_another_reference_a_reauth_under_both_reference_ids(app, client, headers, webhooks):
    first = connect(client, headers, account="alice", reference_id="ref-ada")
    # Each flow's batch is sent by a thread of its own, so under load the first flow's `auth` could
    # arrive after the second flow's events: wait for it before starting the second flow.
    webhooks.wait_for(1)
    app.config["SANDBOX_FAULTS"] = ["relink_across_users"]
    second = connect(client, headers, account="alice", reference_id="ref-bob")
    reauth = next(event for event in webhooks.events(3)[1:] if event["type"] == "user_reauth")
    assert (reauth["old_user"]["user_id"], reauth["old_user"]["reference_id"]) == (first, "ref-ada")
    assert (reauth["new_user"]["user_id"], reauth["new_user"]["reference_id"]) == (second, "ref-bob")
    assert client.get("/sandbox/v2/userInfo", query_string={"user_id": first}, headers=headers).status_code == 404


@pytest.mark.parametrize("outcome", ["success", "denied"])
def test_foreign_flow_id_keeps_the_widget_session_id_but_not_as_flow_id(client, headers, webhooks, outcome):
    session = new_session(client, headers)
    response = complete(client, session["session_id"], outcome=outcome)
    plain = webhooks.events(1)[0]
    session = new_session(client, headers)
    complete(client, session["session_id"], account="bob", outcome=outcome, fault="foreign_flow_id")
    varied = webhooks.events(2)[1]
    assert response.status_code == 200 and plain["flow_id"] != varied["flow_id"]
    assert varied["flow_id"] != session["session_id"] and varied["flow_id"]
    assert varied.get("widget_session_id") in (None, session["session_id"])


def test_user_cap_fails_new_users_inside_the_widget_but_allows_reauth(app, client, headers, webhooks):
    app.config["SANDBOX_USER_CAP"] = 2
    connect(client, headers, account="a")
    connect(client, headers, account="b")

    session = new_session(client, headers)
    url = complete(client, session["session_id"], account="c").get_json()["redirect_url"]
    assert urlsplit(url).path == "/return/failure"
    assert webhooks.events(3)[2]["reason"] == "user_limit_reached"

    # A re-auth replaces a user, so it still fits under the cap.
    reauth = complete(client, new_session(client, headers)["session_id"], account="a").get_json()["redirect_url"]
    assert urlsplit(reauth).path == "/return/success"


# -- REST endpoints -------------------------------------------------------------------------------


def test_user_info_by_user_id_and_by_reference_in_both_shapes(app, client, headers):
    user_id = connect(client, headers)
    connect(client, headers, account="bob")

    by_id = client.get("/sandbox/v2/userInfo", query_string={"user_id": user_id}, headers=headers)
    body = by_id.get_json()
    assert body["status"] == "success" and body["is_authenticated"] is True
    assert body["user"]["user_id"] == user_id and body["user"]["provider"] == "GARMIN"
    assert {"last_polled_at", "most_recent_data_at", "scopes", "created_at"} <= body["user"].keys()

    listed = client.get("/sandbox/v2/userInfo", query_string={"reference_id": "ref-1"}, headers=headers).get_json()
    assert isinstance(listed, list) and len(listed) == 2

    app.config["SANDBOX_USERINFO_SHAPE"] = "object"
    wrapped = client.get("/sandbox/v2/userInfo", query_string={"reference_id": "ref-1"}, headers=headers).get_json()
    assert [user["user_id"] for user in wrapped["users"]] == [user["user_id"] for user in listed]

    assert client.get("/sandbox/v2/userInfo", headers=headers).status_code == 400
    assert client.get("/sandbox/v2/userInfo", query_string={"user_id": "nope"}, headers=headers).status_code == 404


def test_deauthenticate_user_then_404_and_a_deauth_webhook(client, headers, webhooks):
    user_id = connect(client, headers)
    first = client.delete("/sandbox/v2/auth/deauthenticateUser", query_string={"user_id": user_id}, headers=headers)
    assert first.status_code == 200 and first.get_json() == {"status": "success"}
    second = client.delete("/sandbox/v2/auth/deauthenticateUser", query_string={"user_id": user_id}, headers=headers)
    assert second.status_code == 404

    # Deliveries run on their own threads: the auth and deauth webhooks may arrive in either order.
    [deauth] = [event for event in webhooks.events(2) if event["type"] == "deauth"]
    assert deauth["user"]["user_id"] == user_id and deauth["user"]["active"] is False
    subscribed = client.get("/sandbox/v2/subscriptions", headers=headers).get_json()["users"]
    assert user_id not in [user["user_id"] for user in subscribed]


def test_authenticate_user_preallocates_the_user_id_and_lands_on_the_provider_login(client, headers, webhooks):
    response = client.post(
        "/sandbox/v2/auth/authenticateUser",
        query_string={"resource": "oura"},
        json={"reference_id": "ref-9", "auth_success_redirect_url": "https://app.example/ok"},
        headers=headers,
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "success"
    # Terra's auth_url is the provider's own login page: no widget, no picker, no redirect on the way.
    auth_url = urlsplit(body["auth_url"])
    login = client.get(auth_url.path, query_string=auth_url.query)
    assert login.status_code == 200 and 'id="provider-login"' in login.get_data(as_text=True)
    assert "Sign in to Oura" in login.get_data(as_text=True)

    flow_id = auth_url.path.split("/")[-2]
    url = complete(client, flow_id, provider=None).get_json()["redirect_url"]
    assert query_of(url) == {"user_id": body["user_id"], "resource": "OURA", "reference_id": "ref-9"}
    [event] = webhooks.events(1)
    assert event["user"]["user_id"] == body["user_id"]
    assert event["flow_id"] == flow_id and event["widget_session_id"] is None


def test_authenticate_user_needs_a_known_resource(client, headers):
    missing = client.post("/sandbox/v2/auth/authenticateUser", headers=headers)
    unknown = client.post("/sandbox/v2/auth/authenticateUser", query_string={"resource": "NOPE"}, headers=headers)
    assert missing.status_code == 400 and unknown.status_code == 404


def test_integrations_are_public(client):
    listing = client.get("/sandbox/v2/integrations").get_json()
    assert "GARMIN" in listing["providers"] and "APPLE" in listing["sdk_providers"]
    assert "APPLE" not in listing["providers"]

    detailed = client.get("/sandbox/api/v2/integrations/detailed").get_json()
    by_code = {item["provider"]: item for item in detailed["providers"]}
    assert detailed["status"] == "success"
    assert by_code["GARMIN"]["name"] == "Garmin" and by_code["GARMIN"]["types"]["sleep"] is True
    assert by_code["SUUNTO"]["enabled"] is False  # without dev-id every provider is listed
    assert not any(item["icon"].startswith("http") for item in detailed["providers"])
    assert "APPLE" not in by_code

    with_sdk = client.get("/sandbox/v2/integrations/detailed", query_string={"sdk": "true"}).get_json()
    assert "APPLE" in {item["provider"] for item in with_sdk["providers"]}

    own = client.get("/sandbox/v2/integrations/detailed", headers={"dev-id": "sandbox-dev-id"}).get_json()
    assert all(item["enabled"] for item in own["providers"])


def test_new_host_answers_problem_json_and_old_host_status_message(client, headers):
    unauthorised = client.get("/sandbox/api/v2/userInfo?user_id=x")
    assert unauthorised.status_code == 401
    assert unauthorised.mimetype == "application/problem+json"
    problem = unauthorised.get_json(force=True)
    assert problem["type"] == "about:blank" and problem["title"] == "unauthorized"
    assert problem["instance"] == "/sandbox/api/v2/userInfo?user_id=x" and problem["detail"]

    missing = client.get("/sandbox/api/v2/userInfo?user_id=x", headers=headers)
    assert missing.status_code == 404 and missing.get_json(force=True)["title"] == "not found"

    legacy = client.get("/sandbox/v2/userInfo?user_id=x", headers=headers)
    assert legacy.status_code == 404 and legacy.mimetype == "application/json"
    assert legacy.get_json() == {"status": "error", "message": "user not found"}


# -- webhook delivery -----------------------------------------------------------------------------


def test_webhooks_are_signed_under_the_header_terras_docs_name(app, client, headers, webhooks):
    connect(client, headers)
    [delivery] = webhooks.wait_for(1)
    sent = delivery["headers"]
    assert sent["Content-Type"] == "application/json"
    assert sent.get_all("terra-signature") == [sent["terra-signature"]] and "X-Terra-Signature" not in sent
    verify(delivery["body"], sent["terra-signature"], app.config["TERRA_SIGNING_SECRET"])
    assert sent["X-Terra-Trace-Id"] and sent["terra-reference"]
    assert sent["X-Terra-Ordering-Timestamp"].isdigit() and len(sent["X-Terra-Ordering-Timestamp"]) == 13


def test_failed_delivery_is_retried_with_the_same_trace_id(app, client, headers, webhooks):
    webhooks.statuses = [500, 503]
    connect(client, headers)
    attempts = webhooks.wait_for(3)
    assert [attempt["status"] for attempt in attempts] == [500, 503, 200]
    assert len({attempt["headers"]["X-Terra-Trace-Id"] for attempt in attempts}) == 1
    assert len({attempt["body"] for attempt in attempts}) == 1


@pytest.mark.parametrize("faults, same_timestamp", [([], False), (["stale_signature"], True)])
def test_retries_are_signed_afresh_unless_stale_signature_keeps_the_first_t(app, webhooks, faults, same_timestamp):
    webhooks.statuses = [500]
    config = dict(
        app.config,
        SANDBOX_WEBHOOK_RETRY_BASE_SECONDS=1.1,
        SANDBOX_WEBHOOK_RETRY_CAP_SECONDS=2,
        SANDBOX_WEBHOOK_RETRIES=1,
    )
    deliver([{"type": "deauth"}], config, faults).join(timeout=5)
    first, retry = (delivery["headers"]["terra-signature"] for delivery in webhooks.wait_for(2))
    assert (first == retry) is same_timestamp
    for header in (first, retry):
        verify(b'{"type":"deauth"}', header, app.config["TERRA_SIGNING_SECRET"], tolerance=60)


def test_delivery_gives_up_after_the_configured_retries(app, webhooks):
    webhooks.statuses = [500] * 10
    config = dict(app.config, SANDBOX_WEBHOOK_RETRIES=2)
    thread = deliver([{"type": "auth"}, {"type": "deauth"}], config)  # no app context needed
    thread.join(timeout=5)
    assert thread.delivered == [False, False]
    assert len(webhooks.wait_for(6)) == 6  # each event: 1 try + 2 retries, still in order


# -- widget pages ---------------------------------------------------------------------------------


def test_widget_pages_walk_from_picker_to_redirect(client, headers, webhooks):
    session = new_session(client, headers, providers="GARMIN,FITBIT")
    path = f"/sandbox/widget/{session['session_id']}"

    picker = client.get(path)
    assert picker.status_code == 200
    assert b'data-provider="GARMIN"' in picker.data and b'data-provider="FITBIT"' in picker.data
    assert b'data-provider="OURA"' not in picker.data

    login = client.get(f"{path}/login", query_string={"provider": "FITBIT"})
    assert b'name="account"' in login.data and b"the same name again is the same account" in login.data

    empty = client.get(f"{path}/consent", query_string={"provider": "FITBIT", "account": ""})
    assert empty.status_code == 400

    consent = client.get(f"{path}/consent", query_string={"provider": "FITBIT", "account": "carol"})
    for decision in (b"allow", b"deny", b"cancel"):
        assert b'name="decision" value="' + decision + b'"' in consent.data
    assert b"heartrate" in consent.data

    done = client.post(f"{path}/decision", data={"provider": "FITBIT", "account": "carol", "decision": "allow"})
    assert done.status_code == 303
    location = done.headers["Location"]
    assert location.startswith("https://app.example/return/success?") and location.count("?") == 1
    assert query_of(location)["attempt"] == "abc" and query_of(location)["resource"] == "FITBIT"
    assert webhooks.events(1)[0]["user"]["provider"] == "FITBIT"


def test_dead_sessions_show_a_page_linking_back_to_the_app(app, client, headers):
    session = new_session(client, headers, providers="GARMIN")
    complete(client, session["session_id"])
    used = client.get(f"/sandbox/widget/{session['session_id']}")
    assert used.status_code == 409 and b"already used" in used.data
    assert b"reference_id=ref-1" in used.data and b"reason=" not in used.data

    app.config["SANDBOX_FAILURE_REDIRECT"] = "detailed"  # the back link then says why, as the redirects do
    expired = new_session(client, headers)
    with app.app_context():
        db.session.get(SandboxSession, expired["session_id"]).expires_at = utcnow()
        db.session.commit()
    page = client.get(f"/sandbox/widget/{expired['session_id']}")
    assert page.status_code == 410 and b"This link has expired" in page.data and b"reason=session_expired" in page.data

    assert client.get("/sandbox/widget/unknown").status_code == 404


def test_without_redirect_urls_the_flow_ends_on_the_sandbox_result_page(client, headers):
    session = new_session(client, headers, auth_success_redirect_url=None, auth_failure_redirect_url=None)
    url = complete(client, session["session_id"]).get_json()["redirect_url"]
    page = client.get(urlsplit(url).path, query_string=urlsplit(url).query)
    assert page.status_code == 200 and b"Connected" in page.data


# -- console --------------------------------------------------------------------------------------


def test_console_lists_users_and_sends_events(app, client, headers, webhooks):
    user_id = connect(client, headers)
    page = client.get("/sandbox/")
    assert page.status_code == 200 and user_id.encode() in page.data

    changed = client.post(f"/sandbox/users/{user_id}/events", data={"type": "permission_change"})
    assert changed.status_code == 303 and changed.headers["Location"].startswith("/sandbox/")
    permission = webhooks.events(2)[1]
    assert permission["scopes_removed"] == "WORKOUT_IMPORT" and permission["scopes_added"] == ""
    assert permission["user"]["scopes"] == "ACTIVITY_EXPORT,HEALTH_EXPORT"

    sent = client.post(f"/sandbox/users/{user_id}/events", json={"type": "sleep"})
    assert sent.status_code == 202
    delivery = webhooks.wait_for(3)[2]
    assert delivery["headers"]["X-Terra-Trace-Id"] == sent.get_json()["trace_id"]
    sleep = webhooks.events(3)[2]
    assert sleep["type"] == "sleep" and sleep["data"][0]["sleep_durations_data"]["asleep"]
    assert sleep["user"]["last_webhook_update"] is not None

    assert client.post(f"/sandbox/users/{user_id}/events", json={"type": "bogus"}).status_code == 400
    assert client.post("/sandbox/users/nobody/events", json={"type": "sleep"}).status_code == 404

    revoked = client.post(f"/sandbox/users/{user_id}/events", json={"type": "access_revoked"})
    assert revoked.status_code == 202
    assert webhooks.events(4)[3]["type"] == "access_revoked"
    with app.app_context():
        assert db.session.get(SandboxUser, user_id).active is False
    assert client.post(f"/sandbox/users/{user_id}/events", json={"type": "sleep"}).status_code == 409


def test_s3_payload_delivers_a_download_url_that_serves_the_data_event_until_it_expires(app, client, headers, webhooks):
    user_id = connect(client, headers)
    app.config["SANDBOX_FAULTS"] = ["s3_payload"]
    assert client.post(f"/sandbox/users/{user_id}/events", json={"type": "activity"}).status_code == 202
    ping = next(event for event in webhooks.events(2) if event["type"] != "auth")
    assert (ping["type"], ping["status"], ping["expires_in"]) == ("s3_payload", "success", 300)
    download = client.get(urlsplit(ping["url"]).path)
    assert download.status_code == 200 and download.mimetype == "application/json"
    data_event = download.get_json()
    assert (data_event["type"], data_event["user"]["user_id"]) == ("activity", user_id)
    assert data_event["data"][0]["metadata"]["summary_id"]
    with app.app_context():
        db.session.execute(update(SandboxPayload).values(expires_at=utcnow()))
        db.session.commit()
    assert client.get(urlsplit(ping["url"]).path).status_code == 403
    assert client.get("/sandbox/payloads/no-such-payload").status_code == 404


# == a removable part: its own tables, and an app that runs without it ===========================

# The tables the app's history made before the sandbox had its own branch, and those made since.
TABLES_BEFORE_THE_MOVE = {"sandbox_sessions", "sandbox_users", "sandbox_payloads"}
SANDBOX_TABLES = TABLES_BEFORE_THE_MOVE | {"sandbox_auth_tokens"}


@pytest.fixture
def empty_database(tmp_path) -> str:
    """A database of its own, next to the suite's: SQLite, or `<TEST_DATABASE_URL's name>_<suffix>`."""

    def named(suffix: str) -> str:
        configured = os.environ.get("TEST_DATABASE_URL")
        if not configured:
            return f"sqlite:///{tmp_path / suffix}.sqlite"
        url = make_url(database_url({"DATABASE_URL": configured}, None))
        uri = url.set(database=f"{url.database}_{suffix}").render_as_string(hide_password=False)
        _recreate_postgres_database(uri)
        return uri

    return named


APP_HEAD = "0012"  # the app's newest migration
SANDBOX_HEAD = "sandbox_0002"  # the sandbox branch's newest


def migrate(uri: str, command, revision: str) -> tuple[set[str], set[str]]:
    """Run a flask-migrate command on `uri`; the tables and the applied revisions afterwards."""
    app = create_app(environ=_environ(uri))
    with app.app_context():
        command(revision=revision)
        tables = set(inspect(db.engine).get_table_names())
        with db.engine.connect() as connection:
            revisions = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
        db.engine.dispose()
    return tables, revisions


def test_the_sandbox_branch_creates_and_removes_its_tables(empty_database):
    uri = empty_database("migrations")
    tables, revisions = migrate(uri, upgrade, "heads")
    # Alembic records the two tips: the sandbox's (it depends on the app's 0006) and the app's.
    assert SANDBOX_TABLES <= tables and revisions == {SANDBOX_HEAD, APP_HEAD}
    tables, revisions = migrate(uri, downgrade, "sandbox@base")  # what to run before deleting sandbox/
    assert not SANDBOX_TABLES & tables and "users" in tables and revisions == {APP_HEAD}
    # Back below the move, the app's history finds the tables 0001 and 0004 made, and removes them.
    tables, revisions = migrate(uri, upgrade, "heads")
    tables, revisions = migrate(uri, downgrade, "0005")
    assert TABLES_BEFORE_THE_MOVE <= tables and revisions == {"0005"}
    tables, revisions = migrate(uri, downgrade, "base")
    assert tables == {"alembic_version"} and revisions == set()


def test_a_database_the_sandbox_used_keeps_its_terra_users_through_the_move(empty_database):
    """Upgrading an install from 0005, the last revision before the sandbox had its own branch."""
    uri = empty_database("move")
    migrate(uri, upgrade, "0005")
    app = create_app(environ=_environ(uri))
    with app.app_context():
        db.session.add(SandboxUser(provider="GARMIN", account="ada", reference_id="ref-1"))
        db.session.commit()
        db.engine.dispose()
    _, revisions = migrate(uri, upgrade, "heads")
    assert revisions == {SANDBOX_HEAD, APP_HEAD}
    with app.app_context():
        assert [user.account for user in db.session.scalars(select(SandboxUser))] == ["ada"]
        db.engine.dispose()


# What a copy of the app without the sandbox still runs of its own tests (marked `sandbox`: those that need it).
TESTS_WITHOUT_SANDBOX = [
    "tests/test_config.py",
    "tests/test_signature.py",
    "tests/test_auth.py",
    "tests/test_webhook_receiver.py",
    "tests/test_commands.py",
]


def copy_without_sandbox(target: Path) -> None:
    """The tracked files of this checkout, as they are now, minus sandbox/ and app.py's lines for it."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if name.startswith("sandbox/") or not (ROOT / name).is_file():
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    app_py = (target / "app.py").read_text().splitlines(keepends=True)
    registration = [line for line in app_py if "init_sandbox" in line]
    assert [line.split()[0] for line in registration] == ["from", "init_sandbox(app,"]  # its import, its call
    (target / "app.py").write_text("".join(line for line in app_py if line not in registration))


def flask_db(copy: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    """`flask --app app db <args>` as an operator types it, in `copy` (ROOT: this checkout) on `uri`."""
    env = {name: value for name, value in os.environ.items() if name != "TEST_DATABASE_URL"}
    # Without the sandbox the app runs live only: made-up credentials, never called by a migration.
    terra = {} if (copy / "sandbox").is_dir() else LIVE_TERRA
    env.update(FLASK_SKIP_DOTENV="1", PYTHONPATH=str(copy), **_environ(uri, **terra))
    return subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", "db", *args],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def applied_revisions(uri: str) -> set[str]:
    engine = create_engine(uri)
    with engine.connect() as connection:
        revisions = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    engine.dispose()
    return revisions


@pytest.mark.parametrize("target", [[], ["heads"]], ids=["flask db upgrade", "flask db upgrade heads"])
@pytest.mark.parametrize("with_sandbox", [True, False], ids=["with the sandbox", "without it"])
def test_plain_upgrade_and_upgrade_heads_both_migrate_a_new_database(tmp_path, empty_database, with_sandbox, target):
    """The command every Flask-Migrate user types works, with the sandbox's branch as a second head or
    without it; `heads` keeps working for release scripts that name it."""
    copy = ROOT
    if not with_sandbox:
        copy = tmp_path / "app"
        copy_without_sandbox(copy)
    uri = empty_database(f"cli_{'sandbox' if with_sandbox else 'alone'}_{len(target)}")
    migrated = flask_db(copy, uri, "upgrade", *target)
    assert migrated.returncode == 0, migrated.stderr
    assert applied_revisions(uri) == ({SANDBOX_HEAD, APP_HEAD} if with_sandbox else {APP_HEAD})


def test_plain_upgrade_on_a_database_migrated_with_heads_changes_nothing_and_moves_an_old_one(empty_database):
    """Databases made before `flask db upgrade` applied every head: one at both heads is left as it is,
    one from before the sandbox had its own branch (0005) reaches both."""
    current, old = empty_database("cli_current"), empty_database("cli_old")
    migrate(current, upgrade, "heads")
    migrate(old, upgrade, "0005")
    for uri in (current, old):
        migrated = flask_db(ROOT, uri, "upgrade")
        assert migrated.returncode == 0, migrated.stderr
        assert applied_revisions(uri) == {SANDBOX_HEAD, APP_HEAD}


def test_without_the_sandbox_a_live_app_migrates_starts_and_passes_its_own_tests(tmp_path, empty_database):
    copy = tmp_path / "app"
    copy_without_sandbox(copy)
    uri = empty_database("without_sandbox")
    env = {name: value for name, value in os.environ.items() if name != "TEST_DATABASE_URL"}
    env.update(FLASK_SKIP_DOTENV="1", PYTHONPATH=str(copy))
    live = {
        **env,
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),  # production refuses the tests' published key
        "DATABASE_URL": uri,
        "PUBLIC_BASE_URL": "https://connect.example.com",
        "EXTRA_TRUSTED_HOSTS": "127.0.0.1",
        **terra_settings("https://127.0.0.1:9"),  # production calls Terra over https only; nothing listens
    }

    # Plain `upgrade`: without the sandbox's branch the app's history has one head, and no sandbox tables.
    migrated = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", "db", "upgrade"],
        cwd=copy,
        env=live,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stderr
    app = create_app(environ=_environ(uri))
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
        db.engine.dispose()
    assert "users" in tables and not SANDBOX_TABLES & tables

    port = free_port()
    gunicorn = [str(VENV_BIN / "gunicorn"), "--config", "gunicorn.conf.py", "app:create_app()"]
    with server_process(
        gunicorn,
        health_url=f"http://127.0.0.1:{port}/readyz",
        cwd=copy,
        env={**live, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"},
        log_path=tmp_path / "g.log",
    ):
        assert requests.get(f"http://127.0.0.1:{port}/sandbox/", timeout=5).status_code == 404

    own_tests = {**env, "TEST_DATABASE_URL": uri} if uri.startswith("postgresql") else env
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not sandbox", *TESTS_WITHOUT_SANDBOX],
        cwd=copy,
        env=own_tests,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tested.returncode == 0, tested.stdout[-5000:]
    summary = tested.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=* ?(\d+) passed, \d+ deselected in .*", summary), summary


def test_sandbox_serve_refuses_without_a_webhook_url_of_another_app_or_with_live_credentials(
    app, database_uri, monkeypatch
):
    """`flask sandbox serve` (docs/copy-into-your-app.md runs it for real) says why it cannot serve: its
    webhooks would go nowhere or to this app itself, or the app runs live and has no sandbox."""
    monkeypatch.setenv("BIND", "unix:/nowhere")  # were a check missing, the command stops here instead of serving
    for own_or_none in ("", app.config["PUBLIC_BASE_URL"] + "/webhooks/terra"):
        app.config["SANDBOX_WEBHOOK_URL"] = own_or_none
        refused = app.test_cli_runner().invoke(args=["sandbox", "serve"])
        assert refused.exit_code == 1 and "set SANDBOX_WEBHOOK_URL to the other app's webhook" in refused.output
    live = create_app(environ=_environ(database_uri, **LIVE_TERRA))
    refused = live.test_cli_runner().invoke(args=["sandbox", "serve"])
    assert refused.exit_code == 1 and "the sandbox runs only without Terra credentials" in refused.output
