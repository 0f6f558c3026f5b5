"""The sandbox's provider catalogue: what `/integrations` lists and what the widget offers.

Scopes imitate each provider's own vocabulary, because Terra passes them through unchanged.
Icons stay empty: the sandbox must not make the browser fetch anything from another host.
"""

from __future__ import annotations

from dataclasses import dataclass

DATA_TYPES = ("activity", "body", "nutrition", "daily", "sleep", "menstruation")


@dataclass(frozen=True)
class Provider:
    code: str
    name: str
    scopes: tuple[str, ...]
    types: frozenset[str]
    setup: str = "API_KEYS_MANAGED"
    enabled: bool = True
    sdk_only: bool = False  # connected through Terra's mobile SDK, never through the web widget
    icon: str = ""

    def types_map(self) -> dict[str, bool]:
        return {kind: kind in self.types for kind in DATA_TYPES}

    def to_detailed(self) -> dict:
        return {
            "provider": self.code,
            "name": self.name,
            "icon": self.icon,
            "setup": self.setup,
            "enabled": self.enabled,
            "types": self.types_map(),
        }


def _types(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


CATALOGUE: tuple[Provider, ...] = (
    Provider(
        "GARMIN",
        "Garmin",
        ("ACTIVITY_EXPORT", "HEALTH_EXPORT", "WORKOUT_IMPORT"),
        _types("activity", "body", "daily", "sleep", "menstruation"),
    ),
    Provider(
        "FITBIT",
        "Fitbit",
        ("activity", "heartrate", "sleep", "weight", "profile"),
        _types("activity", "body", "daily", "sleep", "nutrition"),
    ),
    Provider(
        "OURA",
        "Oura",
        ("personal", "daily", "heartrate", "workout", "session"),
        _types("activity", "body", "daily", "sleep"),
    ),
    Provider(
        "WITHINGS",
        "Withings",
        ("user.info", "user.metrics", "user.activity"),
        _types("activity", "body", "daily", "sleep"),
    ),
    Provider("POLAR", "Polar", ("accesslink.read_all",), _types("activity", "daily", "sleep")),
    Provider("COROS", "COROS", ("workout", "daily", "sleep"), _types("activity", "daily", "sleep")),
    Provider("WAHOO", "Wahoo", ("user_read", "workouts_read", "power_zones_read"), _types("activity")),
    Provider("STRAVA", "Strava", ("read", "activity:read_all", "profile:read_all"), _types("activity")),
    # Listed but switched off, as on a Terra dashboard: requesting it yields a warning.
    Provider("SUUNTO", "Suunto", ("workout", "sleep"), _types("activity", "sleep"), enabled=False),
    Provider("APPLE", "Apple Health", ("HealthKit",), _types(*DATA_TYPES), setup="SDK", sdk_only=True),
    Provider(
        "SAMSUNG",
        "Samsung Health",
        ("health_data",),
        _types("activity", "body", "daily", "sleep"),
        setup="SDK",
        sdk_only=True,
    ),
    Provider(
        "HEALTH_CONNECT",
        "Health Connect",
        ("READ_STEPS", "READ_SLEEP", "READ_EXERCISE"),
        _types(*DATA_TYPES),
        setup="SDK",
        sdk_only=True,
    ),
)

_BY_CODE = {provider.code: provider for provider in CATALOGUE}


def find(code: str | None) -> Provider | None:
    return _BY_CODE.get((code or "").strip().upper())


def web_providers(*, enabled_only: bool = True) -> list[Provider]:
    """Providers a user can connect through the widget or authenticateUser."""
    return [p for p in CATALOGUE if not p.sdk_only and (p.enabled or not enabled_only)]


def sdk_providers() -> list[Provider]:
    return [p for p in CATALOGUE if p.sdk_only]


def widget_providers() -> list[Provider]:
    """What the widget offers by default: every enabled provider, SDK-only ones included (picking one
    hands the user back to the app, which connects it through Terra's mobile SDK)."""
    return [p for p in CATALOGUE if p.enabled]


def offerable(code: str | None) -> Provider | None:
    """The provider when the widget can offer it, else None."""
    provider = find(code)
    return provider if provider and provider.enabled else None


def connectable(code: str | None) -> Provider | None:
    """The provider when the sandbox can run a web login for it, else None."""
    provider = find(code)
    return provider if provider and provider.enabled and not provider.sdk_only else None
