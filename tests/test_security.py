"""Security settings: headers on every page, proxies, HSTS, and no secret in any log line."""

from __future__ import annotations

import pytest
import requests

from app import create_app
from config import DEFAULT_SANDBOX_SIGNING_SECRET, SANDBOX_API_KEY
from tests.conftest import TEST_SECRET_KEY, Browser
from tests.helpers import token_of
from tests.test_connect_flow import finish_widget, start_connect, wait_for_terminal

PASSWORD = "correct horse battery staple"
PAGES = ["/", "/auth/login", "/auth/register", "/healthz", "/readyz", "/sandbox/", "/no-such-page",
         "/connect/return/success/forged", "/api/v1/connections", "/.well-known/assetlinks.json"]


@pytest.mark.parametrize("path", PAGES)
def test_security_headers_on_every_answer(client, path):
    response = client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP in tests


def test_production_adds_hsts_and_secure_cookies(tmp_path):
    app = create_app(environ={"APP_ENV": "production", "SECRET_KEY": "k" * 40,
                              "DATABASE_URL": f"sqlite:///{tmp_path}/p.sqlite"})
    response = app.test_client().get("/healthz")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert app.config["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize("proxies, second_client_limited", [("0", True), ("1", False)])
def test_proxy_fix_decides_which_address_the_rate_limit_sees(database_uri, proxies, second_client_limited):
    app = create_app({"WTF_CSRF_ENABLED": False, "LOGIN_RATE_LIMIT": "2 per minute"},
                     environ={"APP_ENV": "testing", "SECRET_KEY": "k", "TRUSTED_PROXY_COUNT": proxies,
                              "DATABASE_URL": database_uri})
    client = app.test_client()

    def login_from(address):
        return client.post("/auth/login", data={"email": "a@example.com", "password": "wrong password"},
                           headers={"X-Forwarded-For": address}).status_code

    assert [login_from("203.0.113.1") for _ in range(3)] == [400, 400, 429]
    # Without a trusted proxy every request comes from the proxy's address, so the limit is shared.
    assert (login_from("203.0.113.2") == 429) is second_client_limited


def test_no_secret_or_token_appears_in_the_logs_of_a_full_flow(gunicorn_server, app, tmp_path):
    browser = Browser(gunicorn_server)
    browser.register(email="logs@example.com", password=PASSWORD)
    return_url = finish_widget(start_connect(browser))
    wait_for_terminal(browser, return_url)
    attempt_token = token_of(return_url)

    token = requests.post(gunicorn_server + "/api/v1/tokens", json={"email": "logs@example.com", "password": PASSWORD},
                          timeout=10).json()["access_token"]
    api = {"Authorization": f"Bearer {token}"}
    attempt = requests.post(gunicorn_server + "/api/v1/connect-attempts", json={}, headers=api, timeout=10).json()
    mobile_return = finish_widget(attempt["url"], account="logs-phone")
    requests.get(mobile_return, timeout=10)
    requests.get(gunicorn_server + attempt["status_url"], headers=api, timeout=10)
    requests.get(gunicorn_server + "/api/v1/connections", headers={"Authorization": "Bearer wrong-token"}, timeout=10)
    session_cookie = browser.http.cookies.get("session")

    port = gunicorn_server.rsplit(":", 1)[1]
    log = (tmp_path / f"gunicorn-{port}.log").read_text()
    assert "POST /webhooks/terra" in log and "GET /api/v1/connect-attempts/" in log  # the log did capture the flow
    secrets = {
        "SECRET_KEY": TEST_SECRET_KEY,
        "signing secret": DEFAULT_SANDBOX_SIGNING_SECRET,
        "Terra API key": SANDBOX_API_KEY,
        "password": PASSWORD,
        "bearer token": token,
        "web attempt token": attempt_token,
        "mobile attempt token": token_of(mobile_return),
        "session cookie": session_cookie,
    }
    for name, value in secrets.items():
        assert value and value not in log, f"the {name} appears in the logs"
