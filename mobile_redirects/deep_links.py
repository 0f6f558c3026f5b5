"""Deep links into the mobile app, built only from configuration.

A link names the attempt and the outcome, nothing else: no Terra user id, no token, no secret. The
app then asks the status endpoint what really happened. The one exception is `resource`, added when
Terra's redirect named an SDK-only provider (Apple Health, Samsung Health, Health Connect), so that
the app can start Terra's mobile SDK for it at once. The shapes, for outcome `success`:

    custom scheme   com.example.app://connect/success?attempt_id=<id>
    universal link  https://links.example.com/terra/connect/success?attempt_id=<id>
    Android intent  intent://connect/success?attempt_id=<id>#Intent;scheme=com.example.app;
                    package=com.example.app;S.browser_fallback_url=<return page, tried=1>;end
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote, urlencode

Outcome = Literal["success", "failure"]
OUTCOMES = ("success", "failure")


class DeepLinkNotConfigured(LookupError):
    """Neither MOBILE_APP_SCHEME nor MOBILE_UNIVERSAL_LINK_BASE is set."""


def _path_and_query(attempt_id: str, outcome: Outcome, resource: str | None = None) -> str:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    params = {"attempt_id": attempt_id} | ({"resource": resource} if resource else {})
    return f"connect/{outcome}?{urlencode(params)}"


def scheme_link(config: Mapping, attempt_id: str, outcome: Outcome, resource: str | None = None) -> str | None:
    scheme = config["MOBILE_APP_SCHEME"]
    return f"{scheme}://{_path_and_query(attempt_id, outcome, resource)}" if scheme else None


def universal_link(config: Mapping, attempt_id: str, outcome: Outcome, resource: str | None = None) -> str | None:
    base = config["MOBILE_UNIVERSAL_LINK_BASE"]
    return f"{base}/{_path_and_query(attempt_id, outcome, resource)}" if base else None


def android_intent_link(
    config: Mapping, attempt_id: str, outcome: Outcome, fallback_url: str, resource: str | None = None
) -> str | None:
    """Chrome on Android launches the app from this, or loads `fallback_url` when it cannot."""
    scheme, package = config["MOBILE_APP_SCHEME"], config["ANDROID_PACKAGE_NAME"]
    if not scheme:
        return None
    extras = f"scheme={scheme};"
    if package:
        extras += f"package={package};"
    extras += f"S.browser_fallback_url={quote(fallback_url, safe='')};"
    return f"intent://{_path_and_query(attempt_id, outcome, resource)}#Intent;{extras}end"


def direct_link(config: Mapping, attempt_id: str, outcome: Outcome) -> str:
    """Direct app mode: the link Terra itself redirects to. A claimed https link is preferred."""
    link = universal_link(config, attempt_id, outcome) or scheme_link(config, attempt_id, outcome)
    if link is None:
        raise DeepLinkNotConfigured("set MOBILE_APP_SCHEME or MOBILE_UNIVERSAL_LINK_BASE")
    return link


def return_page_link(
    config: Mapping, attempt_id: str, outcome: Outcome, user_agent: str, fallback_url: str, resource: str | None = None
) -> str | None:
    """The link the return page tries once and offers as "Return to app", chosen per platform:
    an intent: URL on Android (Chrome falls back to `fallback_url`), the custom scheme on iOS, else
    the universal link. None when nothing is configured."""
    agent = user_agent.lower()
    if "android" in agent:
        candidates = (android_intent_link(config, attempt_id, outcome, fallback_url, resource),)
    elif any(device in agent for device in ("iphone", "ipad", "ipod")):
        candidates = (scheme_link(config, attempt_id, outcome, resource),)
    else:
        candidates = ()
    candidates += (
        universal_link(config, attempt_id, outcome, resource),
        scheme_link(config, attempt_id, outcome, resource),
    )
    return next((link for link in candidates if link), None)
