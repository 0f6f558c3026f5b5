"""Configuration from the environment: defaults, validation, and failing fast; and the entry points
(`flask`, gunicorn, `flask run`) reading the same settings, `.env` included."""

import os
import secrets
import subprocess
import sys

import dotenv
import pytest

from app import create_app
from config import AppSettings, ConfigError, TerraSettings, load_config
from mobile_redirects.settings import MobileSettings
from tests.conftest import ROOT, TEST_SECRET_KEY, VENV_BIN, Browser, _environ, free_port, server_process

LIVE = {"TERRA_DEV_ID": "dev", "TERRA_API_KEY": "key", "TERRA_SIGNING_SECRET": "whsec"}
# Made as docs/deploy.md says (secrets.token_urlsafe(48)), once: a key that production accepts.
STRONG_KEY = "Vx2Qh9Lr0aTz5kP-Wm7cYs_NbE3dUf8GjR1oXiK4lHqC6ZpA9tS2wMeBvD0yJnF"
PRODUCTION = {
    **LIVE,
    "APP_ENV": "production",
    "SECRET_KEY": STRONG_KEY,
    "PUBLIC_BASE_URL": "https://connect.example.com",
}


def started_config(tmp_path, **env: str) -> dict:
    """app.config of an app started with this environment (a throwaway SQLite database), the
    sandbox's settings included: the sandbox reads them itself when it is registered."""
    return create_app(environ={"SECRET_KEY": "k" * 32, "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite", **env}).config


@pytest.mark.sandbox
def test_defaults_run_the_sandbox_on_sqlite(tmp_path):
    config = load_config({}, str(tmp_path))
    assert config["TERRA_MODE"] == "sandbox"
    assert config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert started_config(tmp_path)["TERRA_WIDGET_SESSION_URL"] == "http://127.0.0.1:5000/sandbox/api/widget/session"
    assert config["SESSION_COOKIE_HTTPONLY"] and config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert config["SESSION_COOKIE_SECURE"] is False


def test_development_secret_key_is_generated_once(tmp_path):
    first = load_config({}, str(tmp_path))["SECRET_KEY"]
    assert len(first) >= 48
    assert load_config({}, str(tmp_path))["SECRET_KEY"] == first


@pytest.mark.parametrize(
    "missing, message",
    [
        ("SECRET_KEY", "SECRET_KEY is required"),
        ("PUBLIC_BASE_URL", "PUBLIC_BASE_URL is required"),
        # Without live credentials production refuses, rather than serving the open sandbox.
        (tuple(LIVE), "needs live Terra credentials: set TERRA_DEV_ID, TERRA_API_KEY, TERRA_SIGNING_SECRET"),
    ],
)
def test_production_refuses_to_start_without(tmp_path, missing, message):
    missing = missing if isinstance(missing, tuple) else (missing,)
    env = {name: value for name, value in PRODUCTION.items() if name not in missing}
    with pytest.raises(ConfigError, match=message):
        load_config(env, str(tmp_path))


def test_production_refuses_a_short_secret_key_without_showing_it(tmp_path):
    short_key = "s3cr3t-but-only-31-characters.."
    with pytest.raises(ConfigError, match="SECRET_KEY must be at least 32 characters") as refused:
        load_config({**PRODUCTION, "SECRET_KEY": short_key}, str(tmp_path))
    assert short_key not in str(refused.value)
    assert load_config({**PRODUCTION, "SECRET_KEY": short_key + "."}, str(tmp_path))["SECRET_KEY"] == short_key + "."


# What production refuses as a signing key, SECRET_KEY and every fallback alike (each still verifies).
WEAK_KEYS = [
    pytest.param("changeme", "is a published sample value", id="placeholder"),
    pytest.param("test-secret-key-0123456789abcdef", "is a published sample value", id="this project's test key"),
    pytest.param("s3cr3t-but-only-31-characters..", "must be at least 32 characters", id="short"),
    pytest.param("k" * 64, "is too easy to guess", id="one character repeated"),
    pytest.param("password" * 6, "is too easy to guess", id="a word repeated"),
    pytest.param("a" * 40 + "bcdefghijk", "is too easy to guess", id="a long run"),
    pytest.param(("my-app-secret" * 4)[:50], "is too easy to guess", id="a phrase repeated, cut short"),
]


@pytest.mark.parametrize("key, message", WEAK_KEYS)
def test_production_refuses_a_weak_or_published_secret_key_without_showing_it(tmp_path, key, message):
    with pytest.raises(ConfigError, match=f"SECRET_KEY {message}") as refused:
        load_config({**PRODUCTION, "SECRET_KEY": key}, str(tmp_path))
    assert key not in str(refused.value) and "secrets.token_urlsafe(48)" in str(refused.value)


@pytest.mark.parametrize("key, message", WEAK_KEYS)
def test_production_refuses_a_weak_or_published_fallback_key_without_showing_it(tmp_path, key, message):
    # A session cookie signed with a fallback opens the app as well as one signed with SECRET_KEY.
    fallbacks = f"{STRONG_KEY[::-1]},{key}"
    with pytest.raises(ConfigError, match=rf"SECRET_KEY_FALLBACKS \(entry 2 of 2\) {message}") as refused:
        load_config({**PRODUCTION, "SECRET_KEY_FALLBACKS": fallbacks}, str(tmp_path))
    assert key not in str(refused.value) and STRONG_KEY[::-1] not in str(refused.value)


def test_random_keys_of_every_documented_shape_are_accepted(tmp_path):
    # Hex of 16 bytes is the shortest accepted shape: 32 characters from 16.
    keys = [secrets.token_hex(16), secrets.token_urlsafe(24), secrets.token_urlsafe(48)]
    for key in keys:
        fallbacks = ",".join(keys)
        config = load_config({**PRODUCTION, "SECRET_KEY": key, "SECRET_KEY_FALLBACKS": fallbacks}, str(tmp_path))
        assert config["SECRET_KEY"] == key and config["SECRET_KEY_FALLBACKS"] == keys


@pytest.mark.parametrize(
    "changes, message",
    [
        pytest.param({"TERRA_API_BASE_URL": "http://api.tryterra.co/v2"}, "TERRA_API_BASE_URL must be https://"),
        pytest.param(
            {"TERRA_WIDGET_SESSION_URL": "http://access.tryterra.co/api/widget/session"},
            "TERRA_WIDGET_SESSION_URL must be https://",
        ),
        pytest.param(
            {"TERRA_LEGACY_WIDGET_URL": "http://api.tryterra.co/v2/auth/generateWidgetSession"},
            "TERRA_LEGACY_WIDGET_URL must be https://",
        ),
        pytest.param({"FLASK_DEBUG": "1"}, "FLASK_DEBUG must be off"),
        pytest.param({"FLASK_DEBUG": "off"}, "FLASK_DEBUG must be off"),  # Flask reads any value but 0, false, no as on
    ],
)
def test_production_refuses_cleartext_terra_and_debug_mode(tmp_path, changes, message):
    env = {**PRODUCTION, **changes}
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(env, str(tmp_path))
    assert LIVE["TERRA_API_KEY"] not in str(refused.value)
    # Outside production the same values are a developer's to choose.
    assert load_config({**env, "APP_ENV": "development"}, str(tmp_path))["TERRA_MODE"] == "live"


@pytest.mark.parametrize("value", ["0", "false", "No"])
def test_production_accepts_flask_debug_turned_off(tmp_path, value):
    assert load_config({**PRODUCTION, "FLASK_DEBUG": value}, str(tmp_path))["APP_ENV"] == "production"


@pytest.mark.sandbox
def test_production_refuses_the_sandboxs_published_signing_secret(tmp_path):
    from sandbox.settings import DEFAULT_SANDBOX_SIGNING_SECRET

    env = {**PRODUCTION, "TERRA_SIGNING_SECRET": DEFAULT_SANDBOX_SIGNING_SECRET.upper()}
    with pytest.raises(ConfigError, match="TERRA_SIGNING_SECRET is a published sample value") as refused:
        load_config(env, str(tmp_path))
    assert DEFAULT_SANDBOX_SIGNING_SECRET not in str(refused.value).lower()
    assert load_config({**env, "APP_ENV": "development"}, str(tmp_path))["TERRA_MODE"] == "live"


@pytest.mark.parametrize(
    "url",
    [
        "http://connect.example.com",
        "https://connect.example.com/app",
        "connect.example.com",
        "https://user@connect.example.com",
    ],
)
def test_production_public_base_url_is_an_https_origin(tmp_path, url):
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL must be"):
        load_config({**PRODUCTION, "PUBLIC_BASE_URL": url}, str(tmp_path))


def test_production_uses_secure_cookies_and_trusts_only_its_public_host(tmp_path):
    config = load_config(PRODUCTION, str(tmp_path))
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["TRUSTED_HOSTS"] == ["connect.example.com"]
    extra = load_config({**PRODUCTION, "EXTRA_TRUSTED_HOSTS": "10.0.3.7, .internal"}, str(tmp_path))
    assert extra["TRUSTED_HOSTS"] == ["connect.example.com", "10.0.3.7", ".internal"]
    assert load_config({}, str(tmp_path))["TRUSTED_HOSTS"] is None  # development answers to any host


@pytest.mark.sandbox
@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "http://127.0.0.1:5000"),
        ({"PORT": "5731"}, "http://127.0.0.1:5731"),
        ({"BIND": "127.0.0.2:8000", "PORT": "5731"}, "http://127.0.0.2:8000"),
        ({"BIND": "0.0.0.0:8000"}, "http://127.0.0.1:8000"),
        ({"PORT": "5731", "PUBLIC_BASE_URL": "https://tunnel.example.com/"}, "https://tunnel.example.com"),
    ],
)
def test_development_public_base_url_follows_the_bind_address(tmp_path, env, expected):
    config = started_config(tmp_path, **env)
    assert config["PUBLIC_BASE_URL"] == expected
    assert config["TERRA_WIDGET_SESSION_URL"] == expected + "/sandbox/api/widget/session"
    assert config["SANDBOX_WEBHOOK_URL"] == expected + "/webhooks/terra"


def test_a_unix_socket_bind_needs_public_base_url(tmp_path):
    with pytest.raises(ConfigError, match="Set PUBLIC_BASE_URL"):
        load_config({"BIND": "unix:/run/terra.sock"}, str(tmp_path))


@pytest.mark.parametrize("missing", sorted(LIVE))
def test_partial_live_credentials_fail_fast_naming_the_missing_one(tmp_path, missing):
    env = {name: value for name, value in LIVE.items() if name != missing}
    with pytest.raises(ConfigError, match=missing) as refused:
        load_config(env, str(tmp_path))
    assert "Unset all three to use the embedded sandbox" in str(refused.value)
    # Production refuses the sandbox, so its message does not offer it.
    production = {name: value for name, value in PRODUCTION.items() if name != missing}
    with pytest.raises(ConfigError, match=missing) as refused:
        load_config(production, str(tmp_path))
    assert "sandbox" not in str(refused.value)


def test_all_three_credentials_select_live_terra(tmp_path):
    config = load_config(LIVE, str(tmp_path))
    assert config["TERRA_MODE"] == "live"
    assert config["TERRA_WIDGET_SESSION_URL"] == "https://access.tryterra.co/api/widget/session"
    assert config["TERRA_SIGNING_SECRET"] == "whsec"


def test_live_mode_does_not_mount_the_sandbox(tmp_path):
    app = create_app(
        environ={**LIVE, "APP_ENV": "testing", "SECRET_KEY": "k", "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite"}
    )
    assert not any(rule.rule.startswith("/sandbox") for rule in app.url_map.iter_rules())


@pytest.mark.sandbox
def test_blank_values_count_as_unset(tmp_path):
    config = load_config({"TERRA_DEV_ID": "", "TERRA_WIDGET_SESSION_URL": "", "DATABASE_URL": ""}, str(tmp_path))
    assert config["TERRA_MODE"] == "sandbox"
    assert config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert started_config(tmp_path, TERRA_WIDGET_SESSION_URL="", SANDBOX_FAULTS="")[
        "TERRA_WIDGET_SESSION_URL"
    ].endswith("/sandbox/api/widget/session")


@pytest.mark.sandbox
def test_terra_endpoints_from_the_environment_win_over_the_sandboxs(tmp_path):
    config = started_config(tmp_path, TERRA_API_BASE_URL="http://127.0.0.1:9/v2/")
    assert config["TERRA_API_BASE_URL"] == "http://127.0.0.1:9/v2"
    assert config["TERRA_WIDGET_SESSION_URL"] == "http://127.0.0.1:5000/sandbox/api/widget/session"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_postgres_urls_use_psycopg3(tmp_path, url, expected):
    assert load_config({"DATABASE_URL": url}, str(tmp_path))["SQLALCHEMY_DATABASE_URI"] == expected


# Every setting, with a value it refuses and the other settings that value needs to be read at all.
BAD_VALUES = {
    "APP_ENV": ("staging", {}),
    "SECRET_KEY": ("s3cr3t-but-only-31-characters..", PRODUCTION),
    "DATABASE_URL": ("postgresql://admin:hunter2@db:port/x", {}),
    "DATABASE_POOL_SIZE": ("ten", {}),
    "DATABASE_MAX_OVERFLOW": ("ten", {}),
    "DATABASE_POOL_PRE_PING": ("sometimes", {}),
    "DATABASE_POOL_RECYCLE_SECONDS": ("5m", {}),
    "PUBLIC_BASE_URL": ("connect.example.com", {}),
    "PORT": ("http", {}),
    "BIND": ("unix:/run/terra.sock", {}),
    "WEB_CONCURRENCY": ("0", {}),
    "GUNICORN_THREADS": ("many", {}),
    "EXTRA_TRUSTED_HOSTS": ("https://lb.example.com", PRODUCTION),
    "OPERATOR_EMAILS": ("ops-team", {}),
    "FLASK_DEBUG": ("1", PRODUCTION),
    "SECRET_KEY_FALLBACKS": ("old-key-5ecret", PRODUCTION),
    "MAX_CONTENT_LENGTH": ("1MB", {}),
    "ATTEMPT_TOKEN_MAX_AGE": ("2 days", {}),
    "USERINFO_CHECK_AFTER_SECONDS": ("-1", {}),
    "RATELIMIT_STORAGE_URI": ("mysql://limits:hunter2@db/x", {}),
    "LOGIN_RATE_LIMIT": ("plenty", {}),
    "LOGIN_ACCOUNT_RATE_LIMIT": ("10 per try", {}),
    "REGISTER_RATE_LIMIT": ("10 per fortnight", {}),
    "CONNECT_RATE_LIMIT": ("ten a minute", {}),
    "DATA_REQUEST_RATE_LIMIT": ("5 per aeon", {}),
    "STATUS_RATE_LIMIT": ("120/parsec", {}),
    "TRUSTED_PROXY_COUNT": ("-1", {}),
    "TRUSTED_PROXY_HEADERS": ("for,proto,forwarded", {}),
    "API_TOKEN_LIFETIME_SECONDS": ("0", {}),
    "API_TOKEN_CACHE_SECONDS": ("five", {}),
    "STATUS_MAX_WAITERS": ("-3", {}),
    "STATUS_MAX_WAITERS_PER_TOKEN": ("0", {}),
    "STATUS_MAX_WAITERS_PER_USER": ("four", {}),
    "BROWSER_CLOSED_GRACE_SECONDS": ("10s", {}),
    "RECONCILE_INTERVAL_SECONDS": ("hourly", {}),
    "STATUS_POLL_AFTER_MS": ("2s", {}),
    # One credential alone is half a live configuration.
    "TERRA_DEV_ID": ("dev", {}),
    "TERRA_API_KEY": ("key-5ecret", {}),
    "TERRA_SIGNING_SECRET": ("whsec-5ecret", {}),
    "TERRA_WIDGET_API": ("v3", {}),
    "TERRA_WIDGET_SESSION_URL": ("access.tryterra.co/api/widget/session", {}),
    "TERRA_LEGACY_WIDGET_URL": ("ftp://api.tryterra.co/v2", {}),
    "TERRA_API_BASE_URL": ("https://", {}),
    "TERRA_TIMEOUT_SECONDS": ("ten", {}),
    "TERRA_PAYLOAD_TIMEOUT_SECONDS": ("0", {}),
    "TERRA_PAYLOAD_MAX_BYTES": ("10MB", {}),
    "TERRA_PAYLOAD_ALLOW_LOOPBACK": ("true", PRODUCTION),  # production fetches only public https addresses
    "WEBHOOK_MAX_BYTES": ("lots", {}),
    "WEBHOOK_TOLERANCE_SECONDS": ("5m", {}),
    "WEBHOOK_APPLY_IN_PROCESS": ("sometimes", {}),
    "WEBHOOK_CLAIM_LEASE_SECONDS": ("0", {}),
    "WEBHOOK_SWEEP_SECONDS": ("5s", {}),
    "MOBILE_APP_SCHEME": ("https", {}),
    "MOBILE_UNIVERSAL_LINK_BASE": ("http://links.example.com", {}),
    "MOBILE_REDIRECT_MODE": ("webview", {}),
    "MOBILE_UNIVERSAL_LINK_SAME_HOST": ("sometimes", {}),
    "MOBILE_CALLBACK": ("https", {}),  # no MOBILE_UNIVERSAL_LINK_BASE to build it from
    "IOS_APP_IDS": ("com.example.app", {}),
    "ANDROID_PACKAGE_NAME": ("not a package", {}),
    "ANDROID_CERT_SHA256": ("AB:CD", {}),
    "SANDBOX_WEBHOOK_URL": ("localhost/webhooks/terra", {}),
    "SANDBOX_SESSION_TTL_SECONDS": ("15m", {}),
    "SANDBOX_AUTH_TOKEN_TTL_SECONDS": ("3m", {}),
    "SANDBOX_USER_CAP": ("fifty", {}),
    "SANDBOX_USER_CAP_MODE": ("always", {}),
    "SANDBOX_LEGACY_GONE": ("since 2026", {}),
    "SANDBOX_AUTH_FAILURE_SHAPE": ("auth_failed", {}),
    "SANDBOX_REAUTH_ORDER": ("random", {}),
    "SANDBOX_USERINFO_SHAPE": ("list", {}),
    "SANDBOX_WEBHOOK_RETRIES": ("ten", {}),
    "SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": ("30s", {}),
    "SANDBOX_WEBHOOK_RETRY_CAP_SECONDS": ("8h", {}),
    "SANDBOX_WEBHOOK_TIMEOUT_SECONDS": ("0", {}),
    "SANDBOX_FAULTS": ("5xx,sometimes", {}),
    "SANDBOX_SLOW_SECONDS": ("slow", {}),
    "SANDBOX_RETRY_AFTER_SECONDS": ("1.5", {}),
    "SANDBOX_LATE_SECONDS": ("later", {}),
    "SANDBOX_REORDER_WINDOW_SECONDS": ("2s", {}),
    "SANDBOX_WIDGET_SESSION_STATUS": ("202", {}),
    "SANDBOX_FAILURE_REDIRECT": ("everything", {}),
    "SANDBOX_DEAUTH_WEBHOOK": ("sometimes", {}),
    "SANDBOX_SIGNATURE_HEADERS": ("signature", {}),
    "SANDBOX_DATA_MAX_SPAN_DAYS": ("-1", {}),
    "SANDBOX_DATA_HOURLY_DAYS": ("6k", {}),
    "SANDBOX_HISTORY_DAYS": ("ninety", {}),
}
# Any text is a valid secret: these have no bad value.
FREE_FORM = {"SANDBOX_SIGNING_SECRET"}
# Settings that may carry a password or a key, and the secret in their bad value: it never appears in a message.
SECRETS = {
    "SECRET_KEY": BAD_VALUES["SECRET_KEY"][0],
    "SECRET_KEY_FALLBACKS": "5ecret",
    "DATABASE_URL": "hunter2",
    "RATELIMIT_STORAGE_URI": "hunter2",
    "TERRA_API_KEY": "5ecret",
    "TERRA_SIGNING_SECRET": "5ecret",
}


@pytest.mark.sandbox
def test_every_setting_has_a_bad_value_below():
    from sandbox.settings import SandboxSettings

    settings = {
        name for model in (AppSettings, TerraSettings, MobileSettings, SandboxSettings) for name in model.model_fields
    }
    assert set(BAD_VALUES) | FREE_FORM == settings


@pytest.mark.sandbox
def test_env_example_lists_every_setting_with_values_the_app_accepts(tmp_path):
    example = dotenv.dotenv_values(ROOT / ".env.example")
    assert set(example) == set(BAD_VALUES) | FREE_FORM
    started_config(tmp_path, **{name: value for name, value in example.items() if value is not None})


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.sandbox) if name.startswith("SANDBOX_") else name
        for name in sorted(BAD_VALUES)
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, name):
    value, needs = BAD_VALUES[name]
    with pytest.raises(ConfigError, match=name) as refused:
        started_config(tmp_path, **{**needs, name: value})
    if name in SECRETS:
        assert SECRETS[name] not in str(refused.value)
    assert "Traceback" not in str(refused.value) and "pydantic" not in str(refused.value)


@pytest.mark.sandbox
def test_a_payload_download_must_end_before_its_claim_runs_out(tmp_path):
    with pytest.raises(ConfigError, match="TERRA_PAYLOAD_TIMEOUT_SECONDS must be shorter than WEBHOOK_CLAIM_LEASE"):
        started_config(tmp_path, TERRA_PAYLOAD_TIMEOUT_SECONDS="60", WEBHOOK_CLAIM_LEASE_SECONDS="60")
    assert started_config(tmp_path, TERRA_PAYLOAD_TIMEOUT_SECONDS="59")["TERRA_PAYLOAD_TIMEOUT_SECONDS"] == 59


@pytest.mark.sandbox
@pytest.mark.parametrize(
    "environ, allowed", [({}, True), ({"TERRA_PAYLOAD_ALLOW_LOOPBACK": "false"}, False), (PRODUCTION, False)]
)
def test_payloads_come_from_loopback_only_outside_production(tmp_path, environ, allowed):
    assert started_config(tmp_path, **environ)["TERRA_PAYLOAD_ALLOW_LOOPBACK"] is allowed


@pytest.mark.parametrize(
    "base, message",
    [
        ("https://links.example.com/terra/*", "without '*': apple-app-site-association reads it as a wildcard"),
        ("https://*.example.com/terra", "without '*'"),
        ("https://links.example.com:8443/terra", "must have no port: iOS and Android fetch and open universal links"),
        ("https://links.example.com:443/terra", "must have no port"),
    ],
)
def test_a_universal_link_base_with_a_wildcard_or_a_port_is_refused(tmp_path, base, message):
    with pytest.raises(ConfigError, match="MOBILE_UNIVERSAL_LINK_BASE") as refused:
        started_config(tmp_path, MOBILE_UNIVERSAL_LINK_BASE=base)
    assert message in str(refused.value)


@pytest.mark.sandbox  # started without Terra credentials
def test_a_scheme_that_is_not_reverse_dns_starts_with_a_warning(tmp_path, caplog):
    # Terra's own guide's example (reallycoolapp://success): the deep link carries no credential.
    config = started_config(tmp_path, MOBILE_APP_SCHEME="reallycoolapp")
    assert config["MOBILE_APP_SCHEME"] == "reallycoolapp"
    [warning] = [record for record in caplog.records if "MOBILE_APP_SCHEME" in record.getMessage()]
    assert warning.levelname == "WARNING"
    assert "not reverse-DNS" in warning.getMessage() and "com.example.reallycoolapp" in warning.getMessage()
    assert "RFC 8252" in warning.getMessage()
    caplog.clear()
    assert started_config(tmp_path, MOBILE_APP_SCHEME="com.example.app")["MOBILE_APP_SCHEME"] == "com.example.app"
    assert not [record for record in caplog.records if "MOBILE_APP_SCHEME" in record.getMessage()]


# == the entry points: the same settings for `flask`, gunicorn and `flask run` ==========================

# What the developer's shell might carry that these tests set through .env or leave to derivation.
SETTINGS_UNDER_TEST = (
    "FLASK_SKIP_DOTENV",
    "APP_ENV",
    "SECRET_KEY",
    "DATABASE_URL",
    "PUBLIC_BASE_URL",
    "PORT",
    "BIND",
    "WEB_CONCURRENCY",
    *LIVE,
)


def connect_and_wait(url: str) -> None:
    """Register and connect through the sandbox that the server at `url` serves itself."""
    from tests.helpers import finish_widget
    from tests.test_connect_flow import start_connect, wait_for_terminal  # they need the sandbox

    browser = Browser(url)
    assert "Your connections" in browser.register().text
    widget_url = start_connect(browser)
    assert widget_url.startswith(url + "/sandbox/widget/")  # its own sandbox, not one on another port
    assert wait_for_terminal(browser, finish_widget(widget_url))["status"] == "connected"


@pytest.mark.sandbox
def test_dotenv_reaches_migrations_and_gunicorn_alike(tmp_path):
    """A `.env` in the working directory, as README's quick start has one: `flask db upgrade` migrates
    the database it names, gunicorn serves that same database on the PORT it names, and the sandbox
    redirects and webhooks follow that port."""
    port = free_port()
    (tmp_path / ".env").write_text(
        "APP_ENV=development\n"
        f"SECRET_KEY={TEST_SECRET_KEY}\n"
        f"DATABASE_URL=sqlite:///{tmp_path / 'from-dotenv.sqlite'}\n"
        f"PORT={port}\n"
        "WEB_CONCURRENCY=1\n"
    )
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS_UNDER_TEST}
    env["PYTHONPATH"] = str(ROOT)  # run from the folder holding .env, as from a project checkout
    migrated = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", "db", "upgrade", "heads"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stderr
    url = f"http://127.0.0.1:{port}"
    gunicorn = [str(VENV_BIN / "gunicorn"), "--config", str(ROOT / "gunicorn.conf.py"), "app:create_app()"]
    with server_process(gunicorn, health_url=url + "/healthz", env=env, cwd=tmp_path, log_path=tmp_path / "g.log"):
        connect_and_wait(url)


@pytest.mark.sandbox  # the app the factory builds runs without Terra credentials
@pytest.mark.parametrize("skip_dotenv, reads_dotenv", [("", True), ("1", False)])
def test_the_app_factory_reads_dotenv_for_any_wsgi_server(tmp_path, skip_dotenv, reads_dotenv):
    """Without the `flask` command or gunicorn.conf.py around it (another WSGI server imports the
    factory), create_app still reads .env; FLASK_SKIP_DOTENV=1, as the tests set it, turns that off."""
    (tmp_path / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'from-dotenv.sqlite'}\n")
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS_UNDER_TEST}
    env.update(PYTHONPATH=str(ROOT), FLASK_SKIP_DOTENV=skip_dotenv, SECRET_KEY=TEST_SECRET_KEY)
    printed = subprocess.run(
        [sys.executable, "-c", "from app import create_app; print(create_app().config['SQLALCHEMY_DATABASE_URI'])"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert ("from-dotenv.sqlite" in printed.stdout) is reads_dotenv


@pytest.mark.sandbox
def test_flask_run_derives_public_base_url_from_its_port(database_uri, tmp_path, app):  # `app` empties the tables
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS_UNDER_TEST}
    env.update(_environ(database_uri), FLASK_SKIP_DOTENV="1")
    url = f"http://127.0.0.1:{port}"
    flask_run = [str(VENV_BIN / "flask"), "--app", "app", "run", "--port", str(port)]
    with server_process(flask_run, health_url=url + "/healthz", env=env, log_path=tmp_path / "flask-run.log"):
        connect_and_wait(url)
