"""The mobile companion's settings (config.py reads them with the rest). Deep links come only from here."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, field_validator, model_validator

from config import CommaSeparated, Settings, is_plain_url

# A demo scheme outside production, so the mobile walkthrough works without configuration.
DEVELOPMENT_APP_SCHEME = "com.example.terraconnect"
APP_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]{1,63}$")
FORBIDDEN_SCHEMES = {"http", "https", "javascript", "data", "file", "vbscript", "blob", "about", "intent"}
IOS_APP_ID = re.compile(r"^[A-Z0-9]{10}\.[A-Za-z0-9.-]+$")
ANDROID_PACKAGE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*(\.[a-zA-Z][a-zA-Z0-9_]*)+$")
CERT_FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


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
    MOBILE_REDIRECT_MODE: Literal["page", "app"] = "page"
    IOS_APP_IDS: Annotated[CommaSeparated, AfterValidator(_ios_app_ids)] = []
    ANDROID_PACKAGE_NAME: str = ""
    ANDROID_CERT_SHA256: Annotated[CommaSeparated, AfterValidator(_cert_fingerprints)] = []

    @field_validator("MOBILE_APP_SCHEME")
    @classmethod
    def _own_scheme(cls, scheme: str) -> str:
        scheme = scheme.lower()
        if not APP_SCHEME.match(scheme) or scheme in FORBIDDEN_SCHEMES:
            raise ValueError(f"must be an app's own URL scheme such as com.example.app, not {scheme!r}")
        return scheme

    @field_validator("MOBILE_UNIVERSAL_LINK_BASE")
    @classmethod
    def _plain_https(cls, base: str) -> str:
        base = base.rstrip("/")
        if not is_plain_url(base, ("https",)):
            raise ValueError("must be a plain https:// URL such as https://links.example.com/terra")
        return base

    @field_validator("ANDROID_PACKAGE_NAME")
    @classmethod
    def _package_name(cls, package: str) -> str:
        if not ANDROID_PACKAGE.match(package):
            raise ValueError(f"must be a package name such as com.example.app, not {package!r}")
        return package

    @model_validator(mode="after")
    def _demo_scheme_outside_production(self) -> MobileSettings:
        if self.MOBILE_APP_SCHEME is None and self.APP_ENV != "production":
            self.MOBILE_APP_SCHEME = DEVELOPMENT_APP_SCHEME
        return self

    def flask_config(self) -> dict:
        return {**self.model_dump(exclude={"APP_ENV"}), "MOBILE_APP_SCHEME": self.MOBILE_APP_SCHEME or ""}
