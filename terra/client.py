"""A small client for the Terra endpoints a connect flow needs, built on one `requests.Session`.

Every call has a timeout, accepts any 2xx, and turns everything else into a `TerraError` subclass
with a message a person can act on. Nothing here knows about Flask routes or our database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import requests

log = logging.getLogger(__name__)


class TerraError(RuntimeError):
    """A Terra call failed. `status` is Terra's HTTP status when it answered at all."""

    code = "terra_error"  # stable, machine-readable; shown to API clients and stored on attempts

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TerraUnavailable(TerraError):
    """Terra could not be reached, timed out, or answered 5xx: worth trying again later."""

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
    active: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TerraUser":
        return cls(
            user_id=str(data["user_id"]),
            provider=str(data.get("provider") or ""),
            reference_id=data.get("reference_id"),
            scopes=data.get("scopes") or "",
            active=bool(data.get("active", True)),
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
    ):
        self.dev_id = dev_id
        self.api_key = api_key
        self.api_base_url = api_base_url.rstrip("/")
        self.widget_session_url = widget_session_url
        self.legacy_widget_url = legacy_widget_url
        self.widget_api = widget_api
        self.timeout = timeout
        self.http = session or requests.Session()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TerraClient":
        return cls(
            dev_id=config["TERRA_DEV_ID"],
            api_key=config["TERRA_API_KEY"],
            api_base_url=config["TERRA_API_BASE_URL"],
            widget_session_url=config["TERRA_WIDGET_SESSION_URL"],
            legacy_widget_url=config["TERRA_LEGACY_WIDGET_URL"],
            widget_api=config["TERRA_WIDGET_API"],
            timeout=config["TERRA_TIMEOUT_SECONDS"],
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
        except KeyError:
            raise TerraError("Terra's authenticateUser answer had no auth_url") from None

    def deauthenticate_user(self, user_id: str) -> None:
        self._api("DELETE", "/auth/deauthenticateUser", params={"user_id": user_id})

    # -- users and integrations ----------------------------------------------------------

    def user_info(self, user_id: str) -> TerraUser | None:
        """The Terra user with this id, or None when Terra does not know it."""
        try:
            data = self._api("GET", "/userInfo", params={"user_id": user_id})
        except TerraNotFound:
            return None
        user = data.get("user") if isinstance(data, dict) else None
        if not user:
            return None
        if "is_authenticated" in data:
            user = {**user, "active": bool(data["is_authenticated"]) and user.get("active", True)}
        return TerraUser.from_json(user)

    def users_by_reference(self, reference_id: str) -> list[TerraUser]:
        try:
            data = self._api("GET", "/userInfo", params={"reference_id": reference_id})
        except TerraNotFound:
            return []
        # Terra's spec answers a bare array; some of its examples wrap it in {"users": [...]}.
        users = data.get("users", []) if isinstance(data, dict) else data
        return [TerraUser.from_json(user) for user in users or []]

    def integrations_detailed(self) -> list[Provider]:
        # Only dev-id: with both headers Terra has been seen to answer an empty list.
        data = self._request(
            "GET", self.api_base_url + "/integrations/detailed", headers={"dev-id": self.dev_id}, auth=False
        )
        return [
            Provider(
                code=str(item["provider"]),
                name=str(item.get("name") or item["provider"]),
                icon=str(item.get("icon") or ""),
                enabled=bool(item.get("enabled", True)),
            )
            for item in data.get("providers") or []
        ]

    # -- transport -----------------------------------------------------------------------

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, self.api_base_url + path, **kwargs)

    def _request(self, method: str, url: str, *, auth: bool = True, headers: dict | None = None, **kwargs: Any) -> Any:
        request_headers = {"Accept": "application/json"}
        if auth:
            request_headers.update({"dev-id": self.dev_id, "x-api-key": self.api_key})
        request_headers.update(headers or {})
        try:
            response = self.http.request(method, url, headers=request_headers, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            raise TerraUnavailable(f"Terra did not answer within {self.timeout:g} s") from None
        except requests.RequestException as error:
            raise TerraUnavailable(f"Terra could not be reached ({type(error).__name__})") from None
        if not 200 <= response.status_code < 300:
            raise _error_for(response)
        try:
            return response.json()
        except ValueError:
            raise TerraUnavailable(f"Terra answered {response.status_code} with a body that is not JSON") from None


def _error_for(response: requests.Response) -> TerraError:
    detail = _error_detail(response)
    message = f"Terra answered {response.status_code}: {detail}"
    if response.status_code >= 500 or response.status_code == 429:
        return TerraUnavailable(message, status=response.status_code)
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
