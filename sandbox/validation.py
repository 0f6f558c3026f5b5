"""Reading the JSON bodies of the widget-session and authenticateUser calls.

Terra's schema marks every field optional and ignores unknown ones; the checks here are the
emulator's stated assumptions (reference_id at most 255 characters, redirect schemes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import request

from sandbox import providers as catalogue
from sandbox.errors import TerraApiError
from sandbox.redirects import redirect_url_problem

MAX_REFERENCE_ID_LENGTH = 255
MAX_LANGUAGE_LENGTH = 35  # the longest BCP 47 tag worth accepting
REDIRECT_FIELDS = ("auth_success_redirect_url", "auth_failure_redirect_url")


@dataclass(frozen=True)
class FlowOptions:
    language: str = "en"
    reference_id: str | None = None
    success_url: str | None = None
    failure_url: str | None = None
    providers: list[str] | None = None  # None: every enabled provider
    warnings: list[str] = field(default_factory=list)


def json_object_body(*, required: bool) -> dict[str, Any]:
    """The request's JSON object; `{}` for an empty optional body; 400 for anything else."""
    if not required and not request.get_data():
        return {}
    if not request.is_json:
        raise TerraApiError(400, "Content-Type must be application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise TerraApiError(400, "request body must be a JSON object")
    return body


def parse_flow_options(body: dict[str, Any], *, with_providers: bool) -> FlowOptions:
    language = _optional_string(body, "language") or "en"
    if len(language) > MAX_LANGUAGE_LENGTH:
        raise TerraApiError(400, f"language must be at most {MAX_LANGUAGE_LENGTH} characters")
    reference_id = _optional_string(body, "reference_id") or None
    if reference_id is not None and len(reference_id) > MAX_REFERENCE_ID_LENGTH:
        raise TerraApiError(400, f"reference_id must be at most {MAX_REFERENCE_ID_LENGTH} characters")
    urls = {}
    for name in REDIRECT_FIELDS:
        value = body.get(name)
        if value in (None, ""):
            urls[name] = None
            continue
        problem = redirect_url_problem(value)
        if problem:
            raise TerraApiError(400, f"{name} {problem}")
        urls[name] = value
    providers, warnings = _providers(body) if with_providers else (None, [])
    return FlowOptions(
        language=language,
        reference_id=reference_id,
        success_url=urls["auth_success_redirect_url"],
        failure_url=urls["auth_failure_redirect_url"],
        providers=providers,
        warnings=warnings,
    )


def _providers(body: dict[str, Any]) -> tuple[list[str] | None, list[str]]:
    # Terra's spec types `providers` as one comma-separated string (its older SDKs joined a list before
    # sending); a JSON array is refused, so code that sends one fails here as it would against Terra.
    if not isinstance(body.get("providers"), str | None):
        raise TerraApiError(400, 'providers must be one comma-separated string, such as "GARMIN,OURA"')
    raw = _optional_string(body, "providers").strip()
    # Omitted, blank or the legacy wildcard "ALL": the dashboard selection, i.e. every enabled provider.
    if not raw or raw.upper() == "ALL":
        return None, []
    chosen: list[str] = []
    warnings: list[str] = []
    for code in (item.strip().upper() for item in raw.split(",")):
        if not code or code in chosen:
            continue
        provider = catalogue.find(code)
        if provider is None:
            warnings.append(f"Unknown provider {code} was ignored")
        elif not provider.enabled:
            warnings.append(f"Provider {code} is not enabled for this developer and was ignored")
        else:
            chosen.append(code)
    if not chosen:
        raise TerraApiError(400, "; ".join(["none of the requested providers can be offered", *warnings]))
    return chosen, warnings


def _optional_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TerraApiError(400, f"{name} must be a string")
    return value
