"""Every setting of the app, read from the environment and checked once at start-up.

`load_config()` returns a plain dict for `app.config`. It fails fast, with a message naming the
variable, when something is missing or inconsistent, so a misconfigured deployment never starts
half-working. The process environment is completed by a `.env` file (`load_env_file`), the same one
the `flask` command reads, so every entry point sees the same settings.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import click
import dotenv
import limits

ENVIRONMENTS = ("development", "testing", "production")
TERRA_CREDENTIALS = ("TERRA_DEV_ID", "TERRA_API_KEY", "TERRA_SIGNING_SECRET")

# Terra's published endpoints (see shared reference: widget session and REST v2).
LIVE_WIDGET_SESSION_URL = "https://access.tryterra.co/api/widget/session"
LIVE_LEGACY_WIDGET_URL = "https://api.tryterra.co/v2/auth/generateWidgetSession"
LIVE_API_BASE_URL = "https://api.tryterra.co/v2"

# The sandbox accepts exactly these credentials, so the client code path is the live one.
SANDBOX_DEV_ID = "sandbox-dev-id"
SANDBOX_API_KEY = "sandbox-api-key"
DEFAULT_SANDBOX_SIGNING_SECRET = "sandbox-signing-secret-not-for-production"

MIN_PRODUCTION_SECRET_KEY_LENGTH = 32
DEFAULT_PORT = "5000"


class ConfigError(RuntimeError):
    """The environment does not describe a runnable app."""


def load_env_file() -> None:
    """Fill the process environment from the `.env` that the `flask` command reads (the nearest one
    from the working directory up), never overriding a variable that is already set. gunicorn
    (gunicorn.conf.py) and the app factory call it, so the server, the CLI and migrations agree.
    FLASK_SKIP_DOTENV=1 turns it off, for the CLI too: the test suite sets it."""
    if os.environ.get("FLASK_SKIP_DOTENV", "").lower() not in ("", "0", "false", "no"):
        return
    path = dotenv.find_dotenv(usecwd=True)
    if path:
        dotenv.load_dotenv(path, override=False, encoding="utf-8")


def process_environment() -> dict[str, str]:
    """The settings of this process: its environment and `.env`, and under `flask run` the address
    it listens on (its --host/--port are not in the environment), from which PUBLIC_BASE_URL derives."""
    load_env_file()
    env = dict(os.environ)
    command = click.get_current_context(silent=True)
    if command is not None and command.info_name == "run" and "port" in command.params:
        env["BIND"] = f"{command.params['host']}:{command.params['port']}"
    return env


def bind_address(env: Mapping[str, str]) -> str:
    """Where gunicorn listens (gunicorn.conf.py): BIND, else loopback on PORT."""
    return env.get("BIND") or "127.0.0.1:" + (env.get("PORT") or DEFAULT_PORT)


def load_config(environ: Mapping[str, str] | None = None, instance_path: str | None = None) -> dict:
    # An empty value means "not set", so a copied .env.example with blanks behaves like no .env.
    environ = process_environment() if environ is None else environ
    env = {name: value for name, value in environ.items() if value != ""}
    app_env = env.get("APP_ENV", "development")
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, not {app_env!r}")

    public_base_url = _public_base_url(env, app_env)
    terra_mode = _terra_mode(env, app_env)
    config: dict = {
        "APP_ENV": app_env,
        "TESTING": app_env == "testing",
        "SECRET_KEY": _secret_key(env, app_env, instance_path),
        "SECRET_KEY_FALLBACKS": _csv(env.get("SECRET_KEY_FALLBACKS", "")),
        "SQLALCHEMY_DATABASE_URI": database_url(env, instance_path),
        # As many pooled connections as a gunicorn worker has threads (gunicorn.conf.py: 32), so no
        # request waits for a connection and none are opened and closed on every burst. No pre-ping:
        # it is a round trip on every checkout (docs/performance.md); a connection the server dropped
        # fails one request and SQLAlchemy then replaces the whole pool, and recycling keeps idle
        # connections younger than typical server and proxy idle timeouts.
        "SQLALCHEMY_ENGINE_OPTIONS": {
            "pool_pre_ping": _flag(env, "DATABASE_POOL_PRE_PING"),
            "pool_recycle": _int(env, "DATABASE_POOL_RECYCLE_SECONDS", 300),
            "pool_size": _int(env, "DATABASE_POOL_SIZE", 10),
            "max_overflow": _int(env, "DATABASE_MAX_OVERFLOW", 22),
        },
        "PUBLIC_BASE_URL": public_base_url,
        "TRUSTED_HOSTS": _trusted_hosts(env, app_env, public_base_url),
        # Session cookie: unreadable from scripts, sent on top-level navigations back from Terra.
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": app_env == "production",
        "WTF_CSRF_TIME_LIMIT": None,
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 1024 * 1024),
        "WEBHOOK_MAX_BYTES": _int(env, "WEBHOOK_MAX_BYTES", 512 * 1024),
        "WEBHOOK_TOLERANCE_SECONDS": _int(env, "WEBHOOK_TOLERANCE_SECONDS", 300),
        "ATTEMPT_TOKEN_MAX_AGE": _int(env, "ATTEMPT_TOKEN_MAX_AGE", 2 * 24 * 3600),
        "USERINFO_CHECK_AFTER_SECONDS": _int(env, "USERINFO_CHECK_AFTER_SECONDS", 3),
        "TERRA_MODE": terra_mode,
        "TERRA_WIDGET_API": _choice(env, "TERRA_WIDGET_API", ("session", "legacy"), "session"),
        "TERRA_TIMEOUT_SECONDS": float(env.get("TERRA_TIMEOUT_SECONDS", "10")),
        # s3_payload downloads: within Terra's 8 s delivery window; Terra caps each payload at 10 MB.
        "TERRA_PAYLOAD_TIMEOUT_SECONDS": float(env.get("TERRA_PAYLOAD_TIMEOUT_SECONDS", "5")),
        "TERRA_PAYLOAD_MAX_BYTES": _int(env, "TERRA_PAYLOAD_MAX_BYTES", 10 * 1024 * 1024),
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI", "memory://"),
        "RATELIMIT_HEADERS_ENABLED": True,
        "LOGIN_RATE_LIMIT": _rate_limit(env, "LOGIN_RATE_LIMIT", "10 per minute"),
        "REGISTER_RATE_LIMIT": _rate_limit(env, "REGISTER_RATE_LIMIT", "10 per hour"),
        # Per user, web and API together: each attempt spends a widget session of the Terra quota.
        "CONNECT_RATE_LIMIT": _rate_limit(env, "CONNECT_RATE_LIMIT", "10 per minute"),
        # Counted per worker process (services/request_windows.py), per caller and attempt.
        "STATUS_RATE_LIMIT": _rate_limit(env, "STATUS_RATE_LIMIT", "120 per minute"),
        # Behind N reverse proxies, trust N hops of X-Forwarded-* (client address, scheme, host).
        "TRUSTED_PROXY_COUNT": _int(env, "TRUSTED_PROXY_COUNT", 0),
        # Mobile companion (mobile_redirects/ and the JSON API). Deep links come only from here.
        "MOBILE_APP_SCHEME": _app_scheme(env, app_env),
        "MOBILE_UNIVERSAL_LINK_BASE": _universal_link_base(env),
        "MOBILE_REDIRECT_MODE": _choice(env, "MOBILE_REDIRECT_MODE", ("page", "app"), "page"),
        "IOS_APP_IDS": _ios_app_ids(env),
        "ANDROID_PACKAGE_NAME": _android_package(env),
        "ANDROID_CERT_SHA256": _cert_fingerprints(env),
        "API_TOKEN_LIFETIME_SECONDS": _int(env, "API_TOKEN_LIFETIME_SECONDS", 30 * 24 * 3600),
        # A checked token is trusted by the worker that checked it for this long without asking the
        # database again; revoking evicts it there at once, other workers within this bound. 0: off.
        "API_TOKEN_CACHE_SECONDS": _int(env, "API_TOKEN_CACHE_SECONDS", 5),
        # Long-polls held at once per worker; beyond it `?wait=` answers at once, so the threads
        # webhooks need are never all asleep. Half of the worker's threads (gunicorn.conf.py).
        "STATUS_MAX_WAITERS": _int(env, "STATUS_MAX_WAITERS", max(1, _int(env, "GUNICORN_THREADS", 32) // 2)),
        "BROWSER_CLOSED_GRACE_SECONDS": _int(env, "BROWSER_CLOSED_GRACE_SECONDS", 10),
        # Opening the connections (web or mobile) reconciles them with Terra at most this often per user.
        "RECONCILE_INTERVAL_SECONDS": _int(env, "RECONCILE_INTERVAL_SECONDS", 60),
        "STATUS_POLL_AFTER_MS": _int(env, "STATUS_POLL_AFTER_MS", 2000),
    }
    if terra_mode == "live":
        config.update(
            TERRA_DEV_ID=env["TERRA_DEV_ID"],
            TERRA_API_KEY=env["TERRA_API_KEY"],
            TERRA_SIGNING_SECRET=env["TERRA_SIGNING_SECRET"],
            TERRA_WIDGET_SESSION_URL=env.get("TERRA_WIDGET_SESSION_URL", LIVE_WIDGET_SESSION_URL),
            TERRA_LEGACY_WIDGET_URL=env.get("TERRA_LEGACY_WIDGET_URL", LIVE_LEGACY_WIDGET_URL),
            TERRA_API_BASE_URL=env.get("TERRA_API_BASE_URL", LIVE_API_BASE_URL).rstrip("/"),
        )
    else:
        sandbox_base = public_base_url + "/sandbox"
        config.update(
            TERRA_DEV_ID=SANDBOX_DEV_ID,
            TERRA_API_KEY=SANDBOX_API_KEY,
            TERRA_SIGNING_SECRET=env.get("SANDBOX_SIGNING_SECRET", DEFAULT_SANDBOX_SIGNING_SECRET),
            TERRA_WIDGET_SESSION_URL=env.get("TERRA_WIDGET_SESSION_URL", sandbox_base + "/api/widget/session"),
            TERRA_LEGACY_WIDGET_URL=env.get(
                "TERRA_LEGACY_WIDGET_URL", sandbox_base + "/v2/auth/generateWidgetSession"
            ),
            TERRA_API_BASE_URL=env.get("TERRA_API_BASE_URL", sandbox_base + "/v2").rstrip("/"),
            **_sandbox_settings(env, public_base_url),
        )
    return config


def _sandbox_settings(env: Mapping[str, str], public_base_url: str) -> dict:
    """Knobs of the embedded Terra emulator; each mirrors a documented behaviour of Terra."""
    from sandbox.faults import faults_setting  # the list of fault names lives with the faults

    return {
        "SANDBOX_WEBHOOK_URL": env.get("SANDBOX_WEBHOOK_URL", public_base_url + "/webhooks/terra"),
        "SANDBOX_SESSION_TTL_SECONDS": _int(env, "SANDBOX_SESSION_TTL_SECONDS", 900),
        "SANDBOX_USER_CAP": _int(env, "SANDBOX_USER_CAP", 50),
        # Where the 50-user cap bites: inside the widget (default) or at session creation (403).
        "SANDBOX_USER_CAP_MODE": _choice(env, "SANDBOX_USER_CAP_MODE", ("widget", "session"), "widget"),
        # Accounts created after 2026-09-03 get 410 from the legacy widget endpoint.
        "SANDBOX_LEGACY_GONE": _flag(env, "SANDBOX_LEGACY_GONE"),
        # 2026 contract sends `auth_cancelled`; older docs describe `auth` with status `error`.
        "SANDBOX_AUTH_FAILURE_SHAPE": _choice(
            env, "SANDBOX_AUTH_FAILURE_SHAPE", ("auth_cancelled", "auth_error"), "auth_cancelled"
        ),
        "SANDBOX_REAUTH_ORDER": _choice(
            env, "SANDBOX_REAUTH_ORDER", ("reauth_first", "auth_first"), "reauth_first"
        ),
        "SANDBOX_USERINFO_SHAPE": _choice(env, "SANDBOX_USERINFO_SHAPE", ("array", "object"), "array"),
        # Terra retries a failed delivery up to 10 times, 30 s doubling to 8 h; tests shrink the clock.
        "SANDBOX_WEBHOOK_RETRIES": _int(env, "SANDBOX_WEBHOOK_RETRIES", 10),
        "SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": float(env.get("SANDBOX_WEBHOOK_RETRY_BASE_SECONDS", "30")),
        "SANDBOX_WEBHOOK_RETRY_CAP_SECONDS": float(env.get("SANDBOX_WEBHOOK_RETRY_CAP_SECONDS", "28800")),
        "SANDBOX_WEBHOOK_TIMEOUT_SECONDS": float(env.get("SANDBOX_WEBHOOK_TIMEOUT_SECONDS", "8")),
        # Switchable faults (see sandbox/faults.py): slow, 5xx, 429, reset, malformed, duplicate, reorder, late.
        "SANDBOX_FAULTS": faults_setting(env.get("SANDBOX_FAULTS", "")),
        "SANDBOX_SLOW_SECONDS": float(env.get("SANDBOX_SLOW_SECONDS", "15")),
        "SANDBOX_RETRY_AFTER_SECONDS": _int(env, "SANDBOX_RETRY_AFTER_SECONDS", 1),
        # Unset: the widget session lifetime plus 30 s, so a late webhook lands after the attempt expired.
        "SANDBOX_LATE_SECONDS": float(env["SANDBOX_LATE_SECONDS"]) if env.get("SANDBOX_LATE_SECONDS") else None,
        "SANDBOX_REORDER_WINDOW_SECONDS": float(env.get("SANDBOX_REORDER_WINDOW_SECONDS", "2")),
    }


def database_url(env: Mapping[str, str], instance_path: str | None) -> str:
    url = env.get("DATABASE_URL")
    if not url:
        folder = Path(instance_path or "instance")
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder.resolve() / 'terra_connect.sqlite'}"
    # Hosting platforms hand out postgres:// URLs; SQLAlchemy needs the driver named (psycopg 3).
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _public_base_url(env: Mapping[str, str], app_env: str) -> str:
    """The public origin Terra sends browsers back to. Production names it (https only); elsewhere it
    defaults to the address this process listens on, so `PORT=5731 make run` redirects to itself."""
    url = env.get("PUBLIC_BASE_URL", "").rstrip("/")
    if not url:
        if app_env == "production":
            raise ConfigError("PUBLIC_BASE_URL is required when APP_ENV=production: the public https:// origin "
                              "of the app, such as https://connect.example.com")
        host, _, port = bind_address(env).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"Set PUBLIC_BASE_URL: it cannot be derived from BIND={env['BIND']!r}")
        # A wildcard bind is reachable on loopback, the address a developer's browser uses.
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise ConfigError(f"PUBLIC_BASE_URL must be an origin such as https://connect.example.com, not {url!r}")
    if app_env == "production" and parts.scheme != "https":
        raise ConfigError(f"PUBLIC_BASE_URL must be https:// when APP_ENV=production, not {url!r}")
    return url


def _trusted_hosts(env: Mapping[str, str], app_env: str, public_base_url: str) -> list[str] | None:
    """Production answers only to its public host (Flask's TRUSTED_HOSTS; other hosts get 400), plus
    EXTRA_TRUSTED_HOSTS, e.g. the address a load balancer's health check sends as Host."""
    if app_env != "production":
        return None
    return [urlsplit(public_base_url).hostname, *_csv(env.get("EXTRA_TRUSTED_HOSTS", ""))]


def _terra_mode(env: Mapping[str, str], app_env: str) -> str:
    present = [name for name in TERRA_CREDENTIALS if env.get(name)]
    if not present:
        # The sandbox has no login and signs with a published secret: never in production.
        if app_env == "production":
            raise ConfigError(f"APP_ENV=production needs live Terra credentials: set {', '.join(TERRA_CREDENTIALS)} "
                              "(production never serves the embedded sandbox)")
        return "sandbox"
    if len(present) == len(TERRA_CREDENTIALS):
        return "live"
    missing = [name for name in TERRA_CREDENTIALS if name not in present]
    raise ConfigError(
        f"Live Terra mode needs all of {', '.join(TERRA_CREDENTIALS)}; missing {', '.join(missing)}. "
        "Unset all three to use the embedded sandbox."
    )


def _secret_key(env: Mapping[str, str], app_env: str, instance_path: str | None) -> str:
    key = env.get("SECRET_KEY")
    if app_env == "production":
        if not key:
            raise ConfigError("SECRET_KEY is required when APP_ENV=production")
        if len(key) < MIN_PRODUCTION_SECRET_KEY_LENGTH:
            raise ConfigError(
                f"SECRET_KEY must be at least {MIN_PRODUCTION_SECRET_KEY_LENGTH} characters when APP_ENV=production; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
    if key:
        return key
    # Development and tests: one random key, kept in the instance folder so sessions survive restarts.
    key_file = Path(instance_path or "instance") / "secret_key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(48))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


# A demo scheme outside production, so the mobile walkthrough works without configuration.
DEVELOPMENT_APP_SCHEME = "com.example.terraconnect"
APP_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]{1,63}$")
FORBIDDEN_SCHEMES = {"http", "https", "javascript", "data", "file", "vbscript", "blob", "about", "intent"}
IOS_APP_ID = re.compile(r"^[A-Z0-9]{10}\.[A-Za-z0-9.-]+$")
ANDROID_PACKAGE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*(\.[a-zA-Z][a-zA-Z0-9_]*)+$")
CERT_FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


def _app_scheme(env: Mapping[str, str], app_env: str) -> str:
    default = "" if app_env == "production" else DEVELOPMENT_APP_SCHEME
    scheme = env.get("MOBILE_APP_SCHEME", default).lower()
    if scheme and (not APP_SCHEME.match(scheme) or scheme in FORBIDDEN_SCHEMES):
        raise ConfigError(
            f"MOBILE_APP_SCHEME must be an app's own URL scheme such as com.example.app, not {scheme!r}"
        )
    return scheme


def _universal_link_base(env: Mapping[str, str]) -> str:
    base = env.get("MOBILE_UNIVERSAL_LINK_BASE", "").rstrip("/")
    if not base:
        return ""
    parts = urlsplit(base)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password or parts.query \
            or parts.fragment or "\\" in base:
        raise ConfigError("MOBILE_UNIVERSAL_LINK_BASE must be a plain https:// URL such as https://links.example.com/terra")
    return base


def _ios_app_ids(env: Mapping[str, str]) -> list[str]:
    ids = _csv(env.get("IOS_APP_IDS", ""))
    for app_id in ids:
        if not IOS_APP_ID.match(app_id):
            raise ConfigError(f"IOS_APP_IDS entries look like TEAMID1234.com.example.app, not {app_id!r}")
    return ids


def _android_package(env: Mapping[str, str]) -> str:
    package = env.get("ANDROID_PACKAGE_NAME", "")
    if package and not ANDROID_PACKAGE.match(package):
        raise ConfigError(f"ANDROID_PACKAGE_NAME must be a package name such as com.example.app, not {package!r}")
    return package


def _cert_fingerprints(env: Mapping[str, str]) -> list[str]:
    fingerprints = [value.upper() for value in _csv(env.get("ANDROID_CERT_SHA256", ""))]
    for fingerprint in fingerprints:
        if not CERT_FINGERPRINT.match(fingerprint):
            raise ConfigError("ANDROID_CERT_SHA256 entries are colon-separated SHA-256 fingerprints (32 bytes)")
    return fingerprints


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {env[name]!r}") from None


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default)
    try:
        limits.parse(value)
    except ValueError:
        raise ConfigError(f"{name} must be a rate such as '10 per minute', not {value!r}") from None
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, default)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value
