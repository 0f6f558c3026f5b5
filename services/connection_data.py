"""What a user sees of one connection's data: when data last arrived, the last 14 days of steps, the
latest workout and sleep (the dashboard and `GET /api/v1/connections/<id>/summary` show the same),
and the timeline of webhooks Terra sent for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from flask import current_app
from sqlalchemy import select

from extensions import db
from models import Activity, Connection, ReplacedTerraUser, SleepSession, User, WebhookEvent
from models.time import isoformat, utcnow
from services import connections, data_events, data_requests

CHART_DAYS = 14
TIMELINE_LENGTH = 20


@dataclass(frozen=True)
class DaySteps:
    day: date
    steps: int | None  # None: no daily data for that day


def recent_steps(connection: Connection) -> list[DaySteps]:
    """The last CHART_DAYS days, oldest first, each with its steps. They end today: in UTC, or a day
    later when the user's own data is already dated tomorrow (days are the user's calendar days, and
    east of UTC the day starts early)."""
    today = utcnow().date()
    last = max(today, data_events.latest_day(connection.id, up_to=today + timedelta(days=1)) or today)
    first = last - timedelta(days=CHART_DAYS - 1)
    steps = data_events.daily_steps(connection.id, first, last)
    return [DaySteps(day, steps.get(day)) for day in (first + timedelta(days=n) for n in range(CHART_DAYS))]


def _latest(model, connection: Connection):
    return db.session.scalars(
        select(model)
        .where(model.connection_id == connection.id)
        .order_by(model.start_time.desc().nulls_last(), model.id.desc())
        .limit(1)
    ).first()


def summary(connection: Connection) -> dict:
    """The API's view of the connection's data (docs/openapi.json: ConnectionDataSummary)."""
    activity, sleep = _latest(Activity, connection), _latest(SleepSession, connection)
    history_request = data_requests.latest(connection)
    return {
        "connection_id": connection.id,
        "last_data_at": isoformat(connection.last_data_at),
        "daily_steps": [{"date": day.day.isoformat(), "steps": day.steps} for day in recent_steps(connection)],
        "latest_activity": activity
        and {
            "summary_id": activity.summary_id,
            "start_time": isoformat(activity.start_time),
            "end_time": isoformat(activity.end_time),
            "type": activity.activity_type,
        },
        "latest_sleep": sleep
        and {
            "summary_id": sleep.summary_id,
            "start_time": isoformat(sleep.start_time),
            "end_time": isoformat(sleep.end_time),
            "asleep_seconds": sleep.asleep_seconds,
        },
        "latest_data_request": history_request and history_request.to_dict(),
    }


def _terra_user_ids(connection: Connection) -> list[str]:
    """The connection's Terra user id, and those a re-authentication replaced (their events are its history)."""
    replaced = db.session.scalars(
        select(ReplacedTerraUser.old_terra_user_id).where(ReplacedTerraUser.connection_id == connection.id)
    )
    return [connection.terra_user_id, *replaced]


def timeline(connection: Connection, limit: int = TIMELINE_LENGTH) -> list[WebhookEvent]:
    """The newest webhooks received for the connection, newest first."""
    return list(
        db.session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.terra_user_id.in_(_terra_user_ids(connection)))
            .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
            .limit(limit)
        )
    )


def timeline_event(connection: Connection, event_id: int) -> WebhookEvent | None:
    """Webhook event `event_id` if it is one of the connection's, else None."""
    event = db.session.get(WebhookEvent, event_id) if event_id <= connections.MAX_ROW_ID else None
    if event is None or event.terra_user_id not in _terra_user_ids(connection):
        return None
    return event


def is_operator(user: User | None) -> bool:
    """Operators (OPERATOR_EMAILS) may replay failed webhook events from the timeline."""
    return user is not None and user.email.lower() in current_app.config["OPERATOR_EMAILS"]
