"""How each Terra event, in every order, changes connections and connect attempts."""

import itertools
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from extensions import db
from models import Connection, WebhookEvent
from models.connect_attempt import AttemptHint
from models.time import utcnow
from services import attempts
from terra_integration.inbox import apply_recorded
from tests.helpers import auth_event, create_attempt, create_user, deliver, outcome_of, terra_user


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


@pytest.fixture
def send(client, ctx):
    secret = ctx.config["TERRA_SIGNING_SECRET"]

    def send(payload, trace_id="auto", ordering=None, **signing):
        """Deliver and apply the event (with `ordering` as its X-Terra-Ordering-Timestamp; `signing`
        for `helpers.signed`); returns the outcome kept on its inbox row."""
        headers = {} if ordering is None else {"X-Terra-Ordering-Timestamp": str(ordering)}
        response = deliver(client, payload, secret=secret, trace_id=trace_id, headers=headers, **signing)
        assert response.status_code == 200, response.get_data(as_text=True)
        db.session.expire_all()
        return outcome_of(ctx, response.json["trace_id"])

    return send


@pytest.fixture
def user(ctx):
    return create_user()


def connections():
    return db.session.scalars(select(Connection).order_by(Connection.id)).all()


def reauth_event(user, old, new):
    return {
        "type": "user_reauth",
        "status": "warning",
        "message": "User has reauthenticated",
        "version": "2022-03-16",
        "old_user": old,
        "new_user": new,
    }


def test_auth_connects_the_attempt_named_by_widget_session_id(send, user):
    older = create_attempt(user)
    target = create_attempt(user, session_id="sess-42")
    send(auth_event(user, terra_user(user, "tu-1"), session_id="sess-42"))
    db.session.refresh(target)
    db.session.refresh(older)
    assert target.status == "connected" and target.connection.terra_user_id == "tu-1"
    assert target.version == 2
    assert older.status == "pending"


def test_auth_without_a_known_session_id_connects_but_ends_no_attempt(send, user):
    create_attempt(user)
    newest = create_attempt(user)
    send(auth_event(user, terra_user(user, "tu-2"), session_id="not-a-session-of-ours"))
    db.session.refresh(newest)
    assert newest.status == "pending" and newest.version == 1
    assert [(row.terra_user_id, row.status) for row in connections()] == [("tu-2", "active")]


def test_auth_cancelled_with_an_unknown_flow_id_ends_no_attempt(send, user):
    attempt = create_attempt(user, session_id="widget-session")
    result = send(
        {
            "type": "auth_cancelled",
            "status": "error",
            "flow_id": "some-other-flow",
            "reason": "access_denied",
            "reference_id": user.reference_id,
        }
    )
    assert result == "applied"
    db.session.refresh(attempt)
    assert (attempt.status, attempt.version) == ("pending", 1)


def test_an_event_naming_two_attempts_ends_neither(send, user):
    first, second = create_attempt(user, session_id="s-a"), create_attempt(user, session_id="s-b")
    send(
        {
            "type": "auth",
            "status": "error",
            "reason": "access_denied",
            "reference_id": user.reference_id,
            "widget_session_id": "s-a",
            "flow_id": "s-b",
            "user": terra_user(user, "tu-gone"),
        }
    )
    db.session.refresh(first)
    db.session.refresh(second)
    assert (first.status, second.status) == ("pending", "pending")


def test_auth_cancelled_fails_the_attempt_with_its_reason(send, user):
    attempt = create_attempt(user, session_id="flow-1")
    send(
        {
            "type": "auth_cancelled",
            "status": "error",
            "flow_id": "flow-1",
            "reason": "access_denied",
            "reference_id": user.reference_id,
        }
    )
    db.session.refresh(attempt)
    assert (attempt.status, attempt.error, attempt.terminal) == ("failed", "access_denied", True)
    assert connections() == []


def test_legacy_auth_error_shape_fails_the_attempt(send, user):
    attempt = create_attempt(user, session_id="sess-legacy")
    send(
        {
            "type": "auth",
            "status": "error",
            "message": "User failed to authenticate and has been deleted",
            "reason": "auth_cancelled",
            "reference_id": user.reference_id,
            "widget_session_id": "sess-legacy",
            "user": terra_user(user, "tu-deleted"),
        }
    )
    db.session.refresh(attempt)
    assert (attempt.status, attempt.error) == ("failed", "auth_cancelled")
    assert connections() == []


def test_terminal_states_are_sticky_but_cancelled_can_still_connect(send, user):
    failed = create_attempt(user, session_id="s-failed", status="failed", error="access_denied")
    cancelled = create_attempt(user, session_id="s-cancelled", status="cancelled")
    send(auth_event(user, terra_user(user, "tu-a"), session_id="s-failed"))
    send(auth_event(user, terra_user(user, "tu-b"), session_id="s-cancelled"))
    db.session.refresh(failed)
    db.session.refresh(cancelled)
    assert failed.status == "failed"
    assert cancelled.status == "connected"


def test_late_failure_does_not_undo_a_connection(send, user):
    attempt = create_attempt(user, session_id="s-1")
    send(auth_event(user, terra_user(user, "tu-1"), session_id="s-1"))
    send(
        {
            "type": "auth_cancelled",
            "status": "error",
            "flow_id": "s-1",
            "reason": "auth_cancelled",
            "reference_id": user.reference_id,
        }
    )
    db.session.refresh(attempt)
    assert attempt.status == "connected"


@pytest.mark.parametrize("order", ["reauth_first", "auth_first"])
def test_user_reauth_in_either_order_leaves_one_connection_with_the_new_id(send, user, order):
    send(auth_event(user, terra_user(user, "old-id")))
    original_row = connections()[0].id
    attempt = create_attempt(user, session_id="s-reauth")
    old, new = terra_user(user, "old-id"), terra_user(user, "new-id", scopes="ACTIVITY_EXPORT,SLEEP_EXPORT")
    events = [reauth_event(user, {**old, "active": False}, new), auth_event(user, new, session_id="s-reauth")]
    for event in events if order == "reauth_first" else reversed(events):
        send(event)
    rows = connections()
    assert [(row.id, row.terra_user_id, row.status) for row in rows] == [(original_row, "new-id", "active")]
    assert rows[0].scope_list == ["ACTIVITY_EXPORT", "SLEEP_EXPORT"]
    db.session.refresh(attempt)
    assert attempt.status == "connected" and attempt.connection_id == original_row


def test_user_reauth_without_old_user_creates_the_new_connection(send, user):
    send(reauth_event(user, None, terra_user(user, "fresh-id")))
    assert [row.terra_user_id for row in connections()] == ["fresh-id"]


@pytest.mark.parametrize(
    "event_type, status", [("deauth", "revoked"), ("access_revoked", "revoked"), ("connection_error", "degraded")]
)
def test_status_events(send, user, event_type, status):
    send(auth_event(user, terra_user(user, "tu-1")))
    send({"type": event_type, "status": "warning", "user": {**terra_user(user, "tu-1"), "active": False}})
    [row] = connections()
    assert (row.status, row.status_reason) == (status, event_type)


@pytest.mark.parametrize("auth_first", [True, False])
def test_a_late_auth_does_not_undo_a_connection_error(send, user, auth_first):
    # Every authentication makes a new Terra user id: an auth for a known id is late or replayed.
    events = [
        auth_event(user, terra_user(user, "tu-1")),
        {"type": "connection_error", "status": "warning", "user": terra_user(user, "tu-1")},
    ]
    for event in events if auth_first else reversed(events):
        send(event)
    assert [row.status for row in connections()] == ["degraded"]


def test_reauth_after_a_deauth_of_the_new_id_keeps_it_revoked(send, user):
    send(auth_event(user, terra_user(user, "old-id")))
    send({"type": "deauth", "status": "success", "user": terra_user(user, "new-id")})
    send(reauth_event(user, terra_user(user, "old-id"), terra_user(user, "new-id")))
    assert [(row.terra_user_id, row.status, row.status_reason) for row in connections()] == [
        ("new-id", "revoked", "deauth")
    ]


@pytest.mark.parametrize("order", ["reauth_first", "auth_first"])
def test_a_relink_by_another_app_user_revokes_the_old_owners_connection(send, ctx, order):
    ada, bob = create_user("ada@example.com"), create_user("bob@example.com")
    send(auth_event(ada, terra_user(ada, "ada-terra-id")))
    ada_row = connections()[0].id
    bob_attempt = create_attempt(bob, session_id="bob-session")
    # Terra deleted Ada's Terra user and made a new one under Bob's reference_id.
    old, new = terra_user(ada, "ada-terra-id"), terra_user(bob, "bob-terra-id")
    events = [reauth_event(bob, {**old, "active": False}, new), auth_event(bob, new, session_id="bob-session")]
    for event in events if order == "reauth_first" else reversed(events):
        send(event)
    rows = {row.user_id: row for row in connections()}
    assert (rows[ada.id].id, rows[ada.id].terra_user_id, rows[ada.id].status, rows[ada.id].status_reason) == (
        ada_row,
        "ada-terra-id",
        "revoked",
        "relinked_elsewhere",
    )
    assert (rows[bob.id].terra_user_id, rows[bob.id].status) == ("bob-terra-id", "active")
    db.session.refresh(bob_attempt)
    assert bob_attempt.status == "connected" and bob_attempt.connection_id == rows[bob.id].id


def test_a_relink_applied_before_the_old_owners_auth_still_ends_the_old_owners_connection(send, ctx):
    """Ada's `auth` arrives after Bob's `user_reauth` that re-linked her provider account: her
    connection is created ended (relinked_elsewhere), and her late `auth` does not bring it back."""
    ada, bob = create_user("ada@example.com"), create_user("bob@example.com")
    old, new = terra_user(ada, "ada-terra-id"), terra_user(bob, "bob-terra-id")
    send(reauth_event(bob, {**old, "active": False}, new))
    send(auth_event(bob, new))
    assert send(auth_event(ada, old)) == "ignored"
    rows = {row.user_id: (row.terra_user_id, row.status, row.status_reason) for row in connections()}
    assert rows == {
        ada.id: ("ada-terra-id", "revoked", "relinked_elsewhere"),
        bob.id: ("bob-terra-id", "active", None),
    }


def test_deauth_before_auth_leaves_the_connection_revoked(send, user):
    attempt = create_attempt(user, session_id="s-1")
    send({"type": "deauth", "status": "success", "user": terra_user(user, "tu-1")})
    send(auth_event(user, terra_user(user, "tu-1"), session_id="s-1"))
    [row] = connections()
    assert row.status == "revoked"
    db.session.refresh(attempt)
    assert attempt.status == "pending"


def permission_change(user, scopes, added="", removed="", terra_id="tu-1") -> dict:
    return {
        "type": "permission_change",
        "status": "warning",
        "message": "User permissions have been modified",
        "scopes_added": added,
        "scopes_removed": removed,
        "user": {**terra_user(user, terra_id), "scopes": scopes},
    }


def test_permission_change_without_the_whole_set_applies_added_and_removed_scopes(send, user):
    send(auth_event(user, terra_user(user, "tu-1", scopes="ACTIVITY_EXPORT,HEALTH_EXPORT")))
    send(permission_change(user, None, added="BODY_EXPORT", removed="HEALTH_EXPORT"))
    assert connections()[0].scope_list == ["ACTIVITY_EXPORT", "BODY_EXPORT"]


def test_permission_change_stores_the_whole_set_the_event_states(send, user):
    """Seen: the deltas applied one by one had drifted to a set the last event did not state."""
    send(auth_event(user, terra_user(user, "tu-1", scopes="ACTIVITY_EXPORT,WORKOUT_IMPORT,BODY_EXPORT")))
    send(permission_change(user, "ACTIVITY_EXPORT,HEALTH_EXPORT", added="HEALTH_EXPORT", removed="BODY_EXPORT"))
    assert connections()[0].scope_list == ["ACTIVITY_EXPORT", "HEALTH_EXPORT"]


def test_a_lost_permission_change_leaves_no_drift(send, user):
    send(auth_event(user, terra_user(user, "tu-1", scopes="ACTIVITY_EXPORT,HEALTH_EXPORT")), ordering=1_000)
    # Lost: the change at 2_000 that added BODY_EXPORT. The next one states the set after both.
    send(permission_change(user, "ACTIVITY_EXPORT,BODY_EXPORT", removed="HEALTH_EXPORT"), ordering=3_000)
    assert connections()[0].scope_list == ["ACTIVITY_EXPORT", "BODY_EXPORT"]


def test_reordered_permission_changes_keep_the_newest_set(send, user):
    send(auth_event(user, terra_user(user, "tu-1", scopes="ACTIVITY_EXPORT")), ordering=1_000)
    send(permission_change(user, "ACTIVITY_EXPORT,HEALTH_EXPORT", added="HEALTH_EXPORT"), ordering=3_000)
    older = permission_change(user, "ACTIVITY_EXPORT,BODY_EXPORT,HEALTH_EXPORT", added="BODY_EXPORT")
    assert send(older, ordering=2_000) == "applied"
    [row] = connections()
    assert (row.scope_list, row.scopes_ordering_timestamp) == (["ACTIVITY_EXPORT", "HEALTH_EXPORT"], 3_000)


def test_a_replayed_permission_change_does_not_undo_a_newer_one(send, user):
    send(auth_event(user, terra_user(user, "tu-1", scopes="ACTIVITY_EXPORT")), ordering=1_000)
    added = permission_change(user, "ACTIVITY_EXPORT,BODY_EXPORT", added="BODY_EXPORT")
    send(added, ordering=2_000)
    send(permission_change(user, "ACTIVITY_EXPORT", removed="BODY_EXPORT"), ordering=3_000)
    # Resent later (another delivery, signed anew), with the ordering timestamp it was emitted at.
    assert send(added, ordering=2_000, timestamp=int(time.time()) + 1) == "applied"
    assert connections()[0].scope_list == ["ACTIVITY_EXPORT"]


def test_a_late_auth_does_not_overwrite_the_scopes_of_a_newer_permission_change(send, user):
    send(permission_change(user, "ACTIVITY_EXPORT", removed="HEALTH_EXPORT"), ordering=2_000)
    send(auth_event(user, terra_user(user, "tu-1", scopes="ACTIVITY_EXPORT,HEALTH_EXPORT")), ordering=1_000)
    [row] = connections()
    assert (row.status, row.scope_list) == ("active", ["ACTIVITY_EXPORT"])


def test_a_set_without_ordering_timestamp_never_replaces_one_with_it(send, user):
    send(auth_event(user, terra_user(user, "tu-1", scopes="ACTIVITY_EXPORT")), ordering=1_000)
    send(permission_change(user, "ACTIVITY_EXPORT,BODY_EXPORT", added="BODY_EXPORT"))
    assert connections()[0].scope_list == ["ACTIVITY_EXPORT"]
    send(permission_change(user, "", removed="ACTIVITY_EXPORT"), ordering=2_000)  # every scope withdrawn
    assert connections()[0].scope_list == []


@pytest.mark.parametrize("reference_id", ["forged.reference", "null", None])
def test_events_for_foreign_reference_ids_change_nothing(send, user, reference_id):
    attempt = create_attempt(user)
    foreign = {**terra_user(user, "tu-x"), "reference_id": reference_id}
    result = send({"type": "auth", "status": "success", "reference_id": reference_id, "user": foreign})
    assert result == "ignored"
    assert connections() == []
    db.session.refresh(attempt)
    assert attempt.status == "pending"


def test_reference_id_of_another_app_with_valid_format_is_ignored(send, user, ctx):
    # Signed with another key: looks right, is not ours.
    from itsdangerous import URLSafeSerializer

    other = URLSafeSerializer("another-apps-key", salt="terra-reference-id-v1").dumps("abc")
    result = send(
        {
            "type": "auth",
            "status": "success",
            "reference_id": other,
            "user": {**terra_user(user, "tu-y"), "reference_id": other},
        }
    )
    assert result == "ignored"
    assert connections() == []


def test_replaying_events_converges_to_the_same_state(send, user):
    create_attempt(user, session_id="s-1")
    send(auth_event(user, terra_user(user, "old"), session_id="s-1"))
    send(reauth_event(user, terra_user(user, "old"), terra_user(user, "new")))
    send(auth_event(user, terra_user(user, "new")))
    send({"type": "connection_error", "status": "warning", "user": terra_user(user, "new")})
    before = [(row.id, row.terra_user_id, row.status) for row in connections()]
    events = db.session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)).all()
    assert [(row.event_type, row.outcome) for row in events] == [
        ("auth", "applied"),
        ("user_reauth", "applied"),
        ("auth", "applied"),
        ("connection_error", "applied"),
    ]
    # Again, in the same order: what is already so is ignored, and nothing changes.
    assert [(row.event_type, apply_recorded(row)) for row in events] == [
        ("auth", "ignored"),  # the old Terra user, replaced since
        ("user_reauth", "ignored"),
        ("auth", "applied"),
        ("connection_error", "applied"),
    ]
    db.session.expire_all()
    assert [(row.id, row.terra_user_id, row.status) for row in connections()] == before


def test_every_order_of_auth_reauth_and_data_ends_in_one_active_connection(app, client, ctx):
    secret = ctx.config["TERRA_SIGNING_SECRET"]
    for index, order in enumerate(itertools.permutations(range(3))):
        user = create_user(f"user{index}@example.com")
        old, new = terra_user(user, f"old-{index}"), terra_user(user, f"new-{index}")
        deliver(client, auth_event(user, old), secret=secret)
        events = [reauth_event(user, old, new), auth_event(user, new), {"type": "daily", "user": new, "data": []}]
        for position in order:
            assert deliver(client, events[position], secret=secret).status_code == 200
        db.session.expire_all()
        rows = db.session.scalars(select(Connection).where(Connection.user_id == user.id)).all()
        assert [(row.terra_user_id, row.status) for row in rows] == [(f"new-{index}", "active")], order


def test_unknown_attempt_state_is_untouched_by_data_events(send, user):
    attempt = create_attempt(user)
    send({"type": "sleep", "user": terra_user(user, str(uuid.uuid4())), "data": []})
    db.session.refresh(attempt)
    assert attempt.status == "pending" and attempt.version == 1


def test_updated_at_never_goes_backwards(user):
    """A change whose time was taken before another change reached the row (another worker, a clock
    stepped back) must not move `updated_at` back: it keeps the later time, and `version` still grows."""
    later = (utcnow() + timedelta(minutes=5)).replace(microsecond=0)
    attempt = create_attempt(user, updated_at=later)
    version = attempt.version

    attempts.record_hint(attempt, AttemptHint.RETURNED_FAILURE)  # an ORM change
    db.session.commit()
    assert (attempt.updated_at, attempt.version) == (later, version + 1)

    assert attempts.mark_failed(attempt, "access_denied")  # a guarded UPDATE
    db.session.commit()
    assert (attempt.updated_at, attempt.status, attempt.version) == (later, "failed", version + 2)

    # With nothing later stored, the change takes the time now.
    fresh = create_attempt(user, updated_at=utcnow() - timedelta(minutes=5))
    before = utcnow()
    attempts.record_hint(fresh, AttemptHint.RETURNED_SUCCESS)
    db.session.commit()
    assert fresh.updated_at >= before
