"""Terra webhook signatures: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.

The signature is computed over the raw request bytes, never over re-serialised JSON. Every `v1`
value is tried (Terra may send several while it rotates secrets), other schemes such as `v0` are
ignored so they cannot be used to downgrade, and the comparison is constant-time.

The header is parsed strictly: one `t` of ASCII digits, and `v1` values of exactly 64 hex digits.
Anything else is a SignatureError (a 401), never an exception from `int()` or `compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

HEADER_NAMES = ("X-Terra-Signature", "terra-signature")
DEFAULT_TOLERANCE_SECONDS = 300
# ASCII digits only (str.isdigit also accepts "²", which int() refuses); unix seconds have 10 digits,
# and a huge value is not a time (it would overflow the clock check).
TIMESTAMP = re.compile(r"[0-9]{1,15}")
# An HMAC-SHA256 in hex. Only ASCII reaches compare_digest, which raises TypeError on anything else.
V1_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale or does not match."""


def signed_payload(body: bytes, timestamp: int) -> bytes:
    return str(timestamp).encode() + b"." + body


def compute(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), signed_payload(body, timestamp), hashlib.sha256).hexdigest()


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
) -> int:
    """The signed timestamp when `header` is a valid, fresh signature of `body`; raise otherwise."""
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
    return timestamp


def _parse(header: str) -> tuple[int, list[str]]:
    timestamps: list[str] = []
    candidates: list[str] = []
    for element in header.split(","):
        key, sep, value = element.strip(" \t").partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value.strip(" \t"))
        elif key == "v1":
            candidates.append(value.strip(" \t"))
    if not timestamps:
        raise SignatureError("signature header has no timestamp")
    if len(timestamps) > 1:
        raise SignatureError("signature header has more than one timestamp")
    if not TIMESTAMP.fullmatch(timestamps[0]):
        raise SignatureError("signature timestamp is not an integer of at most 15 ASCII digits")
    if not candidates:
        raise SignatureError("signature header has no v1 signature")
    if not all(V1_SIGNATURE.fullmatch(candidate) for candidate in candidates):
        raise SignatureError("signature v1 is not 64 hexadecimal digits")
    return int(timestamps[0]), [candidate.lower() for candidate in candidates]
