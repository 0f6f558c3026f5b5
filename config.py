"""Every setting of the app, read from the environment and checked once at start-up.

Each part owns its settings: a pydantic model whose fields are named as the environment variables,
built on settings_base.py (the mechanism: `Settings`, `read_settings`, which turns every problem into
a ConfigError naming the variable, and the shared field types). This module holds the app's own
settings (`AppSettings`, `ServerSettings`) and the Terra integration's (`TerraSettings`), and composes
them with the mobile companion's (mobile_redirects/settings.py); the sandbox reads its own
(sandbox/settings.py) when it is registered, so nothing here knows about it.

`load_config()` returns a plain dict for `app.config`. It fails fast when something is missing or
inconsistent, so a misconfigured deployment never starts half-working. The process environment is
completed by a `.env` file (`load_env_file`), the same one the `flask` command reads, so every entry
point sees the same settings.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import click
import dotenv
from limits.storage import SCHEMES as RATE_LIMIT_STORAGE_SCHEMES
from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mobile_redirects.settings import MobileSettings
from settings_base import (
    CommaSeparated,
    ConfigError,  # noqa: F401  (load_config's error, for its callers)
    HttpUrl,
    Rate,
    Seconds,
    Settings,
    is_plain_url,
    read_settings,
)

TERRA_CREDENTIALS = ("TERRA_DEV_ID", "TERRA_API_KEY", "TERRA_SIGNING_SECRET")

# Terra's published endpoints (see shared reference: widget session and REST v2).
LIVE_WIDGET_SESSION_URL = "https://access.tryterra.co/api/widget/session"
LIVE_LEGACY_WIDGET_URL = "https://api.tryterra.co/v2/auth/generateWidgetSession"
LIVE_API_BASE_URL = "https://api.tryterra.co/v2"

ENDPOINTS = ("TERRA_WIDGET_SESSION_URL", "TERRA_LEGACY_WIDGET_URL", "TERRA_API_BASE_URL")

MIN_PRODUCTION_SECRET_KEY_LENGTH = 32
# The X-Forwarded-* headers ProxyFix can trust (TRUSTED_PROXY_HEADERS), by their last word.
FORWARDED_HEADERS = ("for", "proto", "host", "port", "prefix")
# A key of 32+ characters can still be guessable: one character repeated, a word over and over. Every
# random key (secrets.token_hex(16) upwards) clears these bars: of 100,000 hex keys of 32 characters,
# none had fewer than 9 distinct characters or an estimate (estimated_bits) under 90 bits.
MIN_PRODUCTION_SECRET_KEY_DISTINCT = 8
MIN_PRODUCTION_SECRET_KEY_BITS = 80
GENERATE_SECRET_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
# Values anyone can read, so never a production secret: the sandbox's webhook signing secret
# (sandbox/settings.py), the keys of this project's tests and tools, and samples from Flask's
# documentation and common placeholders. Compared without case.
PUBLISHED_SECRETS = frozenset(
    {
        "sandbox-signing-secret-not-for-production",
        "test-secret-key-0123456789abcdef",
        "bench-secret-key-0123456789abcdef-not-for-production",
        "walkthrough-screenshots-not-a-secret",
        "terra-stand-in-secret-key",
        "192b9bdd22ab9ed4d12e236c78afcb9a393ec15f71bbf5dc987d54727823bcbf",
        "dev",
        "secret",
        "changeme",
        "change-me",
        "your-secret-key",
    }
)
HOST_NAME = re.compile(r"^\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")


# == secrets that production refuses ===============================================================


def is_published_secret(value: str) -> bool:
    return value.strip().lower() in PUBLISHED_SECRETS


def estimated_bits(key: str) -> float:
    """A key's strength as if each character were drawn at random from the key's own characters, as
    often as they occur in it (length times the Shannon entropy of that mix): 0 for one character
    repeated, under 80 for a long run of one, about 300 for secrets.token_urlsafe(48)."""
    counts = [key.count(char) for char in set(key)]
    return -sum(count * math.log2(count / len(key)) for count in counts)


def repeats_itself(key: str) -> bool:
    """The key is a shorter piece over and over (the last time perhaps cut short), `changemechangem...`."""
    return any(key[shift:] == key[:-shift] for shift in range(1, len(key) // 2 + 1))


def production_key_problem(key: str) -> str | None:
    """Why `key` may not sign anything in production, or None. Never quotes the key."""
    if is_published_secret(key):
        return "is a published sample value (in this project's files or in documentation)"
    if len(key) < MIN_PRODUCTION_SECRET_KEY_LENGTH:
        return f"must be at least {MIN_PRODUCTION_SECRET_KEY_LENGTH} characters"
    if (
        len(set(key)) < MIN_PRODUCTION_SECRET_KEY_DISTINCT
        or estimated_bits(key) < MIN_PRODUCTION_SECRET_KEY_BITS
        or repeats_itself(key)
    ):
        return (
            f"is too easy to guess: it needs at least {MIN_PRODUCTION_SECRET_KEY_DISTINCT} distinct characters, "
            "no long run of one and no piece repeated over and over"
        )
    return None


# == where the process listens ========================================================================


class ServerSettings(Settings):
    """Where and how gunicorn serves the app (gunicorn.conf.py). Outside production the app derives
    PUBLIC_BASE_URL from the same address."""

    PORT: int = Field(5000, ge=1, le=65535)
    BIND: str | None = None
    WEB_CONCURRENCY: PositiveInt = 2
    GUNICORN_THREADS: PositiveInt = 32
    # Long-polls held at once per worker, each asleep in a thread of its own on top of
    # GUNICORN_THREADS, so webhooks and other calls always find one of those free. A sleeping
    # long-poll costs ~20 KiB and no database connection (services/long_poll.py); beyond the limit
    # `?wait=` answers at once and the app backs off (docs/mobile.md).
    STATUS_MAX_WAITERS: NonNegativeInt = 1000

    @property
    def worker_threads(self) -> int:
        """gunicorn's threads per worker: the request threads and the long-polls' own."""
        return self.GUNICORN_THREADS + self.STATUS_MAX_WAITERS

    @property
    def bind_address(self) -> str:
        """BIND, else loopback on PORT."""
        return self.BIND or f"127.0.0.1:{self.PORT}"


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


# == the app's own settings ===========================================================================


class AppSettings(ServerSettings):
    SECRET_KEY: str | None = None
    SECRET_KEY_FALLBACKS: CommaSeparated = []
    DATABASE_URL: str | None = None
    DATABASE_POOL_SIZE: NonNegativeInt = 10
    DATABASE_MAX_OVERFLOW: int = 22  # -1: no limit (SQLAlchemy)
    DATABASE_POOL_PRE_PING: bool = False
    DATABASE_POOL_RECYCLE_SECONDS: int = 300  # -1: never
    PUBLIC_BASE_URL: str | None = None
    EXTRA_TRUSTED_HOSTS: CommaSeparated = []
    MAX_CONTENT_LENGTH: PositiveInt = 1024 * 1024
    ATTEMPT_TOKEN_MAX_AGE: PositiveInt = 2 * 24 * 3600
    USERINFO_CHECK_AFTER_SECONDS: NonNegativeInt = 3
    RATELIMIT_STORAGE_URI: str = "memory://"
    LOGIN_RATE_LIMIT: Rate = "10 per minute"
    # Per account (the submitted email), web and API together, from any address. A flood of guesses
    # closes the account's sign-in until its window ends, never longer.
    LOGIN_ACCOUNT_RATE_LIMIT: Rate = "10 per 15 minutes"
    REGISTER_RATE_LIMIT: Rate = "10 per hour"
    # Per user, web and API together: each attempt spends a widget session of the Terra quota.
    CONNECT_RATE_LIMIT: Rate = "10 per minute"
    # Per user, web and API together: each history request spends Terra's hourly budget of days.
    DATA_REQUEST_RATE_LIMIT: Rate = "5 per minute"
    # Counted per worker process (services/request_windows.py), per caller and attempt.
    STATUS_RATE_LIMIT: Rate = "120 per minute"
    # Behind N reverse proxies, trust N hops of X-Forwarded-*: of the headers the proxy sets (it must
    # overwrite what the client sent), no others, since a trusted header moves the app's links.
    TRUSTED_PROXY_COUNT: NonNegativeInt = 0
    TRUSTED_PROXY_HEADERS: CommaSeparated = ["for", "proto", "host"]
    API_TOKEN_LIFETIME_SECONDS: PositiveInt = 30 * 24 * 3600
    # A checked token is trusted by the worker that checked it for this long without asking the
    # database again; revoking evicts it there at once, other workers within this bound. 0: off.
    API_TOKEN_CACHE_SECONDS: NonNegativeInt = 5
    BROWSER_CLOSED_GRACE_SECONDS: NonNegativeInt = 10
    # Opening the connections (web or mobile) reconciles them with Terra at most this often per user.
    RECONCILE_INTERVAL_SECONDS: NonNegativeInt = 60
    STATUS_POLL_AFTER_MS: PositiveInt = 2000
    # Long-polls one bearer token, and one user, holds at once; counted across workers and instances
    # when RATELIMIT_STORAGE_URI is Redis, else per worker (services/long_poll.py).
    STATUS_MAX_WAITERS_PER_TOKEN: PositiveInt = 4
    STATUS_MAX_WAITERS_PER_USER: PositiveInt = 4
    # Operators: signed-in users who may replay a failed webhook event from their dashboard's timeline.
    OPERATOR_EMAILS: CommaSeparated = []
    # Read by Flask itself from the environment, where any value but 0, false or no turns its debug mode
    # on ("off" too); here only so that production can refuse it.
    FLASK_DEBUG: str | None = None

    @field_validator("OPERATOR_EMAILS")
    @classmethod
    def _operator_emails(cls, emails: list[str]) -> list[str]:
        for email in emails:
            if "@" not in email:
                raise ValueError(f"must be comma-separated email addresses, not {email!r}")
        return [email.lower() for email in emails]

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, url: str) -> str:
        # Hosting platforms hand out postgres:// URLs; SQLAlchemy needs the driver named (psycopg 3).
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                url = "postgresql+psycopg://" + url[len(prefix) :]
        try:
            make_url(url)
        except (ArgumentError, ValueError):  # not quoted: the URL may hold the database password
            raise ValueError("must be a database URL such as postgresql://user@host/terra_connect") from None
        return url

    @field_validator("PUBLIC_BASE_URL")
    @classmethod
    def _public_origin(cls, url: str) -> str:
        url = url.rstrip("/")
        if not is_plain_url(url, ("http", "https")) or urlsplit(url).path:
            raise ValueError(f"must be an origin such as https://connect.example.com, not {url!r}")
        return url

    @field_validator("TRUSTED_PROXY_HEADERS")
    @classmethod
    def _forwarded_headers(cls, names: list[str]) -> list[str]:
        names = [name.lower() for name in names]
        for name in names:
            if name not in FORWARDED_HEADERS:
                raise ValueError(
                    f"entries are some of {', '.join(FORWARDED_HEADERS)} (X-Forwarded-<name>), not {name!r}"
                )
        return names

    @field_validator("EXTRA_TRUSTED_HOSTS")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        # Flask compares these with the Host header: a URL or a port would never match.
        for host in hosts:
            if not HOST_NAME.match(host):
                raise ValueError(f"entries are host names such as lb.internal or .example.com, not {host!r}")
        return hosts

    @field_validator("RATELIMIT_STORAGE_URI")
    @classmethod
    def _rate_limit_storage(cls, uri: str) -> str:
        if urlsplit(uri).scheme not in RATE_LIMIT_STORAGE_SCHEMES:  # not quoted: it may hold a password
            raise ValueError("must be a storage URI such as memory:// or redis://host:6379")
        return uri

    @model_validator(mode="after")
    def _production_rules(self) -> AppSettings:
        if self.APP_ENV == "production":
            if not self.SECRET_KEY:
                raise ValueError("SECRET_KEY is required when APP_ENV=production")
            # A fallback key still verifies sessions: a weak one lets anyone forge a user's cookie.
            keys = [("SECRET_KEY", self.SECRET_KEY)] + [
                (f"SECRET_KEY_FALLBACKS (entry {number} of {len(self.SECRET_KEY_FALLBACKS)})", key)
                for number, key in enumerate(self.SECRET_KEY_FALLBACKS, start=1)
            ]
            for name, key in keys:
                problem = production_key_problem(key)
                if problem:
                    raise ValueError(
                        f"{name} {problem} when APP_ENV=production; generate one with: {GENERATE_SECRET_KEY}"
                    )
            if self.FLASK_DEBUG and self.FLASK_DEBUG.lower() not in ("0", "false", "no"):
                # Flask's debug mode shows tracebacks and, under `flask run`, an interactive console.
                raise ValueError("FLASK_DEBUG must be off when APP_ENV=production")
            if not self.PUBLIC_BASE_URL:
                raise ValueError(
                    "PUBLIC_BASE_URL is required when APP_ENV=production: the public https:// origin "
                    "of the app, such as https://connect.example.com"
                )
            if not self.PUBLIC_BASE_URL.startswith("https://"):
                raise ValueError(
                    f"PUBLIC_BASE_URL must be https:// when APP_ENV=production, not {self.PUBLIC_BASE_URL!r}"
                )
        elif not self.PUBLIC_BASE_URL:
            self.PUBLIC_BASE_URL = self._listening_origin()
        return self

    def _listening_origin(self) -> str:
        """Outside production, the public origin is the address this process listens on, so
        `PORT=5731 make run` redirects to itself."""
        host, _, port = self.bind_address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Set PUBLIC_BASE_URL: it cannot be derived from BIND={self.BIND!r}")
        # A wildcard bind is reachable on loopback, the address a developer's browser uses.
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    def flask_config(self, instance_path: str | None) -> dict:
        return {
            "APP_ENV": self.APP_ENV,
            "TESTING": self.APP_ENV == "testing",
            "SECRET_KEY": self.SECRET_KEY or _development_secret_key(instance_path),
            "SECRET_KEY_FALLBACKS": self.SECRET_KEY_FALLBACKS,
            "SQLALCHEMY_DATABASE_URI": self.DATABASE_URL or _sqlite_in(instance_path),
            # As many pooled connections as a gunicorn worker has threads (gunicorn.conf.py: 32), so no
            # request waits for a connection and none are opened and closed on every burst. No pre-ping:
            # it is a round trip on every checkout (docs/performance.md); a connection the server dropped
            # fails one request and SQLAlchemy then replaces the whole pool, and recycling keeps idle
            # connections younger than typical server and proxy idle timeouts.
            "SQLALCHEMY_ENGINE_OPTIONS": {
                "pool_pre_ping": self.DATABASE_POOL_PRE_PING,
                "pool_recycle": self.DATABASE_POOL_RECYCLE_SECONDS,
                "pool_size": self.DATABASE_POOL_SIZE,
                "max_overflow": self.DATABASE_MAX_OVERFLOW,
            },
            "PUBLIC_BASE_URL": self.PUBLIC_BASE_URL,
            # Production answers only to its public host (Flask's TRUSTED_HOSTS; other hosts get 400), plus
            # EXTRA_TRUSTED_HOSTS, e.g. the address a load balancer's health check sends as Host.
            "TRUSTED_HOSTS": [urlsplit(self.PUBLIC_BASE_URL).hostname, *self.EXTRA_TRUSTED_HOSTS]
            if self.APP_ENV == "production"
            else None,
            # Session cookie: unreadable from scripts, sent on top-level navigations back from Terra.
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": self.APP_ENV == "production",
            "WTF_CSRF_TIME_LIMIT": None,
            "MAX_CONTENT_LENGTH": self.MAX_CONTENT_LENGTH,
            "ATTEMPT_TOKEN_MAX_AGE": self.ATTEMPT_TOKEN_MAX_AGE,
            "USERINFO_CHECK_AFTER_SECONDS": self.USERINFO_CHECK_AFTER_SECONDS,
            "RATELIMIT_STORAGE_URI": self.RATELIMIT_STORAGE_URI,
            "RATELIMIT_HEADERS_ENABLED": True,
            "LOGIN_RATE_LIMIT": self.LOGIN_RATE_LIMIT,
            "LOGIN_ACCOUNT_RATE_LIMIT": self.LOGIN_ACCOUNT_RATE_LIMIT,
            "REGISTER_RATE_LIMIT": self.REGISTER_RATE_LIMIT,
            "CONNECT_RATE_LIMIT": self.CONNECT_RATE_LIMIT,
            "DATA_REQUEST_RATE_LIMIT": self.DATA_REQUEST_RATE_LIMIT,
            "STATUS_RATE_LIMIT": self.STATUS_RATE_LIMIT,
            "TRUSTED_PROXY_COUNT": self.TRUSTED_PROXY_COUNT,
            "TRUSTED_PROXY_HEADERS": self.TRUSTED_PROXY_HEADERS,
            "API_TOKEN_LIFETIME_SECONDS": self.API_TOKEN_LIFETIME_SECONDS,
            "API_TOKEN_CACHE_SECONDS": self.API_TOKEN_CACHE_SECONDS,
            "STATUS_MAX_WAITERS": self.STATUS_MAX_WAITERS,
            "BROWSER_CLOSED_GRACE_SECONDS": self.BROWSER_CLOSED_GRACE_SECONDS,
            "RECONCILE_INTERVAL_SECONDS": self.RECONCILE_INTERVAL_SECONDS,
            "STATUS_POLL_AFTER_MS": self.STATUS_POLL_AFTER_MS,
            "STATUS_MAX_WAITERS_PER_TOKEN": self.STATUS_MAX_WAITERS_PER_TOKEN,
            "STATUS_MAX_WAITERS_PER_USER": self.STATUS_MAX_WAITERS_PER_USER,
            "OPERATOR_EMAILS": self.OPERATOR_EMAILS,
        }


def _development_secret_key(instance_path: str | None) -> str:
    """Development and tests: one random key, kept in the instance folder so sessions survive restarts."""
    key_file = Path(instance_path or "instance") / "secret_key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(48))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def _sqlite_in(instance_path: str | None) -> str:
    folder = Path(instance_path or "instance")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve() / 'terra_connect.sqlite'}"


def database_url(environ: Mapping[str, str], instance_path: str | None) -> str:
    """The SQLAlchemy URL that DATABASE_URL names (SQLite in the instance folder when unset)."""
    return read_settings(AppSettings, environ).DATABASE_URL or _sqlite_in(instance_path)


# == the Terra integration's settings =================================================================


class TerraSettings(Settings):
    """Live Terra when all three credentials are set; without any, the embedded sandbox (if it is
    registered) plays Terra and fills in the credentials and endpoints it answers to."""

    TERRA_DEV_ID: str | None = None
    TERRA_API_KEY: str | None = None
    TERRA_SIGNING_SECRET: str | None = None
    TERRA_WIDGET_API: Literal["session", "legacy"] = "session"
    TERRA_WIDGET_SESSION_URL: HttpUrl | None = None
    TERRA_LEGACY_WIDGET_URL: HttpUrl | None = None
    TERRA_API_BASE_URL: HttpUrl | None = None
    TERRA_TIMEOUT_SECONDS: Seconds = 10
    # s3_payload downloads: the whole download's time (shorter than the claim's lease); Terra caps
    # each payload at 10 MB. Plain http and loopback addresses only when allowed: outside production
    # by default (the sandbox serves payloads on loopback), never in production.
    TERRA_PAYLOAD_TIMEOUT_SECONDS: Seconds = 15
    TERRA_PAYLOAD_MAX_BYTES: PositiveInt = 10 * 1024 * 1024
    TERRA_PAYLOAD_ALLOW_LOOPBACK: bool | None = None
    WEBHOOK_MAX_BYTES: PositiveInt = 512 * 1024
    WEBHOOK_TOLERANCE_SECONDS: PositiveInt = 300
    # Recorded webhook events are applied by a thread in each web worker; false: by `flask terra work`.
    WEBHOOK_APPLY_IN_PROCESS: bool = True
    WEBHOOK_CLAIM_LEASE_SECONDS: Seconds = 60
    WEBHOOK_SWEEP_SECONDS: Seconds = 5

    @model_validator(mode="after")
    def _payload_downloads(self) -> TerraSettings:
        if self.TERRA_PAYLOAD_ALLOW_LOOPBACK and self.APP_ENV == "production":
            raise ValueError(
                "TERRA_PAYLOAD_ALLOW_LOOPBACK must not be set when APP_ENV=production: "
                "s3_payload data is fetched only from public https addresses there"
            )
        if self.TERRA_PAYLOAD_TIMEOUT_SECONDS >= self.WEBHOOK_CLAIM_LEASE_SECONDS:
            raise ValueError(
                "TERRA_PAYLOAD_TIMEOUT_SECONDS must be shorter than WEBHOOK_CLAIM_LEASE_SECONDS "
                "(a download's claim must not run out while it downloads)"
            )
        return self

    @model_validator(mode="after")
    def _all_credentials_or_none(self) -> TerraSettings:
        present = [name for name in TERRA_CREDENTIALS if getattr(self, name)]
        if not present and self.APP_ENV == "production":
            # The sandbox has no login and signs with a published secret: never in production.
            raise ValueError(
                f"APP_ENV=production needs live Terra credentials: set {', '.join(TERRA_CREDENTIALS)} "
                "(production never serves the embedded sandbox)"
            )
        if present and len(present) < len(TERRA_CREDENTIALS):
            missing = [name for name in TERRA_CREDENTIALS if name not in present]
            # Production never offers the sandbox as the way out.
            alternative = "" if self.APP_ENV == "production" else " Unset all three to use the embedded sandbox."
            raise ValueError(
                f"Live Terra mode needs all of {', '.join(TERRA_CREDENTIALS)}; missing {', '.join(missing)}.{alternative}"
            )
        return self

    @model_validator(mode="after")
    def _production_rules(self) -> TerraSettings:
        if self.APP_ENV != "production":
            return self
        if self.TERRA_SIGNING_SECRET and is_published_secret(self.TERRA_SIGNING_SECRET):
            # Anyone could sign a webhook with it: the sandbox's secret, or a sample.
            raise ValueError(
                "TERRA_SIGNING_SECRET is a published sample value (such as the sandbox's); copy your webhook "
                "destination's signing secret from Terra's dashboard"
            )
        for name in ENDPOINTS:
            if getattr(self, name) and not getattr(self, name).startswith("https://"):
                # Every call to Terra carries the API key in a header: never in cleartext.
                raise ValueError(f"{name} must be https:// when APP_ENV=production (it carries TERRA_API_KEY)")
        return self

    def flask_config(self) -> dict:
        config: dict = {
            "TERRA_MODE": "live" if self.TERRA_DEV_ID else "sandbox",
            "TERRA_WIDGET_API": self.TERRA_WIDGET_API,
            "TERRA_TIMEOUT_SECONDS": self.TERRA_TIMEOUT_SECONDS,
            "TERRA_PAYLOAD_TIMEOUT_SECONDS": self.TERRA_PAYLOAD_TIMEOUT_SECONDS,
            "TERRA_PAYLOAD_MAX_BYTES": self.TERRA_PAYLOAD_MAX_BYTES,
            "TERRA_PAYLOAD_ALLOW_LOOPBACK": self.APP_ENV != "production"
            if self.TERRA_PAYLOAD_ALLOW_LOOPBACK is None
            else self.TERRA_PAYLOAD_ALLOW_LOOPBACK,
            "WEBHOOK_MAX_BYTES": self.WEBHOOK_MAX_BYTES,
            "WEBHOOK_TOLERANCE_SECONDS": self.WEBHOOK_TOLERANCE_SECONDS,
            "WEBHOOK_APPLY_IN_PROCESS": self.WEBHOOK_APPLY_IN_PROCESS,
            "WEBHOOK_CLAIM_LEASE_SECONDS": self.WEBHOOK_CLAIM_LEASE_SECONDS,
            "WEBHOOK_SWEEP_SECONDS": self.WEBHOOK_SWEEP_SECONDS,
        }
        if config["TERRA_MODE"] == "live":
            config.update(
                TERRA_DEV_ID=self.TERRA_DEV_ID,
                TERRA_API_KEY=self.TERRA_API_KEY,
                TERRA_SIGNING_SECRET=self.TERRA_SIGNING_SECRET,
                TERRA_WIDGET_SESSION_URL=LIVE_WIDGET_SESSION_URL,
                TERRA_LEGACY_WIDGET_URL=LIVE_LEGACY_WIDGET_URL,
                TERRA_API_BASE_URL=LIVE_API_BASE_URL,
            )
        # Endpoints set in the environment win; in sandbox mode the sandbox's own are the defaults it fills in.
        overrides = {name: getattr(self, name) for name in ENDPOINTS}
        config.update({name: url for name, url in overrides.items() if url})
        return config


# == all of it ========================================================================================


def load_config(environ: Mapping[str, str] | None = None, instance_path: str | None = None) -> dict:
    """The app's, the Terra integration's and the mobile companion's settings, for `app.config`."""
    environ = process_environment() if environ is None else environ
    app_settings = read_settings(AppSettings, environ)
    # The mobile settings compare the links host with the app's origin, derived or not.
    mobile = read_settings(MobileSettings, {**environ, "PUBLIC_BASE_URL": app_settings.PUBLIC_BASE_URL})
    config = {
        **app_settings.flask_config(instance_path),
        **read_settings(TerraSettings, environ).flask_config(),
        **mobile.flask_config(),
    }
    if config["TRUSTED_HOSTS"] is not None and mobile.links_host:
        # The links host may be this same app under another name (docs/mobile.md, "Hosting the links").
        config["TRUSTED_HOSTS"].append(mobile.links_host)
    return config
