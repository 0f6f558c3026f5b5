"""Asking Terra for a user's history: the data endpoints (`GET /daily`, `/activity`, `/sleep`, `/body`)
with `to_webhook=true`. Terra answers at once with a `reference` and sends the data later by webhook
(a large request: `large_request_processing`, `large_request_sending`, then chunks, all under that
reference), which the inbox stores like any other data event.

Terra's limits (contract §1.4), counted per Terra user in requested days (`end_date − start_date`):
one request spans at most MAX_SPAN_DAYS (rule r1), and at most 6,000 days are requested in a rolling
hour (rule r2); over either, Terra answers 429 with `X-Terra-RateLimit-Rule`, and for r2 a
`Retry-After`. A request is tried once: an answered one was counted against the budget and may already
be sending, and a timed-out one may have been too; asking again is the caller's decision, after
Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from terra_integration.client import TerraClient, TerraError, TerraRejected, TerraUnavailable

MAX_SPAN_DAYS = 1825  # rule r1: exactly 1,825 is allowed
HISTORY_TYPES = ("daily", "activity", "sleep", "body")
# A 429 without Retry-After (not Terra's documented r2 answer, e.g. from a proxy): wait this long.
DEFAULT_RETRY_AFTER_SECONDS = 60


class DataRequestThrottled(TerraUnavailable):
    """Terra's hourly budget (rule r2) is spent: ask again after `retry_after` seconds."""

    code = "terra_throttled"


class SpanTooLong(TerraRejected):
    """Terra refused the request's span (rule r1): no wait makes it acceptable."""

    code = "span_too_long"


@dataclass(frozen=True)
class DataRequestAccepted:
    data_type: str
    reference: str  # every webhook of the answer carries it as terra-reference


def request_history(
    client: TerraClient, *, user_id: str, data_type: str, start_date: date, end_date: date
) -> DataRequestAccepted:
    """Ask Terra to send `user_id`'s `data_type` items from `start_date` up to `end_date` to the webhook."""
    if data_type not in HISTORY_TYPES:
        raise ValueError(f"data_type must be one of {', '.join(HISTORY_TYPES)}")
    if not 0 < (end_date - start_date).days <= MAX_SPAN_DAYS:
        raise ValueError(f"a request spans from 1 to {MAX_SPAN_DAYS} days")
    params = {
        "user_id": user_id,
        "start_date": start_date.isoformat(),
        "end_date": end_date.isoformat(),
        "to_webhook": "true",
    }
    try:
        # One try (retry=False is the default): see the module docstring.
        data = client._api("GET", f"/{data_type}", params=params)
    except TerraUnavailable as error:
        if error.status != 429:
            raise
        if error.rate_limit_rule == "r1":
            raise SpanTooLong(
                f"Terra refused the span (rule r1: one request covers at most {MAX_SPAN_DAYS} days)", status=429
            ) from None
        raise DataRequestThrottled(
            f"{error}: Terra's hourly budget of requested days is spent",
            status=429,
            retry_after=DEFAULT_RETRY_AFTER_SECONDS if error.retry_after is None else error.retry_after,
            rate_limit_rule=error.rate_limit_rule,
        ) from None
    reference = data.get("reference") if isinstance(data, dict) else None
    if not isinstance(reference, str) or not reference or data.get("status") not in ("success", None):
        raise TerraError(f"Terra's {data_type} request answer was not an acknowledgement with a reference")
    return DataRequestAccepted(data_type=data_type, reference=reference)
