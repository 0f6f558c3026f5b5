"""The Flask extension: `terra = TerraIntegration()`, then `terra.init_app(app, host=...)`.

`init_app` reads the integration's settings from `app.config` (checked there, each problem naming its
key), builds the Terra client and the inbox's applier, and registers the webhook blueprint
(`POST /webhooks/terra`, or under a name and prefix the host chooses). The app's code reaches the client
as `terra.client`; the server starts the applier's thread in each worker process (`applier.start_in`,
gunicorn.conf.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from terra_integration.applier import InboxWorker
from terra_integration.client import TerraClient
from terra_integration.host import BoundIntegration, TerraHost, bound
from terra_integration.recorder import InboxRecorder
from terra_integration.webhooks import bp as webhooks_bp

# Terra's published endpoints, the defaults of the URL settings.
LIVE_WIDGET_SESSION_URL = "https://access.tryterra.co/api/widget/session"
LIVE_LEGACY_WIDGET_URL = "https://api.tryterra.co/v2/auth/generateWidgetSession"
LIVE_API_BASE_URL = "https://api.tryterra.co/v2"


class TerraSettingsError(ValueError):
    """An integration setting in app.config is missing or has a value it cannot use."""


def _text(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError("must be set")


def _http_url(value: Any) -> None:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ValueError(f"must be an http(s) URL, not {value!r}")


def _positive(kind: type) -> Callable[[Any], None]:
    allowed = (int, float) if kind is float else (int,)

    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, allowed) or value <= 0:
            raise ValueError(f"must be a positive {'number' if kind is float else 'whole number'}, not {value!r}")

    return check


def _flag(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")  # noqa: TRY004 (a setting's problem, as the others)


def _one_of(*choices: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")

    return check


# Every app.config key the integration reads: (check, default); no default means the app must set it.
SETTINGS: dict[str, tuple[Callable[[Any], None], Any]] = {
    "TERRA_DEV_ID": (_text, None),
    "TERRA_API_KEY": (_text, None),
    "TERRA_SIGNING_SECRET": (_text, None),  # the webhook destination's signing secret
    "TERRA_API_BASE_URL": (_http_url, LIVE_API_BASE_URL),
    "TERRA_WIDGET_SESSION_URL": (_http_url, LIVE_WIDGET_SESSION_URL),
    "TERRA_LEGACY_WIDGET_URL": (_http_url, LIVE_LEGACY_WIDGET_URL),
    "TERRA_WIDGET_API": (_one_of("session", "legacy"), "session"),
    "TERRA_TIMEOUT_SECONDS": (_positive(float), 10.0),
    # s3_payload downloads (payloads.py): the whole download's time, shorter than the claim's lease.
    "TERRA_PAYLOAD_TIMEOUT_SECONDS": (_positive(float), 15.0),
    "TERRA_PAYLOAD_MAX_BYTES": (_positive(int), 10 * 1024 * 1024),
    # Plain http and loopback addresses for them too: development and tests only (a local sandbox).
    "TERRA_PAYLOAD_ALLOW_LOOPBACK": (_flag, False),
    "WEBHOOK_MAX_BYTES": (_positive(int), 512 * 1024),
    "WEBHOOK_TOLERANCE_SECONDS": (_positive(int), 300),
    # Apply recorded events in a thread of each web worker process (applier.InboxWorker); False:
    # only `flask terra work` (or a call to applier.drain) applies them.
    "WEBHOOK_APPLY_IN_PROCESS": (_flag, True),
    # How long a claim on an inbox row lasts: longer than applying one event can take (an
    # s3_payload download included), since a row whose lease ran out is taken again.
    "WEBHOOK_CLAIM_LEASE_SECONDS": (_positive(float), 60.0),
    # How often the applier looks for rows no wake-up announced (other processes', abandoned claims).
    "WEBHOOK_SWEEP_SECONDS": (_positive(float), 5.0),
}


def check_settings(config: dict[str, Any]) -> None:
    """Fill in the defaults and check every setting; TerraSettingsError names the first bad key."""
    for key, (check, default) in SETTINGS.items():
        if default is not None:
            config.setdefault(key, default)
        try:
            check(config.get(key))
        except ValueError as problem:
            raise TerraSettingsError(f"{key} {problem}") from None
    if config["TERRA_PAYLOAD_TIMEOUT_SECONDS"] >= config["WEBHOOK_CLAIM_LEASE_SECONDS"]:
        raise TerraSettingsError(
            "TERRA_PAYLOAD_TIMEOUT_SECONDS must be shorter than WEBHOOK_CLAIM_LEASE_SECONDS "
            "(a download's claim must not run out while it downloads)"
        )


class TerraIntegration:
    def __init__(self, app: Flask | None = None, *, host: TerraHost | None = None):
        if app is not None:
            self.init_app(app, host=host)

    def init_app(
        self,
        app: Flask,
        *,
        host: TerraHost,
        webhook_blueprint_name: str = "webhooks",
        webhook_url_prefix: str = "/webhooks",
    ) -> None:
        """`webhook_blueprint_name` and `webhook_url_prefix`: for a host with a `webhooks` blueprint of its
        own; Terra's webhook URL is then `<webhook_url_prefix>/terra`."""
        check_settings(app.config)
        if "sqlalchemy" not in app.extensions:
            raise RuntimeError("initialise Flask-SQLAlchemy (db.init_app) before TerraIntegration")
        app.extensions["terra_integration"] = BoundIntegration(
            client=TerraClient.from_config(app.config),
            host=host,
            db=app.extensions["sqlalchemy"],
            worker=InboxWorker(app),
            recorder=InboxRecorder(app),
        )
        app.register_blueprint(webhooks_bp, name=webhook_blueprint_name, url_prefix=webhook_url_prefix)

    @property
    def client(self) -> TerraClient:
        """The current app's Terra client."""
        return bound().client
