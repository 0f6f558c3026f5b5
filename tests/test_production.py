"""The app as docs/deploy.md deploys it: `APP_ENV=production` under gunicorn, behind Debian's nginx
terminating TLS (a test CA made with trustme) on a port other than 443, in live mode against a Terra
stand-in at another origin, clicked through in headless Chromium. The stand-in is this app's sandbox
run as a separate process in development mode, served over HTTPS by gunicorn itself, whose signed
webhooks reach the production app through nginx.

Each server starts once for the module. The commands and nginx blocks are taken from docs/deploy.md
itself, with only its placeholders (certificate files, addresses, ports, log path) filled in, so the
page and this test cannot drift.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import expect, sync_playwright
from requests.adapters import HTTPAdapter
from sqlalchemy import select

from app import create_app
from config import ConfigError
from extensions import db
from models import Connection, WebhookEvent
from sandbox.settings import SANDBOX_API_KEY, SANDBOX_DEV_ID
from tests import helpers
from tests.conftest import (
    ROOT,
    VENV_BIN,
    Browser,
    _empty_tables,
    _environ,
    free_port,
    server_process,
    wait_for,
)
from tests.helpers import doc_blocks, finish_widget, redis_test_url, token_of
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS


def page_blocks(language: str) -> list[str]:
    """The fenced code blocks of docs/deploy.md in `language`: the page is one section under its title."""
    return doc_blocks("deploy.md", "# Deploying Terra Connect", language)


def page_command(start: str) -> list[str]:
    """The one command of docs/deploy.md that starts with `start`, split as the shell splits it; run
    from the checkout, as the page says."""
    [line] = [line for block in page_blocks("sh") for line in block.splitlines() if line.startswith(start)]
    return shlex.split(line)


def page_nginx_block(containing: str) -> str:
    [block] = [block for block in page_blocks("nginx") if containing in block]
    return block


def fill_in(text: str, placeholders: dict[str, str]) -> str:
    """`text` with each of the page's placeholders replaced; each must be there, so that a change to the
    page that a deployment would have to follow fails here."""
    for placeholder, value in placeholders.items():
        assert placeholder in text, f"docs/deploy.md no longer has {placeholder!r}"
        text = text.replace(placeholder, value)
    return text


SERVE = page_command('.venv/bin/gunicorn --config gunicorn.conf.py "')
SERVE_TLS = page_command(".venv/bin/gunicorn --config gunicorn.conf.py --certfile")
MIGRATE = page_command(".venv/bin/flask --app app db upgrade")
NGINX = "/usr/sbin/nginx"  # Debian's package (`make test` installs it)
NGINX_SITE = page_nginx_block("server {")
NGINX_LIMITS = page_nginx_block("events {")

# Made the way docs/deploy.md (and the refusal message) says to make one.
SECRET_KEY = subprocess.run(
    page_command("python3 -c"), capture_output=True, text=True, check=True, timeout=30
).stdout.strip()
SIGNING_SECRET = "whsec-production-test-destination"
REDIS_URL = redis_test_url(2)  # a database of its own: test_scale_out uses the first, test_hostile_input the next
PASSWORD = "correct horse battery staple"
# Per hour, so that no window ends within a test (the limiter counts in fixed windows).
LOGIN_RATE_LIMIT = "10 per hour"


class Deployment:
    """Where everything runs: nginx at https://localhost:<port> (the app's public name) in front of the
    production app on http://127.0.0.1:<port>, the Terra stand-in at https://127.0.0.1:<port>, and the
    files of the test CA."""

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

        self.proxy_port, self.app_port, self.terra_port = free_port(), free_port(), free_port()
        self.url = f"https://localhost:{self.proxy_port}"
        self.terra_url = f"https://127.0.0.1:{self.terra_port}"
        self.access_log = folder / "nginx-access.log"

    def production_env(self, database_uri: str, **changes: str | None) -> dict[str, str]:
        """The production app's environment; a change to None leaves that variable out."""
        env = {
            **os.environ,
            "APP_ENV": "production",
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": database_uri,
            "PUBLIC_BASE_URL": self.url,
            "BIND": f"127.0.0.1:{self.app_port}",
            "TRUSTED_PROXY_COUNT": "1",
            "LOGIN_RATE_LIMIT": LOGIN_RATE_LIMIT,
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

    def serve_terra(self):
        """The stand-in, by the page's command for gunicorn terminating TLS itself."""
        command = [{"server.pem": self.certfile, "server.key": self.keyfile}.get(word, word) for word in SERVE_TLS]
        return server_process(
            command,
            health_url=self.terra_url + "/healthz",
            env=self.terra_env(),
            log_path=self.folder / "terra.log",
            verify=self.ca_bundle,
        )

    def serve_app(self, database_uri: str):
        return server_process(
            SERVE,
            health_url=f"http://127.0.0.1:{self.app_port}/readyz",
            env=self.production_env(database_uri),
            log_path=self.folder / "production.log",
        )

    def serve_proxy(self):
        """nginx with the page's blocks, as an ordinary foreground process on a port of its own, with
        every file it writes in this folder (its own prefix): the page's conf.d file goes into a minimal
        main configuration's http block, where Debian's nginx.conf includes conf.d/*.conf."""
        site = self.folder / "terra-connect.conf"
        site.write_text(
            fill_in(
                NGINX_SITE,
                {
                    "listen 443 ssl": f"listen 127.0.0.1:{self.proxy_port} ssl",
                    "server_name connect.example.com": "server_name localhost",
                    "/etc/ssl/certs/connect.example.com.pem": self.certfile,
                    "/etc/ssl/private/connect.example.com.key": self.keyfile,
                    "/var/log/nginx/terra-connect.access.log": str(self.access_log),
                    "http://127.0.0.1:8000": f"http://127.0.0.1:{self.app_port}",
                },
            )
        )
        # Debian's nginx keeps its temporary files under /var/lib/nginx: here, in this folder.
        temp_paths = "".join(
            f"    {kind}_temp_path {self.folder / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main = self.folder / "nginx.conf"
        main.write_text(
            # Run as root (CI containers), nginx's workers would become `nobody`, who cannot read this folder.
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"pid {self.folder / 'nginx.pid'};\nerror_log {self.folder / 'nginx-error.log'};\n"
            + NGINX_LIMITS
            + f"http {{\n{temp_paths}    include {site};\n}}\n"
        )
        return server_process(
            [NGINX, "-p", str(self.folder), "-c", str(main), "-g", "daemon off;"],
            health_url=f"https://127.0.0.1:{self.proxy_port}/healthz",
            env=dict(os.environ),
            log_path=self.folder / "nginx.log",
            verify=self.ca_bundle,
        )

    def logged_requests(self) -> str:
        return self.access_log.read_text()


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(MIGRATE, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, database_uri):
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"nginx is needed at {NGINX} (`make test` installs Debian's nginx)")
    deployment = Deployment(tmp_path_factory.mktemp("deployment"))
    limits = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    limits.flushdb()  # no Redis is a failure: production shares its limits there
    migrate(deployment.terra_env())
    migrate(deployment.production_env(database_uri))
    with deployment.serve_terra(), deployment.serve_app(database_uri), deployment.serve_proxy():
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
def test_register_log_out_log_in_connect_disconnect_through_nginx(deployment, chromium, database_uri):
    """On a public origin with a port (https://localhost:<port>): nginx's `$host` would drop it, and
    every form post would answer 400 "The referrer does not match the host"."""
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
    return_url = page.url

    page.click("text=Go to your connections")
    row = page.locator('#connections [data-provider="GARMIN"]')
    expect(row).to_have_attribute("data-status", "active")
    # History from Terra (the stand-in's data endpoints), by signed webhooks: the chart fills.
    page.click("text=Get the last 30 days")
    expect(page.locator(".flash")).to_contain_text("Asked Terra for 30 days of Garmin history")
    wait_for(lambda: page.reload() and page.locator("svg.steps-chart").count(), timeout=20)
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
    assert_no_token_logged(deployment, return_url)
    assert '"POST /webhooks/terra" 200' in deployment.logged_requests()  # Terra's delivery came through nginx


def assert_no_token_logged(deployment: Deployment, return_url: str) -> None:
    """nginx's access log (the page's log_format) shows the return page and the status polls without
    the attempt token, in the path or in `?attempt=`, nor Terra's parameters."""
    pages = urlsplit(return_url).path.rsplit("/", 1)[0]
    # nginx writes a request's line once it has sent the answer: a moment after the client has it.
    wait_for(lambda: f'"GET {pages}/[token]" 200' in deployment.logged_requests())
    logged = deployment.logged_requests()
    assert token_of(return_url) not in logged
    assert "reference_id" not in logged and "?" not in logged


def test_a_live_app_at_a_wrong_terra_url_revokes_nothing_and_its_reconcile_fails(deployment, database_uri):
    """TERRA_API_BASE_URL at a path the Terra stand-in does not serve (a 404 in the web app's own shape,
    not Terra's, as after a typo or a host move): `flask terra reconcile` exits non-zero naming the
    cause, and the connection stays active."""
    with create_app(environ=_environ(database_uri)).app_context():
        owner = helpers.create_user("misconfigured@example.com")
        db.session.add(Connection(user_id=owner.id, terra_user_id="still-at-terra", provider="GARMIN"))
        db.session.commit()
    env = deployment.production_env(database_uri, TERRA_API_BASE_URL=deployment.terra_url + "/sandbox/v3")
    done = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", "terra", "reconcile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"Terra answered 404 with application/json at {deployment.terra_url}/sandbox/v3/userInfo, not Terra's" in (
        done.stderr
    )
    with create_app(environ=_environ(database_uri)).app_context():
        row = db.session.scalars(select(Connection).where(Connection.terra_user_id == "still-at-terra")).one()
        assert (row.status, row.status_reason) == ("active", None)


def test_https_answers_carry_production_headers(deployment):
    response = requests.get(deployment.url + "/auth/login", verify=deployment.ca_bundle, timeout=10)
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"
    assert "form-action 'self' https:;" in response.headers["Content-Security-Policy"] + ";"
    assert "sandbox" not in response.text  # no sandbox badge: live mode
    assert response.headers["Server"] == "nginx"  # docs/deploy.md's block: no version
    sandbox = requests.get(deployment.url + "/sandbox/", verify=deployment.ca_bundle, timeout=10)
    assert sandbox.status_code == 404


def session_to(deployment: Deployment, **headers: str) -> requests.Session:
    """A client of the deployment that sends `headers` with every request."""
    session = requests.Session()
    session.verify = deployment.ca_bundle
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, wins over the session's CA
    session.headers.update(headers)
    return session


# Forwarded headers a client sends to move the app's links elsewhere: nginx passes X-Forwarded-Prefix
# and -Port on as they come (it overwrites X-Forwarded-Host), and the app must not believe them.
@pytest.mark.parametrize(
    "prefix, victim",
    [
        pytest.param("@evil.example", "victim-at", id="prefix making the host a user name"),
        pytest.param("//evil.example", "victim-slashes", id="prefix making links protocol-relative"),
    ],
)
def test_forwarded_headers_from_a_client_cannot_move_users_to_another_host(deployment, prefix, victim):
    hostile = {"X-Forwarded-Prefix": prefix, "X-Forwarded-Port": "666", "X-Forwarded-Host": "evil.example"}
    web = Browser(deployment.url)
    web.http = session_to(deployment, **hostile, Referer=deployment.url + "/")  # a browser's, same-origin
    handed_out: list[str] = []  # every redirect and page the app answered

    def answer(response: requests.Response, status: int) -> requests.Response:
        assert response.status_code == status, response.text
        handed_out.extend([response.headers.get("Location", ""), response.text])
        return response

    def submit(page: str, action: str, status: int = 303, **data: str) -> str:
        return answer(web.submit(page, action, data, allow_redirects=False), status).headers["Location"]

    account = {"email": f"{victim}@example.com", "password": PASSWORD}
    assert answer(web.get("/connections", allow_redirects=False), 302).headers["Location"].startswith("/auth/login?")
    assert submit("/auth/register", "/auth/register", **account) == "/connections"
    answer(web.get("/connections"), 200)
    submit("/connections", "/auth/logout")
    assert submit("/auth/login", "/auth/login", **account) == "/connections"

    # The return link the app gave Terra for the widget, where the browser goes after consent.
    web_return = finish_widget(submit("/connections", "/connections/connect"), verify=deployment.ca_bundle)
    assert web_return.startswith(deployment.url + "/connect/return/success/")
    answer(web.get(web_return), 200)

    # The mobile app's, asked for with a Host that names the public host on another port.
    api = session_to(deployment, **hostile, Host="localhost:666")
    token = answer(api.post(deployment.url + "/api/v1/tokens", json=account), 201).json()["access_token"]
    api.headers["Authorization"] = "Bearer " + token
    attempt = answer(api.post(deployment.url + "/api/v1/connect-attempts", json={"return": "page"}), 201).json()
    assert attempt["status_url"].startswith("/api/v1/connect-attempts/")
    mobile_return = finish_widget(attempt["url"], account=victim, verify=deployment.ca_bundle)
    assert mobile_return.startswith(deployment.url + "/mobile/return/success/")
    answer(web.get(mobile_return), 200)

    assert not re.search("evil[.]example|:666", "\n".join(handed_out))
    own_origins = ("#", deployment.url + "/", deployment.terra_url + "/")
    for link in re.findall(r'(?:href|action|src)="([^"]*)"', "\n".join(handed_out)):
        assert link.startswith(own_origins) or re.match(r"/(?![/\\])", link), link  # a path, not //host
    assert_no_token_logged(deployment, web_return)
    assert_no_token_logged(deployment, mobile_return)


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
        f"https://127.0.0.1:{deployment.proxy_port}/auth/login",  # through nginx, which passes the Host on
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
        {"SECRET_KEY_FALLBACKS": "changeme"}, "SECRET_KEY_FALLBACKS (entry 1 of 1) is a published", id="weak fallback"
    ),
    pytest.param({"SECRET_KEY": "x" * 48}, "SECRET_KEY is too easy to guess", id="repeated SECRET_KEY"),
    pytest.param(
        {"TERRA_SIGNING_SECRET": "sandbox-signing-secret-not-for-production"},
        "TERRA_SIGNING_SECRET is a published sample value",
        id="the sandbox's signing secret",
    ),
    pytest.param(
        {"TERRA_API_BASE_URL": "http://127.0.0.1:9/sandbox/v2"}, "TERRA_API_BASE_URL must be https://", id="http Terra"
    ),
    pytest.param({"FLASK_DEBUG": "1"}, "FLASK_DEBUG must be off", id="debug mode"),
    pytest.param(
        {"SECRET_KEY": "short-secret-key-of-31-chars..."},
        "SECRET_KEY must be at least 32 characters",
        id="short SECRET_KEY",
    ),
]


def refused_env(tmp_path: Path, changes: dict[str, str | None]) -> dict[str, str]:
    return Deployment(tmp_path).production_env(f"sqlite:///{tmp_path / 'refused.sqlite'}", **changes)


def assert_no_secret_in(output: str, env: dict[str, str]) -> None:
    names = ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "TERRA_API_KEY", "TERRA_SIGNING_SECRET")
    for secret in (env.get(name) for name in names):
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
        pytest.param(SERVE, id="gunicorn"),
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


class FromAddress(HTTPAdapter):
    """Connects from another loopback address (all of 127.0.0.0/8 is this machine's): to nginx, another
    client."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, source_address=(self.address, 0), **kwargs)


def test_through_nginx_forms_want_a_same_origin_referer_and_limits_count_the_real_client(deployment):
    """The app knows the browser is on HTTPS (nginx says so), so form posts need a same-origin Referer;
    and it rate-limits by the address nginx saw, whatever X-Forwarded-For the client sends."""

    def client(address: str) -> Browser:
        browser = Browser(deployment.url)
        browser.http = session_to(deployment, **{"X-Forwarded-For": "203.0.113.9"})  # forged, ignored
        browser.http.mount("https://", FromAddress(address))
        return browser

    mallory = client("127.0.0.2")

    def log_in(browser: Browser, attempt: int, **headers: str) -> requests.Response:
        wrong = {"email": f"nobody-{attempt}@example.com", "password": "wrong password"}
        return browser.submit("/auth/login", "/auth/login", wrong, headers=headers)

    assert b"referrer header is missing" in log_in(mallory, 0).content
    assert b"referrer does not match the host" in log_in(mallory, 0, Referer="https://evil.example.net/").content
    same_origin = {"Referer": deployment.url + "/auth/login"}
    limit = int(LOGIN_RATE_LIMIT.split()[0])
    answers = [log_in(mallory, attempt, **same_origin).status_code for attempt in range(1, limit + 2)]
    assert answers == [400] * limit + [429]  # refused by the CSRF check, the first two were not counted
    assert log_in(client("127.0.0.3"), 0, **same_origin).status_code == 400


# Every form of the app, by the path it posts to; ids need not exist: the CSRF check comes first.
FORMS = [
    "/auth/register",
    "/auth/login",
    "/auth/logout",
    "/connections/connect",
    "/connections/connect/GARMIN",
    "/connections/1/disconnect",
    "/connections/1/events/1/replay",
]


@pytest.mark.parametrize("referer", ["https://localhost:99999/", "https://[::1/"])
def test_a_form_post_with_a_malformed_referer_is_a_400(deployment, referer):
    """Over HTTPS, Flask-WTF compares the Referer's origin with the host's; one it cannot parse is a
    bad request like any other failed check, on every form, signed in (as each form is posted)."""
    browser = Browser(deployment.url)
    browser.http.verify, browser.http.trust_env = deployment.ca_bundle, False  # no CA bundle from the environment
    same_origin = {"Referer": deployment.url + "/auth/register"}
    email = f"referer-{len(referer)}@example.com"
    signed_in = browser.submit(
        "/auth/register", "/auth/register", {"email": email, "password": PASSWORD}, headers=same_origin
    )
    assert signed_in.url == deployment.url + "/connections"
    token = Browser.CSRF.search(browser.get("/connections").text).group(1)
    for path in FORMS:
        response = browser.http.post(
            deployment.url + path,
            data={"csrf_token": token},
            headers={"Referer": referer},
            allow_redirects=False,
            timeout=10,
        )
        assert (path, response.status_code) == (path, 400)
        assert "The referrer header is malformed." in response.text
    assert "Your connections" in browser.get("/connections").text  # still signed in: logging out was refused too


def test_sign_in_tries_are_counted_per_account_from_any_address(database_uri, tmp_path, app):
    """80 wrong passwords from 80 addresses, through a TLS proxy that names each client
    (TRUSTED_PROXY_COUNT=1): the per-address limit never bites, the per-account one does (10 in 15
    minutes by default), for the web page and the API's token endpoint together, counted in Redis by
    gunicorn's two workers alike. Past it the right password is refused too, for a window the answer
    names, and an email without an account gets the very same answer."""
    public = "https://connect.example.com"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = Deployment(tmp_path).production_env(
        database_uri, BIND=f"127.0.0.1:{port}", PUBLIC_BASE_URL=public, TRUSTED_PROXY_COUNT="1"
    )
    # Fresh emails on every run: the counts live in Redis for their window, across test runs.
    owner, stranger = (f"{name}-{secrets.token_hex(4)}@example.com" for name in ("owner", "nobody"))
    with app.app_context():
        helpers.create_user(owner)
    addresses = iter(f"198.18.{number // 200}.{number % 200 + 1}" for number in range(1000))

    def through_proxy(method: str, path: str, **kwargs) -> requests.Response:
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "connect.example.com", **kwargs.pop("headers", {})}
        headers["X-Forwarded-For"] = next(addresses)  # a new client every time
        return requests.request(method, url + path, headers=headers, allow_redirects=False, timeout=10, **kwargs)

    def api_sign_in(email: str, password: str) -> requests.Response:
        return through_proxy("POST", "/api/v1/tokens", json={"email": email, "password": password})

    with server_process(SERVE, health_url=url + "/healthz", env=env, log_path=tmp_path / "accounts.log"):
        form = through_proxy("GET", "/auth/login")
        web_session = {"Cookie": form.headers["Set-Cookie"].split(";")[0], "Referer": public + "/auth/login"}
        csrf_token = Browser.CSRF.search(form.text).group(1)

        def web_sign_in(email: str, password: str) -> requests.Response:
            credentials = {"csrf_token": csrf_token, "email": email, "password": password}
            return through_proxy("POST", "/auth/login", data=credentials, headers=web_session)

        tries = [(web_sign_in if number % 2 else api_sign_in)(owner, f"wrong guess {number}") for number in range(80)]
        assert [response.status_code for response in tries[:10]] == [401, 400] * 5
        assert {response.status_code for response in tries[10:]} == {429}
        refused = api_sign_in(owner, helpers.PASSWORD)
        assert refused.status_code == 429 and web_sign_in(owner, helpers.PASSWORD).status_code == 429
        assert "Too many sign-in attempts for this email address" in refused.json()["error"]["message"]
        assert 0 < int(refused.headers["Retry-After"]) <= 15 * 60  # the window ends it, not an operator

        unknown = [api_sign_in(stranger, f"wrong guess {number}") for number in range(11)]
        assert [response.status_code for response in unknown] == [401] * 10 + [429]
        assert unknown[-1].json() == refused.json()
