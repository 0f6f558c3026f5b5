"""Terra's data items read into the few fields an app needs to show them, keyed as Terra says to
(terra-best-practices, "Data"):

- `daily`: one record per connection and day, the day being the date part of `metadata.start_time`
  as written, before any time-zone conversion (the user's own calendar day);
- `activity` and `sleep`: one record per `metadata.summary_id` (unique per Terra user, not globally).
  A sleep's summary_id may be null: its start time, as written, stands in for it.

Each event is a cumulative superset of what came before for the same key, so the newest copy, by
`X-Terra-Ordering-Timestamp`, replaces the stored one (the host decides how; see services/data_events).
An item that lacks its key cannot be stored and is reported, never guessed at.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from terra_integration.events import TerraEvent
from terra_integration.models import SUMMARY_ID_LENGTH

STORED_TYPES = ("daily", "activity", "sleep")  # the data events whose items `read_items` reads
LARGEST_COUNT = 2**31 - 1  # an `integer` column (steps, seconds, activity type)


class UnreadableItem(ValueError):
    """A data item without what it is keyed on (or with a key too long to store)."""


@dataclass(frozen=True)
class DailyItem:
    day: date
    steps: int | None
    distance_meters: float | None
    calories: float | None


@dataclass(frozen=True)
class ActivityItem:
    summary_id: str
    start_time: datetime | None
    end_time: datetime | None
    activity_type: int | None  # Terra's ActivityType; 0 is a real value, not "none"


@dataclass(frozen=True)
class SleepItem:
    summary_id: str
    start_time: datetime | None
    end_time: datetime | None
    asleep_seconds: int | None


Item = DailyItem | ActivityItem | SleepItem


@dataclass(frozen=True)
class ReadItems:
    items: list[Item]
    problems: list[str]  # one line per item that could not be read, saying why


def read_items(event: TerraEvent) -> ReadItems:
    """The items of a `daily`, `activity` or `sleep` event; an empty result for any other type."""
    reader = _READERS.get(event.type)
    if reader is None or event.data is None:
        return ReadItems([], [])
    if not isinstance(event.data, list):
        return ReadItems([], [f"{event.type} event: data is not an array"])
    items, problems = [], []
    for number, raw in enumerate(event.data, 1):
        try:
            if not isinstance(raw, dict) or not isinstance(raw.get("metadata"), dict):
                raise UnreadableItem("no metadata object")
            items.append(reader(raw))
        except UnreadableItem as problem:
            problems.append(f"{event.type} item {number}: {problem}")
    return ReadItems(items, problems)


def _daily(item: dict) -> DailyItem:
    start = item["metadata"].get("start_time")
    try:
        day = date.fromisoformat(start[:10]) if isinstance(start, str) else None
    except ValueError:
        day = None
    if day is None:
        raise UnreadableItem("metadata.start_time is not an ISO date-time")
    distance = _object(item, "distance_data")
    return DailyItem(
        day=day,
        steps=_count(distance.get("steps")),
        distance_meters=_amount(distance.get("distance_meters")),
        calories=_amount(_object(item, "calories_data").get("total_burned_calories")),
    )


def _activity(item: dict) -> ActivityItem:
    metadata = item["metadata"]
    return ActivityItem(
        summary_id=_summary_id(metadata.get("summary_id")),
        start_time=_moment(metadata.get("start_time")),
        end_time=_moment(metadata.get("end_time")),
        activity_type=_count(metadata.get("type")),
    )


def _sleep(item: dict) -> SleepItem:
    metadata = item["metadata"]
    summary_id = metadata.get("summary_id")
    if summary_id is None and isinstance(metadata.get("start_time"), str):
        summary_id = "start:" + metadata["start_time"]
    asleep = _object(_object(item, "sleep_durations_data"), "asleep")
    return SleepItem(
        summary_id=_summary_id(summary_id),
        start_time=_moment(metadata.get("start_time")),
        end_time=_moment(metadata.get("end_time")),
        asleep_seconds=_count(asleep.get("duration_asleep_state_seconds")),
    )


_READERS: dict[str, Callable[[dict], Item]] = {"daily": _daily, "activity": _activity, "sleep": _sleep}


def _summary_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise UnreadableItem("no metadata.summary_id")
    if len(value) > SUMMARY_ID_LENGTH:
        raise UnreadableItem(f"metadata.summary_id is longer than {SUMMARY_ID_LENGTH} characters")
    return value


def _object(parent: dict, name: str) -> dict:
    value = parent.get(name)
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    """A whole, non-negative number that fits an `integer` column; None for anything else. A bool is
    not a number here (JSON `true` is not 1 step), and 0 stays 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if 0 <= value <= LARGEST_COUNT else None


def _amount(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _moment(value: Any) -> datetime | None:
    """Naive UTC, like every timestamp the app stores; a time without an offset is the user's local
    time (Terra's schema) and is kept as written."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
