"""What each Terra event does to our state. One handler per event kind, dispatched by `apply_event`.

Handlers return (outcome, detail) for the inbox row and leave committing to the caller. Each is
idempotent: applying the same event twice, or events in another order, ends in the same state.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import select

from extensions import db
from models import ConnectionStatus, User
from models.time import utcnow
from models.webhook_event import EventOutcome
from services import attempts, connections
from terra_integration.reference_ids import is_authentic
from terra_integration.events import AUTH_FAILURE, AUTH_SUCCESS, DATA_TYPES, INFORMATIONAL_TYPES, USERLESS_TYPES, TerraEvent

Outcome = tuple[str, str | None]


def apply_event(event: TerraEvent) -> Outcome:
    if event.type in DATA_TYPES or event.type in INFORMATIONAL_TYPES:
        return _touch_connection(event)
    handler = HANDLERS.get(event.kind)
    if handler is None:
        # Terra adds event types over time: kept for the record, never an error (forward compatible).
        return EventOutcome.RECORDED, f"unknown event type {event.type!r}"
    if event.terra_user_id is None and event.kind != AUTH_FAILURE:  # only a failed auth has no user
        return _without_user(event)
    owner = _owner(event.reference_id)
    if owner is None:
        return EventOutcome.IGNORED, "reference_id is not one of ours"
    stale_id = event.old_user.user_id if event.type == "user_reauth" and event.old_user else event.terra_user_id
    if stale_id and connections.was_replaced(stale_id):
        # A re-authentication already replaced this Terra user: the event is late or replayed.
        return EventOutcome.IGNORED, f"Terra user {stale_id} was replaced by a re-authentication"
    return handler(owner, event)


def _owner(reference_id: str | None) -> User | None:
    # The signature check rejects forged ids before the database is asked.
    if not is_authentic(reference_id):
        return None
    return db.session.scalars(select(User).where(User.reference_id == reference_id)).first()


def _auth_success(owner: User, event: TerraEvent) -> Outcome:
    connection = connections.upsert_connection(owner, event.user)
    db.session.flush()
    if connection.status == ConnectionStatus.REVOKED:
        return EventOutcome.IGNORED, "auth for a Terra user that was already revoked"
    attempt = attempts.find_attempt_for_event(owner, event.session_ids + (event.user.user_id,))
    if attempt is not None and attempts.mark_connected(attempt, connection):
        return EventOutcome.APPLIED, f"attempt {attempt.id} connected"
    return EventOutcome.APPLIED, "connection active"


def _auth_failure(owner: User, event: TerraEvent) -> Outcome:
    attempt = attempts.find_attempt_for_event(owner, event.session_ids)
    reason = event.reason or "auth_failed"
    if attempt is not None and attempts.mark_failed(attempt, reason):
        return EventOutcome.APPLIED, f"attempt {attempt.id} failed: {reason}"
    return EventOutcome.APPLIED, f"no pending attempt; reason {reason}"


def _user_reauth(owner: User, event: TerraEvent) -> Outcome:
    old_owner = _owner(event.old_user.reference_id) if event.old_user else None
    connection = connections.replace_terra_user(owner, event.old_user, event.new_user, old_owner)
    return EventOutcome.APPLIED, f"connection {connection.terra_user_id} replaces the old Terra user"


def _status_change(status: str) -> Callable[[User, TerraEvent], Outcome]:
    def handle(owner: User, event: TerraEvent) -> Outcome:
        connection = connections.set_status(owner, event.user, status, reason=event.type)
        return EventOutcome.APPLIED, f"connection {connection.status}"

    return handle


def _permission_change(owner: User, event: TerraEvent) -> Outcome:
    connection = connections.change_scopes(owner, event.user, event.scopes_added, event.scopes_removed)
    return EventOutcome.APPLIED, f"scopes now {connection.scopes}"[:255]


def _without_user(event: TerraEvent) -> Outcome:
    """A verified event that should name a Terra user and does not: kept as failed, for a replay."""
    return EventOutcome.FAILED, f"{event.type} event without a user"


def _touch_connection(event: TerraEvent) -> Outcome:
    """Data and informational events are recorded; they only note when we last heard of the user."""
    if event.terra_user_id is None and event.type not in USERLESS_TYPES:
        return _without_user(event)
    if event.terra_user_id:
        connection = connections.by_terra_user_id(event.terra_user_id)
        if connection is not None:
            connection.last_event_at = utcnow()
    return EventOutcome.RECORDED, None


HANDLERS: dict[str, Callable[[User, TerraEvent], Outcome]] = {
    AUTH_SUCCESS: _auth_success,
    AUTH_FAILURE: _auth_failure,
    "user_reauth": _user_reauth,
    "deauth": _status_change(ConnectionStatus.REVOKED),
    "access_revoked": _status_change(ConnectionStatus.REVOKED),
    "connection_error": _status_change(ConnectionStatus.DEGRADED),
    "permission_change": _permission_change,
}
