"""The Terra client against the sandbox over HTTP, and against a stub server for odd answers."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler

import pytest

from terra_integration.client import (
    LegacyWidgetEndpointGone,
    TerraClient,
    TerraError,
    TerraNotFound,
    TerraRejected,
    TerraUnavailable,
)
from tests.conftest import LIVE_TERRA
from tests.helpers import finish_widget, terra_settings


@pytest.fixture
def terra(live_server) -> TerraClient:
    return TerraClient.from_config(live_server.app.config)


def test_new_widget_session(terra, live_server):
    session = terra.create_widget_session(
        reference_id="ref-1",
        success_url="https://app.example/ok",
        failure_url="https://app.example/fail",
        providers=["GARMIN", "NOPE"],
    )
    assert session.url == f"{live_server.url}/sandbox/widget/{session.session_id}"
    assert session.expires_in == 900
    assert any("NOPE" in warning for warning in session.warnings)


def test_legacy_widget_session_and_its_410(terra, live_server):
    terra.widget_api = "legacy"
    assert terra.create_widget_session(
        reference_id="r", success_url="https://a.example/s", failure_url="https://a.example/f"
    ).session_id
    live_server.app.config["SANDBOX_LEGACY_GONE"] = True
    with pytest.raises(LegacyWidgetEndpointGone, match="TERRA_WIDGET_API=session") as raised:
        terra.create_widget_session(
            reference_id="r", success_url="https://a.example/s", failure_url="https://a.example/f"
        )
    assert raised.value.status == 410


def test_bad_credentials_are_rejected_with_terras_message(terra):
    terra.api_key = "wrong"
    with pytest.raises(TerraRejected, match="403"):
        terra.create_widget_session(
            reference_id="r", success_url="https://a.example/s", failure_url="https://a.example/f"
        )


def test_user_info_by_id_and_by_reference_in_both_shapes(terra, live_server):
    session = terra.create_widget_session(
        reference_id="ref-shapes", success_url="https://a.example/s", failure_url="https://a.example/f"
    )
    redirect = finish_widget(session.url, provider="OURA", account="x")
    user_id = redirect.split("user_id=")[1].split("&")[0]

    user = terra.user_info(user_id)
    assert (user.user_id, user.provider, user.reference_id, user.active) == (user_id, "OURA", "ref-shapes", True)
    assert terra.user_info("00000000-0000-0000-0000-000000000000") is None

    assert [u.user_id for u in terra.users_by_reference("ref-shapes")] == [user_id]
    live_server.app.config["SANDBOX_USERINFO_SHAPE"] = "object"
    assert [u.user_id for u in terra.users_by_reference("ref-shapes")] == [user_id]
    assert terra.users_by_reference("nobody") == []


def test_deauthenticate_unknown_user_is_not_found(terra):
    with pytest.raises(TerraNotFound):
        terra.deauthenticate_user("00000000-0000-0000-0000-000000000000")


def test_integrations_detailed(terra):
    providers = {provider.code: provider for provider in terra.integrations_detailed()}
    assert {"GARMIN", "OURA", "FITBIT"} <= providers.keys()
    assert providers["GARMIN"].name


class StubTerra(BaseHTTPRequestHandler):
    status = 200
    body = b"{}"
    content_type = "application/json"

    def do_POST(self):
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def stub(stub_server):
    server = stub_server(StubTerra)
    return server, TerraClient.from_config(terra_settings(f"http://127.0.0.1:{server.server_port}"), timeout=2)


def answer(server, status: int, body: bytes, content_type: str = "application/json"):
    server.RequestHandlerClass = type(
        "Answer", (StubTerra,), {"status": status, "body": body, "content_type": content_type}
    )


@pytest.mark.parametrize("status", [200, 201, 202])
def test_any_2xx_is_accepted(stub, status):
    server, terra = stub
    answer(
        server,
        status,
        json.dumps(
            {"session_id": "s", "url": "https://w.example/s", "expires_in": 86400, "warnings": ["language ignored"]}
        ).encode(),
    )
    session = terra.create_widget_session(reference_id="r", success_url="https://a/s", failure_url="https://a/f")
    assert (session.session_id, session.expires_in, session.warnings) == ("s", 86400, ["language ignored"])


@pytest.mark.parametrize(
    "status, body, error, message",
    [
        (500, b'{"message": "boom"}', TerraUnavailable, "500: boom"),
        (429, b'{"detail": "rate limit exceeded"}', TerraUnavailable, "rate limit exceeded"),
        (400, b'{"title": "bad request", "detail": "invalid start_date"}', TerraRejected, "invalid start_date"),
        (200, b"<html>", TerraUnavailable, "not JSON"),
        (200, b'{"status": "success"}', TerraError, "no session_id"),
    ],
)
def test_failures_become_clear_errors(stub, status, body, error, message):
    server, terra = stub
    answer(server, status, body)
    with pytest.raises(error, match=message) as raised:
        terra.create_widget_session(reference_id="r", success_url="https://a/s", failure_url="https://a/f")
    assert type(raised.value) is error  # not merely a subclass: each is handled in its own way


def test_unreachable_terra_is_unavailable():
    terra = TerraClient.from_config(LIVE_TERRA, timeout=1)
    with pytest.raises(TerraUnavailable, match="could not be reached"):
        terra.integrations_detailed()


@pytest.mark.parametrize(
    "user_fields, is_authenticated, active",
    [
        ({"active": None}, True, None),
        ({}, True, None),
        ({"active": True}, True, True),
        ({"active": None}, False, False),
        ({"active": False}, True, False),
    ],
)
def test_user_info_keeps_an_unknown_active_flag_unknown(stub, user_fields, is_authenticated, active):
    server, terra = stub
    user = {"user_id": "u-1", "provider": "OURA", "reference_id": "r", **user_fields}
    answer(server, 200, json.dumps({"user": user, "status": "success", "is_authenticated": is_authenticated}).encode())
    assert terra.user_info("u-1").active is active


def test_an_unknown_active_flag_does_not_block_the_userinfo_confirmation(app, stub):
    from datetime import timedelta

    from models.time import utcnow
    from services import attempts
    from tests.helpers import create_attempt, create_user

    server, terra = stub
    with app.app_context(), app.test_request_context():
        app.extensions["terra_integration"].client = terra
        user = create_user()
        attempt = create_attempt(
            user, redirect_terra_user_id="u-1", hint="returned_success", hinted_at=utcnow() - timedelta(seconds=10)
        )
        answer(
            server,
            200,
            json.dumps(
                {
                    "user": {"user_id": "u-1", "provider": "OURA", "active": None, "reference_id": user.reference_id},
                    "status": "success",
                    "is_authenticated": True,
                }
            ).encode(),
        )
        assert attempts.refresh(attempt).status == "connected"
        assert attempt.connection.terra_user_id == "u-1"


# -- generateAuthToken (the mobile SDK's token) ---------------------------------------------------


def test_auth_token_from_the_sandbox_is_fresh_each_time(terra):
    first, second = terra.generate_auth_token(), terra.generate_auth_token()
    assert first.expires_in == 180 and len(first.token) == 64
    assert first.token != second.token


def test_auth_token_with_an_invalid_dev_id_is_terras_404(terra):
    terra.dev_id = "not-ours"
    with pytest.raises(TerraNotFound, match="404: invalid dev-id"):
        terra.generate_auth_token()


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "error", "message": "Invalid dev-id was provided", "token": "x"}',
        b'{"status": "success", "expires_in": 180}',
        b'{"status": "success", "token": "", "expires_in": 180}',
        b'{"status": "success", "token": "<html>\\n<p>hello</p>", "expires_in": 180}',
        b'{"status": "success", "token": "abc", "expires_in": "180"}',
        b'{"status": "success", "token": "abc", "expires_in": 0}',
        b'{"status": "success", "token": "abc", "expires_in": true}',
        b'["abc"]',
    ],
)
def test_an_auth_token_answer_without_a_usable_token_is_an_error(stub, body):
    server, terra = stub
    answer(server, 200, body)
    with pytest.raises(TerraError, match="generateAuthToken answer") as raised:
        terra.generate_auth_token()
    assert type(raised.value) is TerraError


def test_an_auth_token_answer_without_expires_in_gets_the_documented_lifetime(stub):
    server, terra = stub
    answer(server, 200, b'{"status": "success", "token": "250c68b9"}')
    assert (terra.generate_auth_token().token, terra.generate_auth_token().expires_in) == ("250c68b9", 180)


@pytest.mark.parametrize(
    "status, body, content_type",
    [
        (200, b"[]", "application/json"),
        (200, b'{"users": []}', "application/json"),
        (404, b'{"status": "error", "message": "User not found"}', "application/json"),
        (404, b'{"type": "about:blank", "title": "not found", "detail": "user not found"}', "application/problem+json"),
    ],
)
def test_no_users_only_from_terras_own_answer_saying_so(stub, status, body, content_type):
    server, terra = stub
    answer(server, status, body, content_type)
    assert terra.users_by_reference("ref") == []
    assert terra.user_info("u-1") is None


@pytest.mark.parametrize(
    "status, body, content_type, message",
    [
        (404, b"<html><h1>Not Found</h1></html>", "text/html", "404 with text/html at http://127.0.0.1:"),
        (404, b'{"message": "Not Found"}', "text/html", "404 with text/html"),  # JSON, but not said to be
        (404, b"[]", "application/json", "not Terra's error JSON"),
        (404, b'{"status": "error", "message": "Invalid dev-id was provided"}', "application/json", "Invalid dev-id"),
        (404, b'{"message": "Not Found"}', "application/json", "(not Terra's answer for a missing user)"),
        (401, b'{"message": "unauthorized"}', "application/json", "401: unauthorized"),
        (403, b'{"title": "forbidden"}', "application/problem+json", "403: forbidden"),
        (200, b"[]", "text/html", "not JSON (text/html)"),
        (200, b'{"status": "error", "message": "no"}', "application/json", "not a list of users"),
        (200, b'[{"provider": "OURA"}]', "application/json", "not a list of users"),
        (503, b"<html>busy</html>", "text/html", "503"),
    ],
)
def test_any_other_answer_to_users_by_reference_is_an_error(stub, status, body, content_type, message):
    server, terra = stub
    terra.read_attempts = 1
    answer(server, status, body, content_type)
    with pytest.raises(TerraError, match=re.escape(message)) as raised:
        terra.users_by_reference("ref")
    assert not isinstance(raised.value, TerraNotFound)
