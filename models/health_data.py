"""The little the app keeps of each connection's data events: enough to show that data arrives (a
steps chart, the latest workout and sleep), not the payloads, which stay in the webhook inbox.

Each table has the natural key Terra names (terra_integration.data) as a unique constraint, so that
storing is one atomic upsert, and the X-Terra-Ordering-Timestamp of the delivery that wrote the row,
so that an older delivery never overwrites a newer one (services/data_events).
"""

from datetime import date, datetime

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from models.time import utcnow
from terra_integration.models import SUMMARY_ID_LENGTH


class _DataColumns:
    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    ordering_timestamp: Mapped[int | None] = mapped_column(BigInteger)  # unix ms; null when Terra sent none
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DailyData(_DataColumns, db.Model):
    """A day's totals, as of the newest `daily` event for that day."""

    __tablename__ = "daily_data"
    __table_args__ = (UniqueConstraint("connection_id", "day"),)

    day: Mapped[date]  # the user's calendar day: the date part of metadata.start_time as written
    steps: Mapped[int | None]
    distance_meters: Mapped[float | None]
    calories: Mapped[float | None]


class _SessionColumns(_DataColumns):
    """A workout or a night: one per summary_id."""

    summary_id: Mapped[str] = mapped_column(String(SUMMARY_ID_LENGTH))
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]


class Activity(_SessionColumns, db.Model):
    __tablename__ = "activities"
    __table_args__ = (UniqueConstraint("connection_id", "summary_id"),)

    activity_type: Mapped[int | None]  # Terra's ActivityType; 0 is a value


class SleepSession(_SessionColumns, db.Model):
    __tablename__ = "sleep_sessions"
    __table_args__ = (UniqueConstraint("connection_id", "summary_id"),)

    asleep_seconds: Mapped[int | None]
