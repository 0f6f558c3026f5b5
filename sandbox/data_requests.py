"""Terra's data endpoints (`GET /v2/daily|activity|sleep|body|athlete`) with `to_webhook=true`: the
answer acknowledges the request, and the data follows by webhook, as Terra sends it (contract §1.4,
§6.3; Terra's OpenAPI `DataSentToWebhook`).

- A request spanning more than a month is a large one: `large_request_processing`,
  `large_request_sending`, then chunks of at most ten items, all under the answer's `reference`.
  Shorter ones get their chunks only.
- Terra's limits, per Terra user: one request spans at most SANDBOX_DATA_MAX_SPAN_DAYS (rule r1,
  1,825 days; 429 without Retry-After), and at most SANDBOX_DATA_HOURLY_DAYS requested days in a
  rolling hour (rule r2, 6,000; 429 with Retry-After, the seconds until enough of the hour's requests
  have aged out). Accepted requests carry the budget's X-Terra-RateLimit-* headers. 0 turns a limit
  off. The budget is counted in this process, like the console's faults (one gunicorn worker each).
- The sandbox's provider accounts hold SANDBOX_HISTORY_DAYS of history; older days come back empty.
- Only `to_webhook=true` (Terra's default) is played: the data in the answer is not.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import defaultdict, deque
from datetime import UTC, date, datetime, timedelta

from flask import Response, current_app, jsonify, request

from extensions import db
from models.time import clock
from sandbox.api import require_credentials, rest_route
from sandbox.errors import TerraApiError
from sandbox.faults import rate_limited
from sandbox.models import SandboxUser
from sandbox.user_events import send_history, send_user_event

HOUR_SECONDS = 3600
LARGE_REQUEST_DAYS = 31  # Terra: requests spanning more than a month are sent in chunks, announced


class HourlyBudget:
    """Requested days per Terra user in a rolling hour (rule r2)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spent: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def spend(self, user_id: str, days: int, limit: int) -> tuple[int, float] | float:
        """Spend `days` and answer (remaining days, seconds until the oldest spend ages out); or, when
        they do not fit, only the seconds until they would (nothing spent)."""
        now = clock.monotonic()
        with self._lock:
            spent = self._spent[user_id]
            while spent and spent[0][0] <= now - HOUR_SECONDS:
                spent.popleft()
            used = sum(amount for _, amount in spent)
            if used + days > limit:
                freed = 0
                for moment, amount in spent:
                    freed += amount
                    if used - freed + days <= limit:
                        return max(1.0, moment + HOUR_SECONDS - now)
                return float(HOUR_SECONDS)  # more than the whole budget: no wait makes it fit
            spent.append((now, days))
            return limit - used - days, spent[0][0] + HOUR_SECONDS - now


def _budget() -> HourlyBudget:
    return current_app.extensions.setdefault("sandbox_data_budget", HourlyBudget())


def _day(name: str, value: str | None) -> date | None:
    """A date given as YYYY-MM-DD or as unix seconds, as Terra accepts them."""
    if value is None or value == "":
        return None
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value), UTC).date()
        return date.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        raise TerraApiError(400, f"{name} must be a date (YYYY-MM-DD) or unix seconds") from None


def _active_user() -> SandboxUser:
    user_id = request.args.get("user_id")
    if not user_id:
        raise TerraApiError(400, "user_id query parameter is required")
    user = db.session.get(SandboxUser, user_id)
    if user is None or not user.active:
        raise TerraApiError(404, "user not found")
    return user


@rest_route("/<any(daily, activity, sleep, body, athlete):kind>", methods=["GET"])
@require_credentials(401)
def data_request(kind: str):
    user = _active_user()
    if request.args.get("to_webhook", "true").lower() != "true":
        raise TerraApiError(400, "the sandbox sends data to the webhook only (to_webhook=true)")
    config = current_app.config
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    start = _day("start_date", request.args.get("start_date"))
    end = _day("end_date", request.args.get("end_date")) or tomorrow
    if kind != "athlete" and start is None:
        raise TerraApiError(400, "start_date query parameter is required")
    span = 1 if start is None else (end - start).days  # Terra counts a request without dates as 1 day
    if span < 0:
        raise TerraApiError(400, "end_date is before start_date")

    max_span = config["SANDBOX_DATA_MAX_SPAN_DAYS"]
    if max_span and span > max_span:
        return rate_limited("r1", None)
    headers = {}
    if config["SANDBOX_DATA_HOURLY_DAYS"]:
        limit = config["SANDBOX_DATA_HOURLY_DAYS"]
        spent = _budget().spend(user.user_id, max(span, 1), limit)
        if isinstance(spent, float):
            return rate_limited("r2", math.ceil(spent))
        remaining, reset_after = spent
        headers = {
            "X-Terra-RateLimit-Limit": str(limit),
            "X-Terra-RateLimit-Remaining": str(remaining),
            "X-Terra-RateLimit-Reset-After": str(math.ceil(reset_after)),
        }

    reference = str(uuid.uuid4())
    large = span > LARGE_REQUEST_DAYS
    answer = {"status": "success", "type": kind, "reference": reference, "trace_id": reference, "user": user.to_terra()}
    if large:
        answer["message"] = (
            "Large request submitted. The data is being processed and will be sent to your destination in chunks"
        )
    if kind == "athlete":
        send_user_event(user, "athlete", config)
    else:
        # The provider holds only so much history: days before it come back empty.
        held_from = tomorrow - timedelta(days=config["SANDBOX_HISTORY_DAYS"])
        send_history(user, [kind], max(start, held_from), min(end, tomorrow), config, large=large, reference=reference)
    response: Response = jsonify(answer)
    response.headers.update(headers)
    return response
