"""Security settings: headers on every page, proxies, HSTS, and no secret in any log line."""

from __future__ import annotations

import re

import pytest
import requests

from app import create_app
from sandbox.settings import DEFAULT_SANDBOX_SIGNING_SECRET, SANDBOX_API_KEY
from services.attempts import return_page_url
from tests.conftest import TEST_SECRET_KEY, Browser, wait_for
from tests.helpers import token_of
from tests.test_config import PRODUCTION
from tests.test_connect_flow import finish_widget, start_connect, wait_for_terminal

PASSWORD = "correct horse battery staple"
PAGES = [
    "/",
    "/auth/login",
    "/auth/register",
    "/healthz",
    "/readyz",
    "/sandbox/",
    "/no-such-page",
    "/connect/return/success/forged",
    "/api/v1/connections",
    "/.well-known/assetlinks.json",
]


@pytest.mark.parametrize("path", PAGES)
def test_security_headers_on_every_answer(client, path):
    response = client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP in tests


def test_production_adds_hsts_and_secure_cookies(tmp_path):
    app = create_app(environ={**PRODUCTION, "DATABASE_URL": f"sqlite:///{tmp_path}/p.sqlite"})
    response = app.test_client().get("/healthz", base_url="https://connect.example.com")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert app.config["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize("proxies, second_client_limited", [("0", True), ("1", False)])
def test_proxy_fix_decides_which_address_the_rate_limit_sees(database_uri, proxies, second_client_limited):
    app = create_app(
        {"WTF_CSRF_ENABLED": False, "LOGIN_RATE_LIMIT": "2 per minute"},
        environ={"APP_ENV": "testing", "SECRET_KEY": "k", "TRUSTED_PROXY_COUNT": proxies, "DATABASE_URL": database_uri},
    )
    client = app.test_client()

    def login_from(address):
        return client.post(
            "/auth/login",
            data={"email": "a@example.com", "password": "wrong password"},
            headers={"X-Forwarded-For": address},
        ).status_code

    assert [login_from("203.0.113.1") for _ in range(3)] == [400, 400, 429]
    # Without a trusted proxy every request comes from the proxy's address, so the limit is shared.
    assert (login_from("203.0.113.2") == 429) is second_client_limited


@pytest.mark.parametrize(
    "trusted_headers, prefix, login_page",
    [
        # By default a client's X-Forwarded-Prefix, which a proxy passes on unless it sets its own, is ignored.
        pytest.param(None, "//evil.example", "/auth/login", id="prefix not trusted"),
        # A deployment whose proxy sets the prefix says so: the app's links then follow it.
        pytest.param("for,proto,host,prefix", "/terra", "/terra/auth/login", id="prefix trusted"),
    ],
)
def test_a_forwarded_prefix_moves_links_only_when_the_proxy_is_said_to_set_it(
    database_uri, trusted_headers, prefix, login_page
):
    environ = {"APP_ENV": "testing", "SECRET_KEY": "k", "TRUSTED_PROXY_COUNT": "1", "DATABASE_URL": database_uri}
    if trusted_headers:
        environ["TRUSTED_PROXY_HEADERS"] = trusted_headers
    response = create_app(environ=environ).test_client().get("/connections", headers={"X-Forwarded-Prefix": prefix})
    assert response.status_code == 302
    assert response.headers["Location"].startswith(login_page + "?")


@pytest.mark.parametrize("pages", ["connect", "mobile"])
def test_the_return_urls_given_to_terra_come_from_public_base_url_alone(app, pages):
    """Whatever the request says its host, port and script root are (a proxy the app trusts too much)."""
    with app.test_request_context("/", base_url="https://evil.example:666/@evil.example"):
        url = return_page_url(pages, "success", "the-token")
    assert url == f"{app.config['PUBLIC_BASE_URL']}/{pages}/return/success/the-token"


def test_no_secret_or_token_appears_in_the_logs_of_a_full_flow(gunicorn_server, app, tmp_path):
    browser = Browser(gunicorn_server)
    browser.register(email="logs@example.com", password=PASSWORD)
    return_url = finish_widget(start_connect(browser))
    wait_for_terminal(browser, return_url)
    attempt_token = token_of(return_url)

    token = requests.post(
        gunicorn_server + "/api/v1/tokens", json={"email": "logs@example.com", "password": PASSWORD}, timeout=10
    ).json()["access_token"]
    api = {"Authorization": f"Bearer {token}"}
    attempt = requests.post(gunicorn_server + "/api/v1/connect-attempts", json={}, headers=api, timeout=10).json()
    mobile_return = finish_widget(attempt["url"], account="logs-phone")
    requests.get(mobile_return, timeout=10)
    requests.get(gunicorn_server + attempt["status_url"], headers=api, timeout=10)
    requests.get(gunicorn_server + "/api/v1/connections", headers={"Authorization": "Bearer wrong-token"}, timeout=10)
    session_cookie = browser.http.cookies.get("session")

    port = gunicorn_server.rsplit(":", 1)[1]
    log_path = tmp_path / f"gunicorn-{port}.log"

    def whole_flow_logged() -> str | None:  # the workers write their access lines on their own time
        text = log_path.read_text()
        return text if "POST /webhooks/terra" in text and "GET /api/v1/connect-attempts/" in text else None

    log = wait_for(whole_flow_logged)
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


# Werkzeug refuses a Host with an empty or over-long (64+) label before routing; the error page then
# has no URLs to build. Each must be a plain 400, never a 500, on every kind of page.
HOSTILE_HOSTS = ["a" * 64 + ".example.com", "connect..example.com"]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
@pytest.mark.parametrize("path", PAGES)
def test_a_malformed_host_header_is_a_400(client, path, host):
    response = client.get(path, headers={"Host": host})
    assert response.status_code == 400
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture
def production_app(tmp_path):
    return create_app(environ={**PRODUCTION, "DATABASE_URL": f"sqlite:///{tmp_path}/p.sqlite"})


@pytest.mark.parametrize("host", ["evil.example.net", "connect.example.com.evil.example.net", *HOSTILE_HOSTS])
@pytest.mark.parametrize("path", ["/", "/auth/login", "/healthz", "/api/v1/connections", "/no-such-page"])
def test_production_answers_only_to_its_public_host(production_app, path, host):
    client = production_app.test_client()
    assert client.get(path, headers={"Host": host}, base_url="https://connect.example.com").status_code == 400
    trusted = client.get(path, base_url="https://connect.example.com")
    assert trusted.status_code in (200, 401, 404)


def test_production_never_mounts_the_sandbox(production_app):
    assert not any(rule.rule.startswith("/sandbox") for rule in production_app.url_map.iter_rules())
    assert production_app.test_client().get("/sandbox/", base_url="https://connect.example.com").status_code == 404


def test_form_action_allows_plain_http_only_outside_production(production_app, tmp_path):
    def form_action(app) -> str:
        page = app.test_client().get("/auth/login", base_url=app.config["PUBLIC_BASE_URL"])
        return re.search(r"form-action ([^;]+)", page.headers["Content-Security-Policy"]).group(1)

    assert form_action(production_app) == "'self' https:"
    scheme_app = create_app(
        environ={
            **PRODUCTION,
            "MOBILE_APP_SCHEME": "com.example.health",
            "DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite",
        }
    )
    assert form_action(scheme_app) == "'self' https: com.example.health:"
    # The sandbox's own pages and their redirects stay on http:// loopback in development.
    development = create_app(environ={"DATABASE_URL": f"sqlite:///{tmp_path}/d.sqlite"})
    assert form_action(development) == "'self' http: https: com.example.terraconnect:"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/connections",
        "/connections/providers",
        "/auth/login",
        "/auth/register",
        "/connect/return/success?attempt=forged",
    ],
)
def test_pages_are_never_cached(client, auth, path):
    assert auth.register().status_code == 303
    response = client.get(path)
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
