"""Deep links into the mobile app, built only from configuration.

Which kind an attempt gets is the app's choice, recorded on the attempt (`callback`): the link its
in-app browser catches. Nothing is guessed from the user agent (iPadOS sends a Mac one); only the
form of a scheme link follows the browser, since Chrome on Android launches apps best from `intent:`.

A link names the outcome and, on the return page, the attempt; nothing else: no Terra user id, no
token, no secret. The app then asks the status endpoint what really happened. The one addition is
`resource`, when Terra's redirect named an SDK-only provider (Apple Health, Samsung Health, Health
Connect), so that the app can start Terra's mobile SDK for it at once. The shapes, for `success`:

    scheme           com.example.app://connect/success?attempt_id=<id>
    https            https://links.example.com/terra/connect/success?attempt_id=<id>
    scheme, Android  intent://connect/success?attempt_id=<id>#Intent;scheme=com.example.app;
                     package=com.example.app;S.browser_fallback_url=<return page, tried=1>;end

In app mode Terra redirects straight to the link and appends its own query: the link is then only
`<scheme>://connect/<outcome>` or `<base>/connect/<outcome>`, exactly the host and path a callback
matches, with no query of ours for Terra's to collide with (the session that catches it is the
attempt's own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote, urlencode, urlsplit

Outcome = Literal["success", "failure"]
OUTCOMES = ("success", "failure")
CALLBACKS = ("scheme", "https")


class DeepLinkNotConfigured(LookupError):
    """The server has no link of the kind asked for (MOBILE_APP_SCHEME or MOBILE_UNIVERSAL_LINK_BASE)."""


def _path(outcome: Outcome) -> str:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    return f"connect/{outcome}"


def _query(attempt_id: str | None, resource: str | None) -> str:
    params = ({"attempt_id": attempt_id} if attempt_id else {}) | ({"resource": resource} if resource else {})
    return f"?{urlencode(params)}" if params else ""


def scheme_link(config: Mapping, outcome: Outcome, attempt_id: str | None = None, resource: str | None = None):
    scheme = config["MOBILE_APP_SCHEME"]
    return f"{scheme}://{_path(outcome)}{_query(attempt_id, resource)}" if scheme else None


def universal_link(config: Mapping, outcome: Outcome, attempt_id: str | None = None, resource: str | None = None):
    base = config["MOBILE_UNIVERSAL_LINK_BASE"]
    return f"{base}/{_path(outcome)}{_query(attempt_id, resource)}" if base else None


def universal_link_path(config: Mapping, outcome: Outcome) -> str:
    """The path of a universal link on the links host (what the association file lists)."""
    return f"{urlsplit(config['MOBILE_UNIVERSAL_LINK_BASE']).path}/{_path(outcome)}"


def android_intent_link(
    config: Mapping, outcome: Outcome, attempt_id: str | None, fallback_url: str, resource: str | None = None
) -> str | None:
    """The scheme link as Chrome on Android launches it: aimed at the app's package, and loading
    `fallback_url` when it cannot or will not launch the app."""
    scheme, package = config["MOBILE_APP_SCHEME"], config["ANDROID_PACKAGE_NAME"]
    if not scheme:
        return None
    extras = f"scheme={scheme};"
    if package:
        extras += f"package={package};"
    extras += f"S.browser_fallback_url={quote(fallback_url, safe='')};"
    return f"intent://{_path(outcome)}{_query(attempt_id, resource)}#Intent;{extras}end"


def direct_link(config: Mapping, callback: str | None, outcome: Outcome) -> str:
    """App mode: the link Terra itself redirects to, of the attempt's `callback` kind."""
    link = universal_link(config, outcome) if callback == "https" else scheme_link(config, outcome)
    if callback not in CALLBACKS or link is None:
        raise DeepLinkNotConfigured(f"no {callback} link is configured")
    return link


def app_link(
    config: Mapping,
    callback: str | None,
    outcome: Outcome,
    attempt_id: str | None,
    user_agent: str,
    fallback_url: str,
    resource: str | None = None,
) -> str | None:
    """The link a page offers as "Return to app": of the `callback` kind, an `intent:` form of the
    scheme link for Chrome on Android. None when there is none."""
    if callback == "https":
        return universal_link(config, outcome, attempt_id, resource)
    if callback != "scheme":
        return None
    if "android" in user_agent.lower():
        return android_intent_link(config, outcome, attempt_id, fallback_url, resource)
    return scheme_link(config, outcome, attempt_id, resource)


# What embedded WebViews put in their user agent: Android's WebView (`; wv)`), and the in-app
# browsers of Facebook (`FBAN`, `FBAV`) and Instagram, which are WebViews too.
WEBVIEW_MARKERS = ("; wv)", "FBAN/", "FBAV/", "Instagram")


def is_webview(user_agent: str) -> bool:
    """Whether the page is shown in an embedded WebView rather than a browser or an in-app browser
    tab. Terra's widget must not run in one (providers block it), and one cannot open an app from
    an `intent:` link: it replaces the page with an error, and "Return to app" is lost with it."""
    return any(marker in user_agent for marker in WEBVIEW_MARKERS)


def replaces_the_page(link: str) -> bool:
    """Whether navigating to `link` loads another page in place of the current one. A page tries
    only links that cannot (the app's scheme, `intent:`): an https link the app does not claim would
    take the user away from the only "Return to app" they have."""
    return urlsplit(link).scheme in ("http", "https")
