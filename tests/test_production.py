"""The app as docs/deploy.md deploys it: `APP_ENV=production` under gunicorn, over HTTPS (a test CA
made with trustme), in live mode against a Terra stand-in at another origin, clicked through in
headless Chromium. The stand-in is this app's sandbox run as a separate process in development mode,
over HTTPS too, whose signed webhooks reach the production app over TLS.

Each server starts once for the module. The commands are the ones docs/deploy.md shows: migrations with
`flask --app app db upgrade`, then `gunicorn --config gunicorn.conf.py ... "app:create_app()"`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import select

from app import create_app
from config import ConfigError
from extensions import db
from models import WebhookEvent
from sandbox.settings import SANDBOX_API_KEY, SANDBOX_DEV_ID
from tests.conftest import ROOT, VENV_BIN, Browser, _empty_tables, _environ, free_port, server_process
from tests.helpers import redis_test_url
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

GUNICORN = [str(VENV_BIN / "gunicorn"), "--config", "gunicorn.conf.py"]
APP = "app:create_app()"
MIGRATE = [str(VENV_BIN / "flask"), "--app", "app", "db", "upgrade", "heads"]

# Made the way docs/deploy.md (and the refusal message) says to make one.
SECRET_KEY = subprocess.run(
    [sys.executable, "-c", "import secrets; print(secrets.token_urlsafe(48))"],
    capture_output=True,
    text=True,
    check=True,
).stdout.strip()
SIGNING_SECRET = "whsec-production-test-destination"
REDIS_URL = redis_test_url(2)  # a database of its own: test_scale_out uses the first, test_hostile_input the next
PASSWORD = "correct horse battery staple"


class Deployment:
    """Where everything runs: the production app at https://localhost:<port> (its public name), the
    Terra stand-in at https://127.0.0.1:<port>, and the files of the test CA."""

    def __init__(self, folder: Path):
        self.folder = folder
        ca = trustme.CA()
        # One certificate for both servers: they are told apart by host name and port.
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_bundle = str(folder / "ca.pem")
        self.certfile = str(folder / "server.pem")
        self.keyfile = str(folder / "server.key")
        ca.cert_pem.write_to_path(self.ca_bundle)
        for pem in cert.cert_chain_pems:
            pem.write_to_path(self.certfile, append=True)
        cert.private_key_pem.write_to_path(self.keyfile)
        leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
        spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self.spki_sha256 = base64.b64encode(hashlib.sha256(spki).digest()).decode()

        self.app_port, self.terra_port = free_port(), free_port()
        self.url = f"https://localhost:{self.app_port}"
        self.terra_url = f"https://127.0.0.1:{self.terra_port}"

    def production_env(self, database_uri: str, **changes: str | None) -> dict[str, str]:
        """The production app's environment; a change to None leaves that variable out."""
        env = {
            **os.environ,
            "APP_ENV": "production",
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": database_uri,
            "PUBLIC_BASE_URL": self.url,
            "BIND": f"127.0.0.1:{self.app_port}",
            # The load balancer's health checks come by address (docs/deploy.md).
            "EXTRA_TRUSTED_HOSTS": "127.0.0.1",
            "TERRA_DEV_ID": SANDBOX_DEV_ID,
            "TERRA_API_KEY": SANDBOX_API_KEY,
            "TERRA_SIGNING_SECRET": SIGNING_SECRET,
            "TERRA_WIDGET_SESSION_URL": self.terra_url + "/sandbox/api/widget/session",
            "TERRA_LEGACY_WIDGET_URL": self.terra_url + "/sandbox/v2/auth/generateWidgetSession",
            "TERRA_API_BASE_URL": self.terra_url + "/sandbox/v2",
            "RATELIMIT_STORAGE_URI": REDIS_URL,
            "REQUESTS_CA_BUNDLE": self.ca_bundle,  # the app's calls to "Terra" trust the test CA
        }
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def terra_env(self) -> dict[str, str]:
        """The stand-in: the sandbox in development mode with its own database, signing with the
        production app's secret and delivering to its https URL."""
        return {
            **os.environ,
            "APP_ENV": "development",
            "SECRET_KEY": "terra-stand-in-secret-key",
            "DATABASE_URL": f"sqlite:///{self.folder / 'terra.sqlite'}",
            "PUBLIC_BASE_URL": self.terra_url,
            "BIND": f"127.0.0.1:{self.terra_port}",
            "WEB_CONCURRENCY": "1",
            "SANDBOX_SIGNING_SECRET": SIGNING_SECRET,
            "SANDBOX_WEBHOOK_URL": self.url + "/webhooks/terra",
            "SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
            "REQUESTS_CA_BUNDLE": self.ca_bundle,
        }

    def serve(self, env: dict[str, str], health_url: str, log_name: str):
        command = [*GUNICORN, "--certfile", self.certfile, "--keyfile", self.keyfile, APP]
        return server_process(
            command, health_url=health_url, env=env, log_path=self.folder / log_name, verify=self.ca_bundle
        )


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(MIGRATE, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, database_uri):
    deployment = Deployment(tmp_path_factory.mktemp("deployment"))
    limits = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    limits.flushdb()  # no Redis is a failure: production shares its limits there
    migrate(deployment.terra_env())
    migrate(deployment.production_env(database_uri))
    with (
        deployment.serve(deployment.terra_env(), deployment.terra_url + "/healthz", "terra.log"),
        deployment.serve(
            deployment.production_env(database_uri), f"https://127.0.0.1:{deployment.app_port}/readyz", "production.log"
        ),
    ):
        yield deployment
    _empty_tables(create_app(environ=_environ(database_uri)))
    limits.flushdb()
    limits.close()


@pytest.fixture(scope="module")
def chromium(deployment):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is needed at {CHROMIUM} (`make test` installs Debian's chromium)")
    # Chromium trusts the test certificate's key, and nothing else beyond its usual roots.
    args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={deployment.spki_sha256}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


@pytest.mark.browser
def test_register_log_out_log_in_connect_disconnect_over_https(deployment, chromium, database_uri):
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    app = deployment.url

    def sign_in(path: str) -> None:
        page.goto(app + path)
        page.fill("input[name=email]", "prod@example.com")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Your connections")

    def log_out() -> None:
        page.click("text=Log out")
        expect(page.locator("nav")).to_contain_text("Log in")

    # Every form posts over HTTPS, where Flask-WTF wants a same-origin Referer.
    sign_in("/auth/register")
    cookie = next(cookie for cookie in context.cookies() if cookie["name"] == "session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    log_out()
    sign_in("/auth/login")

    page.click("#connect-device")
    page.wait_for_url(deployment.terra_url + "/sandbox/widget/**")  # Terra's origin, not ours
    page.click("[data-provider=GARMIN]")
    page.fill("input[name=account]", "prod-garmin")
    page.click("button[type=submit]")
    page.click("button[name=decision][value=allow]")
    page.wait_for_url(app + "/connect/return/success**")
    expect(page.locator("#attempt h1")).to_have_text("Connected to Garmin")

    page.click("text=Go to your connections")
    row = page.locator('#connections [data-provider="GARMIN"]')
    expect(row).to_have_attribute("data-status", "active")
    page.click("text=Disconnect")
    page.click("#confirm-disconnect")
    expect(row).to_have_attribute("data-status", "revoked")
    log_out()
    page.goto(app + "/connections")
    expect(page.locator("h1")).to_have_text("Log in")
    context.close()

    # The connection came from Terra's signed webhook, delivered over TLS and verified with the secret.
    with create_app(environ=_environ(database_uri)).app_context():
        events = db.session.scalars(select(WebhookEvent)).all()
        assert ("auth", "applied") in {(event.event_type, event.outcome) for event in events}


def test_https_answers_carry_production_headers(deployment):
    response = requests.get(deployment.url + "/auth/login", verify=deployment.ca_bundle, timeout=10)
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"
    assert "form-action 'self' https:;" in response.headers["Content-Security-Policy"] + ";"
    assert "sandbox" not in response.text  # no sandbox badge: live mode
    sandbox = requests.get(deployment.url + "/sandbox/", verify=deployment.ca_bundle, timeout=10)
    assert sandbox.status_code == 404


@pytest.mark.parametrize(
    "host, status",
    [
        ("localhost", 200),  # the public name (PUBLIC_BASE_URL)
        ("127.0.0.1", 200),  # the health checks' (EXTRA_TRUSTED_HOSTS)
        ("evil.example.net", 400),
        ("a" * 64 + ".example.com", 400),
        ("localhost..example.com", 400),
    ],
)
def test_only_configured_hosts_are_served(deployment, host, status):
    response = requests.get(
        f"https://127.0.0.1:{deployment.app_port}/auth/login",
        headers={"Host": host},
        verify=deployment.ca_bundle,
        timeout=10,
    )
    assert response.status_code == status


# What production refuses, and the message that names the fix; no secret value may be printed.
REFUSALS = [
    pytest.param(
        {"TERRA_DEV_ID": None, "TERRA_API_KEY": None, "TERRA_SIGNING_SECRET": None},
        "needs live Terra credentials: set TERRA_DEV_ID, TERRA_API_KEY, TERRA_SIGNING_SECRET",
        id="no Terra credentials",
    ),
    pytest.param({"PUBLIC_BASE_URL": None}, "PUBLIC_BASE_URL is required", id="no PUBLIC_BASE_URL"),
    pytest.param(
        {"PUBLIC_BASE_URL": "http://localhost"}, "PUBLIC_BASE_URL must be https://", id="http PUBLIC_BASE_URL"
    ),
    pytest.param(
        {"SECRET_KEY": "short-secret-key-of-31-chars..."},
        "SECRET_KEY must be at least 32 characters",
        id="short SECRET_KEY",
    ),
]


def refused_env(tmp_path: Path, changes: dict[str, str | None]) -> dict[str, str]:
    return Deployment(tmp_path).production_env(f"sqlite:///{tmp_path / 'refused.sqlite'}", **changes)


def assert_no_secret_in(output: str, env: dict[str, str]) -> None:
    for secret in (env.get("SECRET_KEY"), env.get("TERRA_API_KEY"), env.get("TERRA_SIGNING_SECRET")):
        assert not secret or secret not in output


@pytest.mark.parametrize("changes, message", REFUSALS)
def test_production_refuses_to_start(tmp_path, changes, message):
    """Each refusal, from create_app: the code gunicorn's workers and the `flask` command run first (the
    next test starts both for real)."""
    env = refused_env(tmp_path, changes)
    with pytest.raises(ConfigError) as refused:
        create_app(environ=env)
    assert message in str(refused.value)
    assert_no_secret_in(str(refused.value), env)


@pytest.mark.parametrize(
    "entry_point",
    [
        pytest.param([*GUNICORN, APP], id="gunicorn"),
        pytest.param(MIGRATE, id="flask db upgrade"),
    ],
)
def test_each_entry_point_refuses_to_start_and_says_why(tmp_path, entry_point):
    changes, message = REFUSALS[-1].values  # a secret in the environment that must not be printed
    env = refused_env(tmp_path, changes)
    done = subprocess.run(entry_point, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert message in output
    assert_no_secret_in(output, env)


def test_behind_a_tls_proxy(database_uri, tmp_path, app):  # `app` empties the tables afterwards
    """TRUSTED_PROXY_COUNT=1 and plain HTTP on loopback: the proxy terminates TLS and says so in
    X-Forwarded-*. The app then holds form posts to the HTTPS rules (a same-origin Referer), answers only
    to the public host, and rate-limits by the client's address rather than the proxy's."""
    public = "https://connect.example.com"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = Deployment(tmp_path).production_env(
        database_uri,
        BIND=f"127.0.0.1:{port}",
        PUBLIC_BASE_URL=public,
        TRUSTED_PROXY_COUNT="1",
        LOGIN_RATE_LIMIT="2 per minute",
    )

    def through_proxy(
        method: str, path: str, client: str = "203.0.113.9", host: str = "connect.example.com", **kwargs
    ) -> requests.Response:
        headers = {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": host,
            "X-Forwarded-For": client,
            **kwargs.pop("headers", {}),
        }
        return requests.request(method, url + path, headers=headers, allow_redirects=False, timeout=10, **kwargs)

    with server_process([*GUNICORN, APP], health_url=url + "/healthz", env=env, log_path=tmp_path / "proxied.log"):
        form = through_proxy("GET", "/auth/register")
        assert "Secure" in form.headers["Set-Cookie"]  # the app knows the browser is on HTTPS
        # The Secure cookie goes back by hand: requests would keep it from this http:// URL.
        session = {"Cookie": form.headers["Set-Cookie"].split(";")[0]}
        token = Browser.CSRF.search(form.text).group(1)
        register = {"csrf_token": token, "email": "proxied@example.com", "password": PASSWORD}

        def post_register(**headers: str) -> requests.Response:
            return through_proxy("POST", "/auth/register", data=register, headers={**session, **headers})

        assert b"referrer header is missing" in post_register().content
        assert b"referrer does not match the host" in post_register(Referer="https://evil.example.net/").content
        assert post_register(Referer=public + "/auth/register").status_code == 303
        assert through_proxy("GET", "/auth/login", host="evil.example.net").status_code == 400

        def log_in_from(client: str) -> int:
            wrong = {"csrf_token": token, "email": "proxied@example.com", "password": "wrong password"}
            return through_proxy(
                "POST", "/auth/login", client=client, data=wrong, headers={**session, "Referer": public + "/auth/login"}
            ).status_code

        assert [log_in_from("203.0.113.9") for _ in range(3)] == [400, 400, 429]
        assert log_in_from("203.0.113.10") == 400
