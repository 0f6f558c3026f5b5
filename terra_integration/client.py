"""A small client for the Terra endpoints a connect flow needs, built on one `requests.Session`.

Every call has a timeout, accepts any 2xx, and turns everything else into a `TerraError` subclass
with a message a person can act on. Nothing here knows about Flask routes or our database.

Retries: only idempotent reads (`GET userInfo`, `GET integrations/detailed`) are tried again, and
only after `TerraUnavailable` (timeout, connection error, 5xx, 429, an answer that is not JSON):
at most `read_attempts` tries, waiting with capped exponential backoff and full jitter, or exactly
`Retry-After` when Terra sends one (a longer `Retry-After` than `max_retry_after` ends the retries),
and never starting a try more than `retry_budget` seconds after the first one began. Creating a widget session, an
authenticateUser flow or a mobile SDK token (POST) and deauthenticateUser (DELETE) are tried once: a
timed-out POST may well have created a session on Terra's side, and a second one must not be made
without need.
Kept rather than urllib3's `Retry`, which retries neither a body that is not JSON nor within a time
budget, and waits out a long `Retry-After` instead of giving up (docs/reliability.md).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from urllib3.exceptions import ProtocolError

from terra_integration.models import PROVIDER_LENGTH

log = logging.getLogger(__name__)

AUTH_TOKEN_SECONDS = 180  # a generateAuthToken token's documented lifetime, when Terra does not say
# What a mobile SDK token may look like: Terra's are 64 hex digits; anything printable and short is
# passed on opaquely, anything else (a page, a message) is not a token.
TOKEN_TEXT = re.compile(r"[\x21-\x7e]{1,512}")


class TerraError(RuntimeError):
    """A Terra call failed. `status` is Terra's HTTP status when it answered at all."""

    code = "terra_error"  # stable, machine-readable; shown to API clients and stored on attempts

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        rate_limit_rule: str | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, from Terra's Retry-After header when it sent one
        self.detail = detail  # Terra's own words, when it answered in its error JSON
        self.rate_limit_rule = rate_limit_rule  # a 429's X-Terra-RateLimit-Rule (r1: span, r2: hourly budget)


class TerraUnavailable(TerraError):
    """Terra could not be reached, timed out, answered 5xx or 429, or sent something that is not
    JSON: worth trying again later."""

    code = "terra_unavailable"


class TerraRejected(TerraError):
    """Terra answered 4xx: the request (or our credentials) needs fixing."""

    code = "terra_rejected"


class TerraNotFound(TerraRejected):
    """Terra answered 404 in its own error JSON: the user or resource does not exist, or (its
    `detail` says which) something else Terra could not find, such as the dev-id. A 404 that is not
    Terra's JSON (a proxy's or a web server's page: a wrong base URL) is a plain TerraRejected."""

    code = "terra_not_found"


class LegacyWidgetEndpointGone(TerraRejected):
    """The legacy widget endpoint answered 410 (accounts created after 3 September 2026)."""

    code = "legacy_widget_endpoint_gone"


@dataclass(frozen=True)
class WidgetSession:
    session_id: str
    url: str  # opaque: open it as given
    expires_in: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AuthToken:
    """A token for Terra's mobile SDK (`initConnection`): single use, valid `expires_in` seconds."""

    token: str
    expires_in: int


@dataclass(frozen=True)
class ProviderAuth:
    user_id: str
    auth_url: str


@dataclass(frozen=True)
class TerraUser:
    user_id: str
    provider: str
    reference_id: str | None
    scopes: str
    active: bool | None  # the spec allows null: Terra did not say, which is not "inactive"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TerraUser:
        scopes = data.get("scopes") or ""
        if isinstance(scopes, list):  # documented as a comma-separated string; accept a list too
            scopes = ",".join(str(scope) for scope in scopes)
        return cls(
            user_id=str(data["user_id"]),
            provider=str(data.get("provider") or "")[:PROVIDER_LENGTH],
            reference_id=data.get("reference_id"),
            scopes=scopes if isinstance(scopes, str) else "",
            active=None if data.get("active") is None else bool(data["active"]),
        )


@dataclass(frozen=True)
class Provider:
    code: str
    name: str
    icon: str
    enabled: bool


class TerraClient:
    def __init__(
        self,
        *,
        dev_id: str,
        api_key: str,
        api_base_url: str,
        widget_session_url: str,
        legacy_widget_url: str,
        widget_api: str = "session",
        timeout: float = 10.0,
        session: requests.Session | None = None,
        read_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_cap: float = 2.0,
        max_retry_after: float = 5.0,
        retry_budget: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.dev_id = dev_id
        self.api_key = api_key
        self.api_base_url = api_base_url.rstrip("/")
        self.widget_session_url = widget_session_url
        self.legacy_widget_url = legacy_widget_url
        self.widget_api = widget_api
        self.timeout = timeout
        self.http = session or requests.Session()
        # Retries of idempotent reads (see the module docstring).
        self.read_attempts = max(1, read_attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self.retry_budget = retry_budget
        self._sleep = sleep

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **options: Any) -> TerraClient:
        """The client for the TERRA_* settings in `config`; `options` (any keyword argument of the
        constructor) come on top, e.g. a shorter timeout or other retry settings."""
        optional = {"widget_api": "TERRA_WIDGET_API", "timeout": "TERRA_TIMEOUT_SECONDS"}
        settings = {argument: config[key] for argument, key in optional.items() if key in config}
        return cls(
            dev_id=config["TERRA_DEV_ID"],
            api_key=config["TERRA_API_KEY"],
            api_base_url=config["TERRA_API_BASE_URL"],
            widget_session_url=config["TERRA_WIDGET_SESSION_URL"],
            legacy_widget_url=config["TERRA_LEGACY_WIDGET_URL"],
            **settings | options,
        )

    # -- widget and authentication -------------------------------------------------------

    def create_widget_session(
        self,
        *,
        reference_id: str,
        success_url: str,
        failure_url: str,
        providers: list[str] | None = None,
        language: str | None = None,
    ) -> WidgetSession:
        body: dict[str, Any] = {
            "reference_id": reference_id,
            "auth_success_redirect_url": success_url,
            "auth_failure_redirect_url": failure_url,
        }
        if providers:
            body["providers"] = ",".join(providers)  # Terra takes a comma-separated string
        if language:
            body["language"] = language
        legacy = self.widget_api == "legacy"
        url = self.legacy_widget_url if legacy else self.widget_session_url
        try:
            data = self._request("POST", url, json=body)
        except TerraRejected as error:
            if legacy and error.status == 410:
                raise LegacyWidgetEndpointGone(
                    "Terra no longer serves the legacy widget endpoint for this account (410). "
                    "Set TERRA_WIDGET_API=session to use POST https://access.tryterra.co/api/widget/session.",
                    status=410,
                ) from error
            raise
        if not isinstance(data, dict):
            raise TerraError("Terra's widget session answer was not a JSON object")
        warnings = [str(warning) for warning in data.get("warnings") or []]
        for warning in warnings:
            log.warning("Terra widget session warning: %s", warning)
        try:
            return WidgetSession(
                session_id=str(data["session_id"]),
                url=str(data["url"]),
                expires_in=int(data.get("expires_in") or 900),
                warnings=warnings,
            )
        except (KeyError, TypeError, ValueError):
            raise TerraError("Terra's widget session answer had no session_id or url") from None

    def authenticate_user(
        self, *, provider: str, reference_id: str, success_url: str, failure_url: str, language: str | None = None
    ) -> ProviderAuth:
        body = {
            "reference_id": reference_id,
            "auth_success_redirect_url": success_url,
            "auth_failure_redirect_url": failure_url,
        }
        if language:
            body["language"] = language
        data = self._api("POST", "/auth/authenticateUser", params={"resource": provider}, json=body)
        try:
            return ProviderAuth(user_id=str(data["user_id"]), auth_url=str(data["auth_url"]))
        except (KeyError, TypeError):
            raise TerraError("Terra's authenticateUser answer had no auth_url") from None

    def generate_auth_token(self) -> AuthToken:
        """A fresh token for the app's mobile SDK to register Apple Health, Samsung Health or Health
        Connect with Terra. Tried once, like every call that makes something; never to be cached."""
        data = self._api("POST", "/auth/generateAuthToken")
        if not isinstance(data, dict):
            raise TerraError("Terra's generateAuthToken answer was not a JSON object")
        token, expires_in = data.get("token"), data.get("expires_in", AUTH_TOKEN_SECONDS)
        if (
            data.get("status", "success") != "success"
            or not isinstance(token, str)
            or not TOKEN_TEXT.fullmatch(token)
            or isinstance(expires_in, bool)
            or not isinstance(expires_in, int)
            or expires_in <= 0
        ):
            raise TerraError("Terra's generateAuthToken answer had no usable token and expires_in")
        return AuthToken(token=token, expires_in=expires_in)

    def deauthenticate_user(self, user_id: str) -> None:
        """Raises TerraNotFound only when Terra says it has no such user (already deauthenticated)."""
        try:
            self._api("DELETE", "/auth/deauthenticateUser", params={"user_id": user_id})
        except TerraNotFound as error:
            _require_missing_user(error)
            raise

    # -- users and integrations ----------------------------------------------------------

    def user_info(self, user_id: str) -> TerraUser | None:
        """The Terra user with this id, or None when Terra says it has no such user."""
        data = self._user_lookup({"user_id": user_id})
        user = data.get("user") if isinstance(data, dict) else None
        if not user:
            return None
        if data.get("is_authenticated") is False:
            user = {**user, "active": False}
        return TerraUser.from_json(user)

    def users_by_reference(self, reference_id: str) -> list[TerraUser]:
        """Every Terra user under `reference_id`; empty only when Terra said so in its documented shape
        (a list, or its "user not found" 404). Any other answer raises: reconciliation revokes on this."""
        data = self._user_lookup({"reference_id": reference_id})
        if data is None:
            return []
        # Terra's spec answers a bare array; some of its examples wrap it in {"users": [...]}.
        users = data.get("users") if isinstance(data, dict) else data
        if not isinstance(users, list):
            raise TerraError("Terra's userInfo answer was not a list of users")
        try:
            return [TerraUser.from_json(user) for user in users]
        except (KeyError, TypeError, AttributeError):
            raise TerraError("Terra's userInfo answer was not a list of users") from None

    def _user_lookup(self, params: dict[str, str]) -> Any:
        """userInfo's answer, or None when Terra says it has no such user."""
        try:
            return self._api("GET", "/userInfo", params=params, retry=True)
        except TerraNotFound as error:
            _require_missing_user(error)
            return None

    def integrations_detailed(self, *, include_sdk: bool = False) -> list[Provider]:
        """The enabled providers; `include_sdk` adds those connected through Terra's mobile SDK."""
        # Only dev-id: with both headers Terra has been seen to answer an empty list.
        data = self._request(
            "GET",
            self.api_base_url + "/integrations/detailed",
            headers={"dev-id": self.dev_id},
            auth=False,
            params={"sdk": "true"} if include_sdk else None,
            retry=True,
        )
        try:
            return [
                Provider(
                    code=str(item["provider"]),
                    name=str(item.get("name") or item["provider"]),
                    icon=str(item.get("icon") or ""),
                    enabled=bool(item.get("enabled", True)),
                )
                for item in data.get("providers") or []
            ]
        except (KeyError, TypeError, AttributeError):
            raise TerraError("Terra's integrations answer was not a list of providers") from None

    # -- transport -----------------------------------------------------------------------

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, self.api_base_url + path, **kwargs)

    def _request(self, method: str, url: str, *, retry: bool = False, **kwargs: Any) -> Any:
        """One call, or for an idempotent read (`retry=True`, GET only) up to `read_attempts` tries."""
        attempts = self.read_attempts if retry and method.upper() == "GET" else 1
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return self._request_once(method, url, **kwargs)
            except TerraUnavailable as error:
                wait = self._wait_before_retry(attempt, error) if attempt < attempts else None
                if wait is None or time.monotonic() - started + wait > self.retry_budget:
                    if attempt == 1:
                        raise
                    raise type(error)(
                        f"{error} (tried {attempt} times)", status=error.status, retry_after=error.retry_after
                    ) from None
                log.warning(
                    "Terra %s %s failed (%s); try %d of %d in %.2f s",
                    method,
                    url.split("?")[0],
                    error,
                    attempt + 1,
                    attempts,
                    wait,
                )
                self._sleep(wait)
                attempt += 1

    def _wait_before_retry(self, attempt: int, error: TerraUnavailable) -> float | None:
        """Seconds to wait before try `attempt + 1`, or None when trying again makes no sense."""
        if error.retry_after is not None:
            # Terra said when; sooner would only be refused again, much later is too long to hold a user.
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))

    def _request_once(
        self, method: str, url: str, *, auth: bool = True, headers: dict | None = None, **kwargs: Any
    ) -> Any:
        request_headers = {"Accept": "application/json"}
        if auth:
            request_headers.update({"dev-id": self.dev_id, "x-api-key": self.api_key})
        request_headers.update(headers or {})
        try:
            response = self.http.request(method, url, headers=request_headers, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            raise TerraUnavailable(f"Terra did not answer within {self.timeout:g} s") from None
        except requests.ConnectionError as error:
            if error.args and isinstance(error.args[0], ProtocolError):
                raise TerraUnavailable("Terra closed the connection without answering") from None
            raise TerraUnavailable(f"Terra could not be reached ({type(error).__name__})") from None
        except requests.RequestException as error:
            raise TerraUnavailable(f"Terra could not be reached ({type(error).__name__})") from None
        if not 200 <= response.status_code < 300:
            raise _error_for(response)
        try:
            if not _is_json_media_type(_media_type(response)):
                raise ValueError  # an HTML page from a proxy in the way is no answer of Terra's
            return response.json()
        except ValueError:
            raise TerraUnavailable(
                f"Terra answered {response.status_code} with a body that is not JSON"
                f" ({_media_type(response) or 'no content type'})",
                status=response.status_code,
            ) from None


def _error_for(response: requests.Response) -> TerraError:
    terra_json = _terra_error_json(response)
    detail = _error_detail(terra_json) or response.reason or "no detail"
    message = f"Terra answered {response.status_code}: {detail}"
    if response.status_code >= 500 or response.status_code == 429:
        retry_after = _retry_after(response)
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        rule = response.headers.get("X-Terra-RateLimit-Rule") if response.status_code == 429 else None
        return TerraUnavailable(message, status=response.status_code, retry_after=retry_after, rate_limit_rule=rule)
    if response.status_code == 404:
        if terra_json is None:
            # Not Terra's word: a web server's or a proxy's page, typically for a wrong base URL.
            return TerraRejected(
                f"Terra answered 404 with {_media_type(response) or 'no content type'} at "
                f"{response.url.split('?')[0]}, not Terra's error JSON: is the Terra URL (TERRA_API_BASE_URL) right?",
                status=404,
            )
        return TerraNotFound(message, status=404, detail=_error_detail(terra_json))
    return TerraRejected(message, status=response.status_code, detail=_error_detail(terra_json))


# Terra's documented 404 detail for a user it does not have (userInfo, deauthenticateUser).
MISSING_USER_DETAIL = "user not found"


def _require_missing_user(error: TerraNotFound) -> None:
    """Raise TerraRejected unless Terra's 404 says the user does not exist (e.g. "Invalid dev-id was
    provided"): a misconfiguration must never read as "this user has no connections"."""
    if MISSING_USER_DETAIL not in (error.detail or "").lower():
        raise TerraRejected(f"{error} (not Terra's answer for a missing user)", status=error.status) from None


def _media_type(response: requests.Response) -> str:
    return (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _is_json_media_type(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _terra_error_json(response: requests.Response) -> dict | None:
    """Terra's error body, when it is one: JSON (`application/json` or problem+json) holding legacy
    `{status, message}` or problem+json `{title, detail}`. None for anything else."""
    if not _is_json_media_type(_media_type(response)):
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, dict) and any(isinstance(data.get(key), str) for key in ("message", "detail", "title")):
        return data
    return None


def _error_detail(data: dict | None) -> str | None:
    """Terra's own words: legacy `{status, message}` or problem+json `{title, detail}`."""
    for key in ("message", "detail", "title"):
        if data and data.get(key):
            return str(data[key])[:300]
    return None


def _retry_after(response: requests.Response) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent or unreadable."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, round((moment - datetime.now(UTC)).total_seconds()))
