"""A small client for the Terra endpoints a connect flow needs, built on one `requests.Session`.

Every call has a timeout, accepts any 2xx, and turns everything else into a `TerraError` subclass
with a message a person can act on. Nothing here knows about Flask routes or our database.

Retries: only idempotent reads (`GET userInfo`, `GET integrations/detailed`) are tried again, and
only after `TerraUnavailable` (timeout, connection error, 5xx, 429, an answer that is not JSON):
at most `read_attempts` tries, waiting with capped exponential backoff and full jitter, or exactly
`Retry-After` when Terra sends one (a longer `Retry-After` than `max_retry_after` ends the retries),
and never starting a try more than `retry_budget` seconds after the first one began. Creating a widget session or an
authenticateUser flow (POST) and deauthenticateUser (DELETE) are tried once: a timed-out POST may
well have created a session on Terra's side, and a second one must not be made without need.
Kept rather than urllib3's `Retry`, which retries neither a body that is not JSON nor within a time
budget, and waits out a long `Retry-After` instead of giving up (docs/reliability.md).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ProtocolError

from terra_integration.models import PROVIDER_LENGTH

log = logging.getLogger(__name__)


class TerraError(RuntimeError):
    """A Terra call failed. `status` is Terra's HTTP status when it answered at all."""

    code = "terra_error"  # stable, machine-readable; shown to API clients and stored on attempts

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        rate_limit_rule: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, from Terra's Retry-After header when it sent one
        self.rate_limit_rule = rate_limit_rule  # a 429's X-Terra-RateLimit-Rule (r1: span, r2: hourly budget)


class TerraUnavailable(TerraError):
    """Terra could not be reached, timed out, answered 5xx or 429, or sent something that is not
    JSON: worth trying again later."""

    code = "terra_unavailable"


class TerraRejected(TerraError):
    """Terra answered 4xx: the request (or our credentials) needs fixing."""

    code = "terra_rejected"


class TerraNotFound(TerraRejected):
    """The user or resource does not exist on Terra."""

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

    def deauthenticate_user(self, user_id: str) -> None:
        self._api("DELETE", "/auth/deauthenticateUser", params={"user_id": user_id})

    # -- users and integrations ----------------------------------------------------------

    def user_info(self, user_id: str) -> TerraUser | None:
        """The Terra user with this id, or None when Terra does not know it."""
        try:
            data = self._api("GET", "/userInfo", params={"user_id": user_id}, retry=True)
        except TerraNotFound:
            return None
        user = data.get("user") if isinstance(data, dict) else None
        if not user:
            return None
        if data.get("is_authenticated") is False:
            user = {**user, "active": False}
        return TerraUser.from_json(user)

    def users_by_reference(self, reference_id: str) -> list[TerraUser]:
        try:
            data = self._api("GET", "/userInfo", params={"reference_id": reference_id}, retry=True)
        except TerraNotFound:
            return []
        # Terra's spec answers a bare array; some of its examples wrap it in {"users": [...]}.
        users = data.get("users", []) if isinstance(data, dict) else data
        try:
            return [TerraUser.from_json(user) for user in users or []]
        except (KeyError, TypeError, AttributeError):
            raise TerraError("Terra's userInfo answer was not a list of users") from None

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
            return response.json()
        except ValueError:
            raise TerraUnavailable(
                f"Terra answered {response.status_code} with a body that is not JSON", status=response.status_code
            ) from None


def download_payload(url: str, *, timeout: float, max_bytes: int, session: requests.Session | None = None) -> bytes:
    """The body at an `s3_payload` event's pre-signed URL, read with a timeout and at most `max_bytes`.

    A plain GET without our Terra credentials (the URL is the capability, and our API key must never
    reach a storage host); redirects are not followed. Raises TerraError when it cannot be had.
    """
    if urlsplit(url).scheme not in ("https", "http"):
        raise TerraRejected("the s3_payload url is not an http(s) URL")
    try:
        with (session or requests).get(url, timeout=timeout, stream=True, allow_redirects=False) as response:
            if response.status_code != 200:
                raise TerraRejected(
                    f"downloading the s3_payload answered {response.status_code}", status=response.status_code
                )
            if int(response.headers.get("Content-Length") or 0) > max_bytes:
                raise TerraRejected(f"the s3_payload is larger than {max_bytes} bytes")
            body = bytearray()
            for chunk in response.iter_content(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise TerraRejected(f"the s3_payload is larger than {max_bytes} bytes")
            return bytes(body)
    except requests.Timeout:
        raise TerraUnavailable(f"the s3_payload download did not finish within {timeout:g} s") from None
    except requests.RequestException as error:
        raise TerraUnavailable(f"the s3_payload could not be downloaded ({type(error).__name__})") from None


def _error_for(response: requests.Response) -> TerraError:
    detail = _error_detail(response)
    message = f"Terra answered {response.status_code}: {detail}"
    if response.status_code >= 500 or response.status_code == 429:
        retry_after = _retry_after(response)
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        rule = response.headers.get("X-Terra-RateLimit-Rule") if response.status_code == 429 else None
        return TerraUnavailable(message, status=response.status_code, retry_after=retry_after, rate_limit_rule=rule)
    if response.status_code == 404:
        return TerraNotFound(message, status=404)
    return TerraRejected(message, status=response.status_code)


def _error_detail(response: requests.Response) -> str:
    """Terra's own words: legacy `{status, message}` or problem+json `{title, detail}`."""
    try:
        data = response.json()
    except ValueError:
        return response.reason or "no detail"
    if isinstance(data, dict):
        for key in ("message", "detail", "title"):
            if data.get(key):
                return str(data[key])[:300]
    return response.reason or "no detail"


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
