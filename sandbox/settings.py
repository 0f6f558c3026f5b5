"""The sandbox's settings: knobs of the embedded Terra emulator, each mirroring a documented behaviour
of Terra, and the credentials and endpoints the app's Terra client uses to reach it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, NonNegativeFloat, NonNegativeInt, PositiveInt

from sandbox.blueprint import URL_PREFIX
from sandbox.faults import UnknownFault, parse_fault_names
from settings_base import HttpUrl, Seconds, Settings

# The sandbox accepts exactly these credentials, so the client code path is the live one.
SANDBOX_DEV_ID = "sandbox-dev-id"
SANDBOX_API_KEY = "sandbox-api-key"
DEFAULT_SANDBOX_SIGNING_SECRET = "sandbox-signing-secret-not-for-production"


def _fault_names(value: object) -> list[str]:
    try:
        return list(parse_fault_names(value))
    except UnknownFault as problem:
        raise ValueError(f"lists an {problem}") from None


class SandboxSettings(Settings):
    SANDBOX_SIGNING_SECRET: str = DEFAULT_SANDBOX_SIGNING_SECRET
    # Unset: this app's own webhook endpoint.
    SANDBOX_WEBHOOK_URL: HttpUrl | None = None
    SANDBOX_SESSION_TTL_SECONDS: NonNegativeInt = 900
    # generateAuthToken's tokens for the mobile SDK live 180 s (Terra's documented lifetime).
    SANDBOX_AUTH_TOKEN_TTL_SECONDS: PositiveInt = 180
    SANDBOX_USER_CAP: NonNegativeInt = 50
    # Where the 50-user cap bites: inside the widget (default) or at session creation (403).
    SANDBOX_USER_CAP_MODE: Literal["widget", "session"] = "widget"
    # Accounts created after 2026-09-03 get 410 from the legacy widget endpoint.
    SANDBOX_LEGACY_GONE: bool = False
    # 2026 contract sends `auth_cancelled`; older docs describe `auth` with status `error`.
    SANDBOX_AUTH_FAILURE_SHAPE: Literal["auth_cancelled", "auth_error"] = "auth_cancelled"
    SANDBOX_REAUTH_ORDER: Literal["reauth_first", "auth_first"] = "reauth_first"
    SANDBOX_USERINFO_SHAPE: Literal["array", "object"] = "array"
    # Terra retries a failed delivery up to 10 times, 30 s doubling to 8 h; tests shrink the clock.
    SANDBOX_WEBHOOK_RETRIES: NonNegativeInt = 10
    SANDBOX_WEBHOOK_RETRY_BASE_SECONDS: NonNegativeFloat = 30
    SANDBOX_WEBHOOK_RETRY_CAP_SECONDS: NonNegativeFloat = 28800
    SANDBOX_WEBHOOK_TIMEOUT_SECONDS: Seconds = 8
    # Switchable faults (see sandbox/faults.py): slow, 5xx, 429, reset, malformed, duplicate, reorder, late.
    SANDBOX_FAULTS: Annotated[list[str], BeforeValidator(_fault_names)] = []
    SANDBOX_SLOW_SECONDS: NonNegativeFloat = 15
    SANDBOX_RETRY_AFTER_SECONDS: NonNegativeInt = 1
    # Unset: the widget session lifetime plus 30 s, so a late webhook lands after the attempt expired.
    SANDBOX_LATE_SECONDS: NonNegativeFloat | None = None
    SANDBOX_REORDER_WINDOW_SECONDS: NonNegativeFloat = 2
    # Terra's widget spec answers 200; a third-party mock of the new endpoint answers 201.
    SANDBOX_WIDGET_SESSION_STATUS: Literal["200", "201"] = "200"
    # Terra documents only `reference_id` on the failure redirect; `detailed` adds `resource` and `reason`.
    SANDBOX_FAILURE_REDIRECT: Literal["documented", "detailed"] = "documented"
    # Terra does not say whether deauthenticateUser is followed by a `deauth` webhook.
    SANDBOX_DEAUTH_WEBHOOK: bool = True
    # Terra's docs name `terra-signature`; its agent skill says `X-Terra-Signature` plus that older name.
    SANDBOX_SIGNATURE_HEADERS: Literal["terra-signature", "x-terra-signature", "both"] = "terra-signature"
    # Terra's data-request limits (sandbox/data_requests.py): one request's span in days (rule r1) and
    # requested days per user in a rolling hour (rule r2); 0 turns one off. Provider history depth.
    SANDBOX_DATA_MAX_SPAN_DAYS: NonNegativeInt = 1825
    SANDBOX_DATA_HOURLY_DAYS: NonNegativeInt = 6000
    SANDBOX_HISTORY_DAYS: NonNegativeInt = 90

    def flask_config(self, public_base_url: str) -> dict:
        """The sandbox's knobs, and Terra's credentials and endpoints pointing at the sandbox."""
        sandbox_base = public_base_url + URL_PREFIX
        return {
            **self.model_dump(exclude={"APP_ENV"}),
            "SANDBOX_WEBHOOK_URL": self.SANDBOX_WEBHOOK_URL or public_base_url + "/webhooks/terra",
            "TERRA_DEV_ID": SANDBOX_DEV_ID,
            "TERRA_API_KEY": SANDBOX_API_KEY,
            "TERRA_SIGNING_SECRET": self.SANDBOX_SIGNING_SECRET,
            "TERRA_WIDGET_SESSION_URL": sandbox_base + "/api/widget/session",
            "TERRA_LEGACY_WIDGET_URL": sandbox_base + "/v2/auth/generateWidgetSession",
            "TERRA_API_BASE_URL": sandbox_base + "/v2",
        }
