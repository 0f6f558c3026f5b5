"""Data events stored by Terra's rules, each one a real signed webhook through POST /webhooks/terra:
natural keys, X-Terra-Ordering-Timestamp, chunks sharing a terra-reference, activity type 0, athlete."""

from __future__ import annotations

from datetime import date, datetime
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from extensions import db
from models import Activity, Connection, DailyData, SleepSession, User, WebhookEvent
from terra_integration.inbox import apply_recorded
from tests.helpers import auth_event, create_user, deliver, delivered_outcome, terra_user

TERRA_ID = "tu-data"


@pytest.fixture
def secret(app):
    return app.config["TERRA_SIGNING_SECRET"]


@pytest.fixture
def owner(app, client, secret):
    """A user with one active connection (Terra user TERRA_ID), made by a signed `auth` event."""
    with app.app_context():
        user = create_user()
        owner = SimpleNamespace(id=user.id, reference_id=user.reference_id)
    assert delivered_outcome(client, auth_event(owner, terra_user(owner, TERRA_ID)), secret=secret) == "applied"
    return owner


def data_event(owner, kind: str, items: list, terra_id: str = TERRA_ID) -> dict:
    return {"type": kind, "user": terra_user(owner, terra_id), "data": items, "version": "2022-03-16"}


def daily(day: str, steps: int, calories: float = 2100.5) -> dict:
    return {
        "metadata": {
            "start_time": f"{day}T00:00:00.000000+01:00",
            "end_time": f"{day}T23:59:59+01:00",
            "upload_type": 0,
        },
        "distance_data": {"steps": steps, "distance_meters": steps * 0.8},
        "calories_data": {"total_burned_calories": calories},
    }


def activity(summary_id: str, activity_type: int = 8) -> dict:
    return {
        "metadata": {
            "name": "Morning Run",
            "summary_id": summary_id,
            "start_time": "2026-07-01T07:04:11.000000+01:00",
            "end_time": "2026-07-01T07:52:48.000000+01:00",
            "type": activity_type,
            "upload_type": 1,
        },
        "distance_data": {"summary": {"distance_meters": 8250.4, "steps": 7902}},
    }


def send(client, secret, event: dict, ordering: int | None = None, **headers) -> str:
    """Deliver `event` and apply it; the outcome its inbox row ended with."""
    if ordering is not None:
        headers["X-Terra-Ordering-Timestamp"] = str(ordering)
    return delivered_outcome(client, event, secret=secret, headers=headers)


def stored(app, model) -> list:
    with app.app_context():
        rows = db.session.scalars(select(model).order_by(model.id)).all()
        db.session.expunge_all()
        return rows


def test_daily_data_is_one_row_per_connection_and_day_taken_before_time_zone_conversion(app, client, secret, owner):
    outcome = send(client, secret, data_event(owner, "daily", [daily("2026-07-01", 11894), daily("2026-07-02", 40)]))
    assert outcome == "applied"
    [first, second] = stored(app, DailyData)
    # 00:00 at +01:00 is the evening before in UTC; the user's day is the one they lived.
    assert (first.day, first.steps, first.distance_meters, first.calories) == (
        date(2026, 7, 1),
        11894,
        11894 * 0.8,
        2100.5,
    )
    assert (second.day, second.steps) == (date(2026, 7, 2), 40)
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "daily")).one()
        assert row.detail == "stored 2 daily item(s)"


@pytest.mark.parametrize(
    "first, second, kept_steps, outcome",
    [
        pytest.param(1_000, 2_000, 9_000, "applied", id="newer overwrites"),
        pytest.param(2_000, 2_000, 9_000, "applied", id="equal overwrites"),
        pytest.param(2_000, 1_000, 5_000, "applied", id="older does not overwrite"),
    ],
)
def test_a_day_is_overwritten_only_by_a_newer_or_equal_ordering_timestamp(
    app, client, secret, owner, first, second, kept_steps, outcome
):
    send(client, secret, data_event(owner, "daily", [daily("2026-07-01", 5_000)]), ordering=1_700_000_000_000 + first)
    later = send(
        client, secret, data_event(owner, "daily", [daily("2026-07-01", 9_000)]), ordering=1_700_000_000_000 + second
    )
    assert later == outcome
    [row] = stored(app, DailyData)
    assert (row.steps, row.ordering_timestamp) == (kept_steps, 1_700_000_000_000 + max(first, second))
    with app.app_context():
        detail = db.session.scalars(select(WebhookEvent.detail).order_by(WebhookEvent.id.desc())).first()
    assert ("older than what is stored" in detail) == (second < first)


def test_an_activity_is_keyed_by_summary_id_and_its_type_0_is_kept(app, client, secret, owner):
    send(client, secret, data_event(owner, "activity", [activity("run-1", activity_type=0)]), ordering=10)
    send(
        client,
        secret,
        data_event(owner, "activity", [activity("run-1", activity_type=0), activity("run-2")]),
        ordering=11,
    )
    rows = stored(app, Activity)
    assert [(row.summary_id, row.activity_type) for row in rows] == [("run-1", 0), ("run-2", 8)]
    assert (rows[0].start_time, rows[0].end_time) == (datetime(2026, 7, 1, 6, 4, 11), datetime(2026, 7, 1, 6, 52, 48))


def test_a_sleep_is_keyed_by_summary_id_or_else_its_start_time(app, client, secret, owner):
    night = {
        "metadata": {
            "start_time": "2026-06-30T23:12:00+01:00",
            "end_time": "2026-07-01T07:02:00+01:00",
            "upload_type": 1,
        },
        "sleep_durations_data": {"asleep": {"duration_asleep_state_seconds": 25200}},
    }
    nap = {**night, "metadata": {**night["metadata"], "summary_id": "nap-1"}}
    for _ in range(2):
        send(client, secret, data_event(owner, "sleep", [night, nap]))
    rows = stored(app, SleepSession)
    assert [(row.summary_id, row.asleep_seconds) for row in rows] == [
        ("start:2026-06-30T23:12:00+01:00", 25200),
        ("nap-1", 25200),
    ]


def test_two_chunks_sharing_one_terra_reference_are_both_kept(app, client, secret, owner):
    reference = "d3f1a9c2-6b1e-4f0a-8f21-9e5b2c7a4d10"
    chunks = [
        data_event(owner, "daily", [daily(f"2026-06-{day:02d}", 1000 * day) for day in range(1, 11)]),
        data_event(owner, "daily", [daily(f"2026-06-{day:02d}", 1000 * day) for day in range(11, 16)]),
    ]
    for number, chunk in enumerate(chunks, 1):
        outcome = delivered_outcome(
            client,
            chunk,
            secret=secret,
            trace_id=f"{reference}:chunk:{number}",
            headers={"terra-reference": reference, "X-Terra-Ordering-Timestamp": "1700000000000"},
        )
        assert outcome == "applied"
    with app.app_context():
        rows = db.session.scalars(select(WebhookEvent).where(WebhookEvent.terra_reference == reference)).all()
    assert len(rows) == 2
    assert [row.day.day for row in stored(app, DailyData)] == list(range(1, 16))


def test_the_athlete_event_carries_an_object_and_only_marks_data_received(app, client, secret, owner):
    athlete = {
        "type": "athlete",
        "user": terra_user(owner, TERRA_ID),
        "athlete": {"first_name": "John", "last_name": "Smith", "sex": "male", "date_of_birth": "1991-04-12"},
        "version": "2022-03-16",
    }
    assert send(client, secret, athlete) == "recorded"
    with app.app_context():
        connection = db.session.scalars(select(Connection)).one()
        assert connection.last_data_at is not None
    # Personal details the app has no use for are not copied out of the inbox.
    assert stored(app, DailyData) == [] and stored(app, Activity) == [] and stored(app, SleepSession) == []


def test_an_empty_data_array_completes_without_writes(app, client, secret, owner):
    assert send(client, secret, data_event(owner, "daily", [])) == "recorded"
    assert stored(app, DailyData) == []
    assert [connection.last_data_at for connection in stored(app, Connection)] == [None]


def test_unreadable_items_fail_the_event_with_the_reason_and_the_rest_is_stored(app, client, secret, owner):
    items = [daily("2026-07-01", 100), {"metadata": {"start_time": "yesterday"}}, "not an object"]
    assert send(client, secret, data_event(owner, "daily", items)) == "failed"
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "daily")).one()
        assert row.detail == (
            "stored 1 daily item(s); daily item 2: metadata.start_time is not an ISO date-time; "
            "daily item 3: no metadata object"
        )
    assert [row.steps for row in stored(app, DailyData)] == [100]


def test_data_before_its_auth_is_kept_as_failed_and_a_replay_stores_it(app, client, secret, owner):
    early = send(client, secret, data_event(owner, "daily", [daily("2026-07-01", 321)], terra_id="tu-later"))
    assert early == "failed"
    assert delivered_outcome(client, auth_event(owner, terra_user(owner, "tu-later")), secret=secret) == "applied"
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "daily")).one()
        assert "no connection for Terra user tu-later yet" in row.detail
        assert apply_recorded(row) == "applied"
    assert [row.steps for row in stored(app, DailyData)] == [321]


def test_data_for_someone_elses_reference_id_is_ignored(app, client, secret):
    stranger = SimpleNamespace(reference_id="not-signed-by-us")
    outcome = send(client, secret, data_event(stranger, "daily", [daily("2026-07-01", 1)], terra_id="tu-stranger"))
    assert outcome == "ignored"


def test_a_malformed_ordering_timestamp_is_400_and_nothing_is_stored(app, client, secret, owner):
    response = deliver(
        client,
        data_event(owner, "daily", [daily("2026-07-01", 1)]),
        secret=secret,
        headers={"X-Terra-Ordering-Timestamp": "soon"},
    )
    assert (response.status_code, response.json["error"]["code"]) == (400, "malformed_event")
    assert stored(app, DailyData) == []


def test_after_a_reauth_merge_the_data_of_both_ids_is_on_one_connection_the_newer_copy_kept(app, client, secret, owner):
    # The new id's auth and data arrive before the user_reauth that says it replaces TERRA_ID.
    send(client, secret, data_event(owner, "daily", [daily("2026-07-01", 100), daily("2026-07-02", 200)]), ordering=5)
    deliver(client, auth_event(owner, terra_user(owner, "tu-new")), secret=secret)
    send(client, secret, data_event(owner, "daily", [daily("2026-07-02", 250)], terra_id="tu-new"), ordering=6)
    reauth = {
        "type": "user_reauth",
        "status": "warning",
        "message": "User has reauthenticated and old ID has been deleted",
        "new_user": terra_user(owner, "tu-new"),
        "old_user": terra_user(owner, TERRA_ID),
    }
    assert delivered_outcome(client, reauth, secret=secret) == "applied"
    with app.app_context():
        [connection] = db.session.scalars(select(Connection)).all()
        assert connection.terra_user_id == "tu-new"
        days = db.session.execute(select(DailyData.connection_id, DailyData.day, DailyData.steps)).all()
        assert sorted(days) == [(connection.id, date(2026, 7, 1), 100), (connection.id, date(2026, 7, 2), 250)]
        assert db.session.get(User, owner.id) is not None


@pytest.mark.parametrize(
    "kind, data, reason",
    [
        pytest.param("daily", {"metadata": {}}, "daily event: data is not an array", id="data is an object"),
        pytest.param(
            "activity",
            [{"metadata": {"summary_id": "s" * 129, "type": 0}}],
            "activity item 1: metadata.summary_id is longer than 128 characters",
            id="summary_id longer than its column",
        ),
        pytest.param(
            "sleep", [{"metadata": {"summary_id": None}}], "sleep item 1: no metadata.summary_id", id="no key"
        ),
    ],
)
def test_data_that_cannot_be_keyed_is_kept_as_failed_with_the_reason(app, client, secret, owner, kind, data, reason):
    event = {"type": kind, "user": terra_user(owner, TERRA_ID), "data": data}
    assert send(client, secret, event) == "failed"
    with app.app_context():
        assert db.session.scalars(select(WebhookEvent.detail).where(WebhookEvent.event_type == kind)).one() == reason
    assert stored(app, Activity) == [] and stored(app, SleepSession) == [] and stored(app, DailyData) == []
