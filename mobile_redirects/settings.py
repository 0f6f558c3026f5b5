"""The mobile companion's settings (config.py reads them with the rest). Deep links come only from here."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, field_validator, model_validator

from settings_base import CommaSeparated, Settings, is_plain_url

# A demo scheme outside production, so the mobile walkthrough works without configuration.
DEVELOPMENT_APP_SCHEME = "com.example.terraconnect"
# A URL scheme's letters (RFC 3986 §3.1); anything else could not be a link's scheme.
SCHEME_SYNTAX = re.compile(r"^[a-z][a-z0-9+.-]*$")
# An app's own scheme should be reverse-DNS (RFC 8252 §7.1): a domain its developer controls, so that
# no other app answers to it. Only recommended: the deep link carries no credential (the attempt's
# outcome comes from the status endpoint), and Terra's own guide's example is `reallycoolapp`.
REVERSE_DNS_SCHEME = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)+$")
# Schemes browsers or the OS handle themselves, named in the error message.
SYSTEM_SCHEMES = {
    "http",
    "https",
    "javascript",
    "data",
    "file",
    "vbscript",
    "blob",
    "about",
    "intent",
    "tel",
    "sms",
    "mailto",
    "market",
    "itms-apps",
    "maps",
}
IOS_APP_ID = re.compile(r"^[A-Z0-9]{10}\.[A-Za-z0-9.-]+$")
ANDROID_PACKAGE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*(\.[a-zA-Z][a-zA-Z0-9_]*)+$")
CERT_FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")

Callback = Literal["scheme", "https"]

log = logging.getLogger(__name__)


def _ios_app_ids(ids: list[str]) -> list[str]:
    for app_id in ids:
        if not IOS_APP_ID.match(app_id):
            raise ValueError(f"entries look like TEAMID1234.com.example.app, not {app_id!r}")
    return ids


def _cert_fingerprints(fingerprints: list[str]) -> list[str]:
    fingerprints = [fingerprint.upper() for fingerprint in fingerprints]
    if not all(CERT_FINGERPRINT.match(fingerprint) for fingerprint in fingerprints):
        raise ValueError("entries are colon-separated SHA-256 fingerprints (32 bytes)")
    return fingerprints


class MobileSettings(Settings):
    MOBILE_APP_SCHEME: str | None = None
    MOBILE_UNIVERSAL_LINK_BASE: str = ""
    # iOS does not open a universal link tapped on a page of its own host: a links host equal to the
    # return pages' host is refused unless set on purpose (docs/mobile.md, "Hosting the links").
    MOBILE_UNIVERSAL_LINK_SAME_HOST: bool = False
    MOBILE_REDIRECT_MODE: Literal["page", "app"] = "page"
    # Which link an attempt that names no `callback` gets: the scheme when it is set, else the base.
    MOBILE_CALLBACK: Callback | None = None
    IOS_APP_IDS: Annotated[CommaSeparated, AfterValidator(_ios_app_ids)] = []
    ANDROID_PACKAGE_NAME: str = ""
    ANDROID_CERT_SHA256: Annotated[CommaSeparated, AfterValidator(_cert_fingerprints)] = []
    # The app's effective origin (config.AppSettings), handed in by config.load_config.
    PUBLIC_BASE_URL: str | None = None

    @field_validator("MOBILE_APP_SCHEME")
    @classmethod
    def _own_scheme(cls, scheme: str) -> str:
        scheme = scheme.lower()
        if scheme in SYSTEM_SCHEMES:
            raise ValueError(f"must be the app's own URL scheme, not {scheme!r}, which the browser or the OS handles")
        if not SCHEME_SYNTAX.match(scheme) or len(scheme) > 64:
            raise ValueError(
                f"must be the app's own URL scheme, letters first, such as com.example.app (no '://'), not {scheme!r}"
            )
        if not REVERSE_DNS_SCHEME.match(scheme):
            log.warning(
                "MOBILE_APP_SCHEME=%s is not reverse-DNS: another app may claim the same scheme. A name from a "
                "domain you control, such as com.example.%s, is safer (RFC 8252 section 7.1)",
                scheme,
                scheme.replace("+", "").replace(".", "").replace("-", "") or "app",
            )
        return scheme

    @field_validator("MOBILE_UNIVERSAL_LINK_BASE")
    @classmethod
    def _plain_https(cls, base: str) -> str:
        base = base.rstrip("/")
        if not is_plain_url(base, ("https",)):
            raise ValueError("must be a plain https:// URL such as https://links.example.com/terra")
        if "*" in base:
            raise ValueError(
                "must be the exact host and path, without '*': apple-app-site-association reads it as a "
                "wildcard, so the app would claim links it does not handle"
            )
        if urlsplit(base).netloc.rsplit("]", 1)[-1].count(":"):
            raise ValueError(
                "must have no port: iOS and Android fetch and open universal links (App Links) on port 443 "
                "only; serve the links host there"
            )
        return base

    @field_validator("ANDROID_PACKAGE_NAME")
    @classmethod
    def _package_name(cls, package: str) -> str:
        if not ANDROID_PACKAGE.match(package):
            raise ValueError(f"must be a package name such as com.example.app, not {package!r}")
        return package

    @model_validator(mode="after")
    def _links_that_can_work(self) -> MobileSettings:
        base = self.MOBILE_UNIVERSAL_LINK_BASE
        # Outside production a demo scheme, unless the links are configured (a base alone is a
        # configuration a developer must be able to try).
        if self.MOBILE_APP_SCHEME is None and not base and self.APP_ENV != "production":
            self.MOBILE_APP_SCHEME = DEVELOPMENT_APP_SCHEME
        if base and self.PUBLIC_BASE_URL and not self.MOBILE_UNIVERSAL_LINK_SAME_HOST:
            if urlsplit(base).hostname == urlsplit(self.PUBLIC_BASE_URL).hostname:
                raise ValueError(
                    "MOBILE_UNIVERSAL_LINK_BASE must be on another host than PUBLIC_BASE_URL: iOS opens no "
                    "universal link tapped on a page of its own host. Set MOBILE_UNIVERSAL_LINK_SAME_HOST=1 "
                    "only if your app catches the links itself (docs/mobile.md)"
                )
        configured = self.configured_callbacks
        if self.MOBILE_CALLBACK is None:
            self.MOBILE_CALLBACK = configured[0] if configured else None
        elif self.MOBILE_CALLBACK not in configured:
            needed = "MOBILE_APP_SCHEME" if self.MOBILE_CALLBACK == "scheme" else "MOBILE_UNIVERSAL_LINK_BASE"
            raise ValueError(f"MOBILE_CALLBACK={self.MOBILE_CALLBACK} needs {needed}")
        if self.MOBILE_REDIRECT_MODE == "app" and not configured:
            raise ValueError(
                "MOBILE_REDIRECT_MODE=app needs a link into the app: set MOBILE_APP_SCHEME or "
                "MOBILE_UNIVERSAL_LINK_BASE"
            )
        return self

    @property
    def configured_callbacks(self) -> tuple[Callback, ...]:
        """The kinds of link the configuration can build, the default one first."""
        return (("scheme",) if self.MOBILE_APP_SCHEME else ()) + (("https",) if self.MOBILE_UNIVERSAL_LINK_BASE else ())

    @property
    def links_host(self) -> str | None:
        return urlsplit(self.MOBILE_UNIVERSAL_LINK_BASE).hostname if self.MOBILE_UNIVERSAL_LINK_BASE else None

    def flask_config(self) -> dict:
        return {
            **self.model_dump(exclude={"APP_ENV", "PUBLIC_BASE_URL"}),
            "MOBILE_APP_SCHEME": self.MOBILE_APP_SCHEME or "",
        }
