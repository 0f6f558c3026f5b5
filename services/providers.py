"""Provider codes (GARMIN, HEALTH_CONNECT): one rule for every place that takes one, the web's
provider button, the API's `providers` and the `resource` a return redirect names.

A code is written as Terra writes them, and Terra offers it. A value of another shape is refused
before Terra is asked. Whether Terra offers a code, Terra's own answer decides: the API checks its
`providers` against `integrations/detailed` (the widget session takes any list), the web's button
goes straight to authenticateUser, which answers 404 for a provider Terra does not offer.
"""

from __future__ import annotations

import re

from terra_integration.client import TerraClient

PROVIDER_CODE = re.compile(r"[A-Z0-9_]{2,40}")  # the whole value (fullmatch): no trailing newline


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
