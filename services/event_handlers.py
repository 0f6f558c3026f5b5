"""What each Terra event does to the app's state: the app's side of the webhook inbox
(`terra_integration.host.TerraHost`). One handler per account event kind, dispatched by `ConnectionEvents`.

Handlers return (outcome, detail) for the inbox row and leave committing to the inbox. Each is
idempotent: applying the same event twice, or events in another order, ends in the same state.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from extensions import db
from models import ConnectionStatus, User, WebhookEvent
from models.time import utcnow
from services import attempts, connections, data_events
from terra_integration.events import AUTH_FAILURE, AUTH_SUCCESS, INFORMATIONAL_TYPES, TerraEvent
from terra_integration.host import Outcome
from terra_integration.models import EventOutcome
from terra_integration.reference_ids import owner_of


class ConnectionEvents:
    """Terra's events applied to users, their connections and connect attempts."""

    webhook_event_model = WebhookEvent

    def find_owner(self, reference_id: str) -> User | None:
        return db.session.scalars(select(User).where(User.reference_id == reference_id)).first()

    def apply_account_event(self, owner: User, event: TerraEvent) -> Outcome:
        stale_id = event.old_user.user_id if event.type == "user_reauth" and event.old_user else event.terra_user_id
        if stale_id and connections.was_replaced(stale_id):
            # A re-authentication already replaced this Terra user: the event is late or replayed.
            return EventOutcome.IGNORED, f"Terra user {stale_id} was replaced by a re-authentication"
        return HANDLERS[event.kind](owner, event)

    def apply_data_event(self, event: TerraEvent) -> Outcome:
        """A data event is stored for its connection (services.data_events); an informational one
        (large_request_processing...) is recorded."""
        connection = connections.for_terra_user(event.terra_user_id) if event.terra_user_id else None
        if connection is not None:
            connection.last_event_at = utcnow()
        if event.type in INFORMATIONAL_TYPES or event.terra_user_id is None:
            return EventOutcome.RECORDED, None
        if connection is None:
            if not data_events.carries_items(event):
                return EventOutcome.RECORDED, None  # nothing to keep for it (an empty chunk, a profile)
            if owner_of(event.reference_id) is None:
                return EventOutcome.IGNORED, "reference_id is not one of ours"
            # Its `auth` has not arrived (or applied) yet: kept as failed, `flask webhooks replay --failed`
            # stores it once the connection exists.
            return EventOutcome.FAILED, f"no connection for Terra user {event.terra_user_id} yet"
        return data_events.store(connection, event)


def _auth_success(owner: User, event: TerraEvent) -> Outcome:
    # apply_account_event has ruled out a replaced Terra user: no need to look again.
    connection = connections.activate(owner, event.user, event.ordering_timestamp)
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
    old_owner = owner_of(event.old_user.reference_id) if event.old_user else None
    connection = connections.replace_terra_user(
        owner, event.old_user, event.new_user, old_owner, event.ordering_timestamp
    )
    return EventOutcome.APPLIED, f"connection {connection.terra_user_id} replaces the old Terra user"


def _status_change(status: str) -> Callable[[User, TerraEvent], Outcome]:
    def handle(owner: User, event: TerraEvent) -> Outcome:
        connection = connections.set_status(owner, event.user, status, reason=event.type)
        return EventOutcome.APPLIED, f"connection {connection.status}"

    return handle


def _permission_change(owner: User, event: TerraEvent) -> Outcome:
    connection = connections.change_scopes(
        owner, event.user, event.scopes, event.scopes_added, event.scopes_removed, event.ordering_timestamp
    )
    return EventOutcome.APPLIED, f"scopes now {connection.scopes}"


HANDLERS: dict[str, Callable[[User, TerraEvent], Outcome]] = {
    AUTH_SUCCESS: _auth_success,
    AUTH_FAILURE: _auth_failure,
    "user_reauth": _user_reauth,
    "deauth": _status_change(ConnectionStatus.REVOKED),
    "access_revoked": _status_change(ConnectionStatus.REVOKED),
    "connection_error": _status_change(ConnectionStatus.DEGRADED),
    "permission_change": _permission_change,
}
