"""Provider codes (GARMIN, HEALTH_CONNECT): one rule for every place that takes one, the web's
provider button, the API's `providers` and the `resource` a return redirect names; and how the pages
show a provider (its name and monogram badge), where a code must never reach a person.

A code is written as Terra writes them, and Terra offers it. A value of another shape is refused
before Terra is asked. Whether Terra offers a code, Terra's own answer decides: the API checks its
`providers` against `integrations/detailed` (the widget session takes any list), the web's button
goes straight to authenticateUser, which answers 404 for a provider Terra does not offer.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from terra_integration.client import TerraClient

PROVIDER_CODE = re.compile(r"[A-Z0-9_]{2,40}")  # the whole value (fullmatch): no trailing newline

# Names as the providers write them, and a badge colour each (told apart where they sit side by side
# in a list), for the codes Terra uses. A code missing here (Terra adds providers) is shown
# title-cased, "NEW_BAND" as "New Band", in a colour derived from the code; never as the code.
PROVIDERS = {
    "APPLE": ("Apple Health", 5),
    "CONCEPT2": ("Concept2", 2),
    "COROS": ("COROS", 3),
    "CRONOMETER": ("Cronometer", 4),
    "DEXCOM": ("Dexcom", 3),
    "EIGHT": ("Eight Sleep", 6),
    "FITBIT": ("Fitbit", 2),
    "FREESTYLELIBRE": ("FreeStyle Libre", 4),
    "GARMIN": ("Garmin", 1),
    "GOOGLE": ("Google Fit", 1),
    "HEALTH_CONNECT": ("Health Connect", 3),
    "MYFITNESSPAL": ("MyFitnessPal", 1),
    "OMRON": ("Omron", 1),
    "OURA": ("Oura", 0),
    "PELOTON": ("Peloton", 5),
    "POLAR": ("Polar", 5),
    "SAMSUNG": ("Samsung Health", 1),
    "STRAVA": ("Strava", 4),
    "SUUNTO": ("Suunto", 0),
    "TRAININGPEAKS": ("TrainingPeaks", 7),
    "ULTRAHUMAN": ("Ultrahuman", 0),
    "WAHOO": ("Wahoo", 7),
    "WHOOP": ("WHOOP", 0),
    "WITHINGS": ("Withings", 6),
    "ZWIFT": ("Zwift", 4),
}
BADGE_TONES = 8  # static/style.css has a colour for each, .tone-0 to .tone-7

# The providers Terra connects only through its mobile SDK (Apple Health, Samsung Health, Health
# Connect): for them, and only them, Terra's widget sends the browser to the success URL with
# `user_id=null` and no webhook follows (Terra's redirect docs, "Mobile-based integrations"). A
# provider missing here that Terra makes SDK-only later just waits for its webhook or its expiry.
SDK_ONLY_PROVIDERS = frozenset({"APPLE", "SAMSUNG", "HEALTH_CONNECT"})


@dataclass(frozen=True)
class ProviderLabel:
    """What a page shows for a provider: its name, and a badge of its initials in a colour of its own
    (no third-party logos: a monogram needs no licence and no request to another host)."""

    code: str
    name: str
    monogram: str
    tone: int


def provider_label(code: str | None) -> ProviderLabel:
    code = code or ""
    # An unknown code's colour is the same in every process (Python's hash() is salted per process).
    name, tone = PROVIDERS.get(code) or (code.replace("_", " ").title(), zlib.crc32(code.encode()) % BADGE_TONES)
    name = name or "Unknown provider"
    monogram = "".join(word[0] for word in re.findall(r"[A-Za-z0-9]+", name)[:2]).upper()
    return ProviderLabel(code, name, monogram, tone)


def provider_name(code: str | None) -> str:
    return provider_label(code).name


class UnknownProviders(LookupError):
    def __init__(self, codes: list[str]):
        super().__init__(f"not offered: {', '.join(codes)}")


def is_provider_code(value: str) -> bool:
    return PROVIDER_CODE.fullmatch(value) is not None


def require_offered(codes: list[str], terra: TerraClient, *, include_sdk: bool) -> list[str]:
    """`codes`, if Terra offers (has enabled) every one; UnknownProviders names those it does not.
    `include_sdk`: SDK-only providers (Apple Health and the like) count too, where Terra's widget
    hands the user back to the app for them. Raises TerraError when Terra could not be asked."""
    malformed = sorted({code for code in codes if not is_provider_code(code)})
    if malformed:
        raise UnknownProviders(malformed)
    available = {provider.code for provider in terra.integrations_detailed(include_sdk=include_sdk) if provider.enabled}
    unknown = sorted(set(codes) - available)
    if unknown:
        raise UnknownProviders(unknown)
    return codes
