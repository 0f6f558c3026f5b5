"""Parse a Terra webhook body into a `TerraEvent` with the fields the connect flow acts on.

Terra's payloads vary by event type and by contract date (the 2026 `auth_cancelled` versus the older
`auth` with `status: error`). This module hides that: callers read `event.kind`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from terra_integration.client import TerraUser
from terra_integration.models import TEXT_LENGTH, USER_ID_LENGTH
from terra_integration.text_checks import storable_json

# Events that change the connect flow's state (the host applies them to one of its users); everything
# else is recorded only.
AUTH_SUCCESS = "auth_success"
AUTH_FAILURE = "auth_failure"
ACCOUNT_EVENT_KINDS = frozenset(
    {AUTH_SUCCESS, AUTH_FAILURE, "user_reauth", "deauth", "access_revoked", "connection_error", "permission_change"}
)
DATA_TYPES = frozenset(
    {
        "activity",
        "athlete",
        "body",
        "daily",
        "menstruation",
        "nutrition",
        "sleep",
        "lab_report",
        "planned_workout",
        "hormone",
        "health_observation",
        "s3_payload",
    }
)
INFORMATIONAL_TYPES = frozenset(
    {"large_request_processing", "large_request_sending", "healthcheck", "google_no_datasource", "rate_limit_hit"}
)
PING_TYPE = "s3_payload"  # ping-mode delivery: a download URL in place of the data event
# Events that carry no `user` by design (the v5-only healthcheck; s3_payload names only its download).
USERLESS_TYPES = frozenset({PING_TYPE, "healthcheck"})
MAX_NESTING = 64


class EventParseError(ValueError):
    """The body is not a Terra event we can read."""


@dataclass(frozen=True)
class TerraEvent:
    type: str
    kind: str  # AUTH_SUCCESS, AUTH_FAILURE, or `type` itself
    status: str | None
    reference_id: str | None
    user: TerraUser | None
    session_ids: tuple[str, ...] = ()  # widget_session_id and flow_id, either may be what we stored
    reason: str | None = None
    old_user: TerraUser | None = None
    new_user: TerraUser | None = None
    # The user's whole scope set as the event states it (`user.scopes`); None when it states none.
    scopes: list[str] | None = None
    scopes_added: list[str] = field(default_factory=list)
    scopes_removed: list[str] = field(default_factory=list)
    download_url: str | None = None  # s3_payload: where the data event itself is to be fetched
    # A data event's `data` array as sent (`terra_integration.data` reads it); `athlete` carries one
    # object instead.
    data: Any = None
    athlete: dict | None = None
    # From the delivery, not the body: set when the inbox applies its row (`inbox.apply`).
    ordering_timestamp: int | None = None  # X-Terra-Ordering-Timestamp, unix milliseconds
    received_at: datetime | None = None

    @property
    def terra_user_id(self) -> str | None:
        user = self.user or self.new_user
        return user.user_id if user else None


def parse_event(body: bytes) -> TerraEvent:
    """The event in `body`, or EventParseError, also for an event that could not be stored: Terra
    never sends those, and without this check they would fail inside the database (a 500, and Terra
    retrying for hours)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise EventParseError("body is not UTF-8") from None
    except RecursionError:
        raise EventParseError("body is nested too deeply") from None
    except json.JSONDecodeError as error:
        raise EventParseError(f"body is not valid JSON ({error.msg})") from None
    except ValueError:  # the only other one: an integer longer than Python's int_max_str_digits (4300)
        raise EventParseError("body holds a number with too many digits") from None
    if not isinstance(data, dict):
        raise EventParseError("body must be a JSON object")
    if _depth(data) > MAX_NESTING:
        raise EventParseError("body is nested too deeply")
    # NUL and lone surrogates can only arrive as \u escapes; most bodies have none to look for.
    if b"\\u" in body and not storable_json(data):
        raise EventParseError("body contains NUL characters or lone surrogates")
    event_type = data.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise EventParseError("event has no type")

    status = _optional_str(data.get("status"))
    user = _user(data.get("user"))
    kind = event_type
    if event_type == "auth":
        kind = AUTH_SUCCESS if status == "success" else AUTH_FAILURE
    elif event_type == "auth_cancelled":
        kind = AUTH_FAILURE
    reference_id = _optional_str(data.get("reference_id")) or (user.reference_id if user else None)
    new_user = _user(data.get("new_user"))
    if not reference_id and new_user:
        reference_id = new_user.reference_id
    if reference_id is not None and not isinstance(reference_id, str):  # e.g. user.reference_id: {}
        raise EventParseError("reference_id must be a string")
    old_user = _user(data.get("old_user"))
    # A longer id could not be stored (models.USER_ID_LENGTH).
    if any(each is not None and len(each.user_id) > USER_ID_LENGTH for each in (user, old_user, new_user)):
        raise EventParseError(f"Terra user ids are at most {USER_ID_LENGTH} characters")
    return TerraEvent(
        type=event_type,
        kind=kind,
        status=status,
        reference_id=reference_id,
        user=user,
        session_ids=tuple(
            value
            for value in (_optional_str(data.get("widget_session_id")), _optional_str(data.get("flow_id")))
            if value
        ),
        reason=_optional_str(data.get("reason")),
        old_user=old_user,
        new_user=new_user,
        scopes=_stated_scopes(data.get("user")),
        scopes_added=_scope_list(data.get("scopes_added")),
        scopes_removed=_scope_list(data.get("scopes_removed")),
        download_url=data["url"] if event_type == PING_TYPE and isinstance(data.get("url"), str) else None,
        data=data.get("data"),
        athlete=data["athlete"] if isinstance(data.get("athlete"), dict) else None,
    )


def _user(value: Any) -> TerraUser | None:
    if not isinstance(value, dict) or not value.get("user_id"):
        return None
    try:
        return TerraUser.from_json(value)
    except (KeyError, TypeError, ValueError):
        return None


def _optional_str(value: Any) -> str | None:
    # Terra writes the literal "null" for an absent reference_id in redirects; treat it as absent.
    if value is None or value == "null":
        return None
    return str(value)[:TEXT_LENGTH]


def _scope_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(scope).strip() for scope in value if str(scope).strip()]
    if isinstance(value, str):
        return [scope.strip() for scope in value.split(",") if scope.strip()]
    return []


def _stated_scopes(user: Any) -> list[str] | None:
    """`user.scopes` as a list, an empty one included (every scope withdrawn); None when absent or null."""
    if not isinstance(user, dict) or user.get("scopes") is None:
        return None
    return _scope_list(user["scopes"])


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_NESTING:
        return level
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level)
    return level
