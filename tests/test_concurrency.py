"""Concurrent deliveries over real HTTP: the unique constraints decide, and nobody gets a 500.

Runs on SQLite and on PostgreSQL (TEST_DATABASE_URL); the last test drives several gunicorn worker
processes sharing the database.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from extensions import db
from models import ConnectAttempt, Connection, DailyData, WebhookEvent
from services import attempts
from tests.helpers import auth_event, create_attempt, create_user, post_event, settle_inbox, terra_user

DELIVERIES = 16


def at_once(calls) -> list:
    """Run the calls together: each waits at a barrier so they really overlap."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def reauth(old: dict, new: dict) -> dict:
    return {"type": "user_reauth", "status": "warning", "message": "reauth", "old_user": old, "new_user": new}


def make_user(app, email: str = "ada@example.com") -> SimpleNamespace:
    """A user made in the database; the test keeps just what events need, outside any session."""
    with app.app_context():
        user = create_user(email)
        return SimpleNamespace(id=user.id, reference_id=user.reference_id)


def rows(app, model, *where):
    with app.app_context():
        return db.session.scalars(select(model).where(*where)).all()


def test_the_same_event_delivered_many_times_at_once_is_applied_once(live_server):
    app, secret = live_server.app, live_server.app.config["TERRA_SIGNING_SECRET"]
    user = make_user(app, "ada@example.com")
    event = auth_event(user, terra_user(user, "tu-same"))
    statuses = at_once([lambda: post_event(live_server.url, secret, event, "trace-same")] * DELIVERIES)
    assert statuses == [200] * DELIVERIES
    settle_inbox(app)
    assert len(rows(app, WebhookEvent)) == 1
    assert [row.terra_user_id for row in rows(app, Connection)] == ["tu-same"]


def test_one_event_under_different_trace_ids_still_gives_one_connection(live_server):
    # Terra retries keep the trace id, but a replay tool might not, and may sign each copy anew (so
    # none is a replay of another): the connection is unique anyway.
    app, secret = live_server.app, live_server.app.config["TERRA_SIGNING_SECRET"]
    user = make_user(app, "ada@example.com")
    event = auth_event(user, terra_user(user, "tu-many-traces"))
    now = int(time.time())
    statuses = at_once(
        [
            lambda seconds=seconds: post_event(live_server.url, secret, event, signed_at=now - seconds)
            for seconds in range(DELIVERIES)
        ]
    )
    assert statuses == [200] * DELIVERIES
    settle_inbox(app)
    assert len(rows(app, WebhookEvent)) == DELIVERIES
    assert {row.outcome for row in rows(app, WebhookEvent)} == {"applied"}
    assert len(rows(app, Connection)) == 1


def test_one_signed_delivery_replayed_under_fresh_trace_ids_at_once_is_recorded_once(live_server):
    app, secret = live_server.app, live_server.app.config["TERRA_SIGNING_SECRET"]
    user = make_user(app, "ada@example.com")
    event, now = auth_event(user, terra_user(user, "tu-replayed")), int(time.time())
    statuses = at_once([lambda: post_event(live_server.url, secret, event, signed_at=now)] * DELIVERIES)
    assert statuses == [200] * DELIVERIES
    settle_inbox(app)
    assert [row.outcome for row in rows(app, WebhookEvent)] == ["applied"]
    assert [row.terra_user_id for row in rows(app, Connection)] == ["tu-replayed"]


def test_copies_of_one_day_delivered_at_once_leave_the_newest_by_ordering_timestamp(live_server):
    app, secret = live_server.app, live_server.app.config["TERRA_SIGNING_SECRET"]
    user = make_user(app, "ada@example.com")
    terra = terra_user(user, "tu-daily")
    assert post_event(live_server.url, secret, auth_event(user, terra)) == 200
    emitted = 1_700_000_000_000

    def daily_copy(copy: int) -> dict:
        item = {"metadata": {"start_time": "2026-07-01T00:00:00+01:00"}, "distance_data": {"steps": 1000 + copy}}
        return {"type": "daily", "user": terra, "data": [item]}

    statuses = at_once(
        [
            lambda copy=copy: post_event(live_server.url, secret, daily_copy(copy), ordering_timestamp=emitted + copy)
            for copy in range(DELIVERIES)
        ]
    )
    assert statuses == [200] * DELIVERIES
    settle_inbox(app)
    [day] = rows(app, DailyData)
    assert (day.steps, day.ordering_timestamp) == (1000 + DELIVERIES - 1, emitted + DELIVERIES - 1)
    assert {row.outcome for row in rows(app, WebhookEvent)} == {"applied"}


@pytest.mark.parametrize("round_number", range(6))
def test_reauth_racing_auth_never_leaves_two_connections(live_server, round_number):
    app, secret = live_server.app, live_server.app.config["TERRA_SIGNING_SECRET"]
    user = make_user(app, f"user{round_number}@example.com")
    old, new = terra_user(user, f"old-{round_number}"), terra_user(user, f"new-{round_number}")
    assert post_event(live_server.url, secret, auth_event(user, old)) == 200
    events = [
        reauth({**old, "active": False}, new),
        auth_event(user, new),
        {"type": "daily", "user": new, "data": []},
        {
            "type": "permission_change",
            "status": "warning",
            "scopes_added": "SLEEP_EXPORT",
            "scopes_removed": "",
            "user": new,
        },
    ]
    now = int(time.time())
    # Each event twice, signed a second apart: two deliveries each, not one and its replay.
    statuses = at_once(
        [
            lambda event=event, seconds=seconds: post_event(live_server.url, secret, event, signed_at=now - seconds)
            for event in events
            for seconds in (0, 1)
        ]
    )
    assert set(statuses) == {200}
    settle_inbox(app)
    connections = rows(app, Connection, Connection.user_id == user.id)
    assert [(row.terra_user_id, row.status) for row in connections] == [(f"new-{round_number}", "active")]
    assert {row.outcome for row in rows(app, WebhookEvent)} <= {"applied", "recorded", "ignored"}


def test_a_webhook_and_a_userinfo_check_racing_settle_the_attempt_once(app):
    with app.app_context():
        user = create_user()
        attempt = create_attempt(user)
        attempt_id = attempt.id

    def outcome(kind: str) -> tuple[str, bool]:
        with app.app_context():
            row = db.session.get(ConnectAttempt, attempt_id)
            if kind == "connected":
                connection = Connection(user_id=row.user_id, terra_user_id=str(uuid.uuid4()), provider="OURA")
                db.session.add(connection)
                db.session.flush()
                won = attempts.mark_connected(row, connection)
            else:
                won = attempts.mark_failed(row, "access_denied")
            db.session.commit()
            return kind, won

    results = at_once([lambda: outcome("connected"), lambda: outcome("failed")] * 4)
    [winner] = [kind for kind, won in results if won]
    with app.app_context():
        row = db.session.get(ConnectAttempt, attempt_id)
        assert (row.status, row.version) == (winner, 2)


def test_several_worker_processes_on_one_database(gunicorn_server, app):
    """gunicorn with two worker processes: concurrent duplicate deliveries split across them."""
    secret = app.config["TERRA_SIGNING_SECRET"]
    user = make_user(app)
    old, new = terra_user(user, "old-proc"), terra_user(user, "new-proc")
    assert post_event(gunicorn_server, secret, auth_event(user, old)) == 200
    events = [reauth(old, new), auth_event(user, new)]
    calls = [
        lambda event=event, trace=f"trace-{index}": post_event(gunicorn_server, secret, event, trace)
        for index, event in enumerate(events)
    ]
    statuses = at_once(calls * 6)
    assert set(statuses) == {200}
    settle_inbox(app)  # the workers' applier threads, each claiming its own rows
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 3
        assert db.session.scalars(select(Connection.terra_user_id)).all() == ["new-proc"]
