"""Terra webhook signatures: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.

The signature is computed over the raw request bytes, never over re-serialised JSON. Every `v1`
value is tried (Terra may send several while it rotates secrets), other schemes such as `v0` are
ignored so they cannot be used to downgrade, and the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER_NAMES = ("X-Terra-Signature", "terra-signature")
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale or does not match."""


def compute(body: bytes, secret: str, timestamp: int) -> str:
    signed_payload = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed_payload, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The header value Terra would send for `body`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={compute(body, secret, timestamp)}"


def verify(
    body: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Return quietly when `header` is a valid, fresh signature of `body`; raise otherwise."""
    if not header:
        raise SignatureError("missing signature header")
    timestamp, candidates = _parse(header)
    now = time.time() if now is None else now
    # Seconds, not milliseconds: a millisecond value is ~50 years in the future and fails here.
    if abs(now - timestamp) > tolerance:
        raise SignatureError("signature timestamp outside the allowed window")
    expected = compute(body, secret, timestamp)
    # Check every candidate so the time taken does not reveal which one matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("signature does not match")


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for element in header.split(","):
        key, sep, value = element.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            # Unix seconds have 10 digits; a huge value is not a time (and would overflow the clock check).
            if not value.isdigit() or len(value) > 15:
                raise SignatureError("signature timestamp is not an integer")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.strip().lower())
    if timestamp is None:
        raise SignatureError("signature header has no timestamp")
    if not candidates:
        raise SignatureError("signature header has no v1 signature")
    return timestamp, candidates
