"""Plausible data items for the console's data events, in Terra's shapes (contract §6.4, Terra's
OpenAPI examples), for one day (`sample_items`) or a span of history (`history`).

Dates are relative to today so that receivers keying daily data on the date see fresh rows. A
console data button's activity and sleep get a new `summary_id`, so each send is a new workout or
night rather than an update. History is a user's own: one user's day is made the same every time
(seeded by the user and the day), so asking twice for a span sends the same workouts and nights
again, as a provider would, and a receiver keyed on Terra's natural keys stores nothing twice.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

DATA_KINDS = ("daily", "activity", "sleep", "body")
ACTIVITY_TYPES = {"Morning Run": 8, "Evening Ride": 1, "Walk": 7, "Strength": 80}


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _summary_id(rng: random.Random) -> str:
    # From the generator, so a seeded day always has the same workout and night.
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _midnight(days_ago: int = 0) -> datetime:
    return datetime.combine(datetime.now(UTC).date() - timedelta(days=days_ago), time(), tzinfo=UTC)


def sample_items(kind: str) -> list[dict]:
    """One item of `kind` for today (for `sleep`, the night that ended this morning)."""
    return [_BUILDERS[kind](_midnight(), random.Random())]


def history(seed: str, first_day: date, end_day: date) -> dict[str, list[dict]]:
    """The days from `first_day` up to `end_day` (not included) of the user `seed` names, the way a provider's backfill
    looks: daily totals and a night's sleep for every day, a workout on most days, a weigh-in now and
    then. Oldest first, per kind; every kind of a day is drawn from that day's own generator, so a
    request for one kind sends what a request for all of them would."""
    items: dict[str, list[dict]] = {kind: [] for kind in DATA_KINDS}
    for offset in range((end_day - first_day).days):
        day = datetime.combine(first_day + timedelta(days=offset), time(), tzinfo=UTC)
        rng = random.Random(f"{seed}:{day.date().isoformat()}")
        items["daily"].append(_daily(day, rng))
        items["sleep"].append(_sleep(day, rng))
        if rng.random() < 0.6:
            items["activity"].append(_activity(day, rng))
        if rng.random() < 0.3:
            items["body"].append(_body(day, rng))
    return items


def _activity(day: datetime, rng: random.Random) -> dict:
    name = rng.choice(list(ACTIVITY_TYPES))
    start = day + timedelta(hours=rng.choice((7, 12, 18)), minutes=rng.randint(0, 50))
    minutes = rng.randint(25, 75)
    steps = minutes * rng.randint(140, 170) if ACTIVITY_TYPES[name] in (7, 8) else 0
    return {
        "metadata": {
            "name": name,
            "summary_id": _summary_id(rng),
            "start_time": _stamp(start),
            "end_time": _stamp(start + timedelta(minutes=minutes)),
            "type": ACTIVITY_TYPES[name],
            "upload_type": 1,
        },
        "distance_data": {"summary": {"distance_meters": round(steps * 1.04, 1), "steps": steps}},
        "calories_data": {"total_burned_calories": minutes * 10.5, "net_activity_calories": minutes * 8.8},
        "heart_rate_data": {"summary": {"avg_hr_bpm": rng.randint(115, 155), "max_hr_bpm": rng.randint(150, 185)}},
    }


def _daily(day: datetime, rng: random.Random) -> dict:
    # Weekends are lazier; a day still in progress has fewer steps so far.
    steps = rng.randint(3000, 9000) if day.weekday() >= 5 else rng.randint(6000, 15000)
    if day.date() == datetime.now(UTC).date():
        steps = int(steps * min(1.0, datetime.now(UTC).hour / 20 + 0.1))
    return {
        "metadata": {"start_time": _stamp(day), "end_time": _stamp(day + timedelta(days=1)), "upload_type": 0},
        "distance_data": {"steps": steps, "distance_meters": round(steps * 0.79, 1)},
        "calories_data": {"total_burned_calories": round(1600 + steps * 0.06 + rng.randint(0, 300), 1)},
        "active_durations_data": {"activity_seconds": steps // 2},
    }


def _sleep(day: datetime, rng: random.Random) -> dict:
    """The night that ended on the morning of `day`."""
    start = day - timedelta(minutes=rng.randint(20, 90))
    asleep = rng.randint(6 * 3600, 8 * 3600)
    awake = rng.randint(600, 2400)
    return {
        "metadata": {
            "summary_id": _summary_id(rng),
            "start_time": _stamp(start),
            "end_time": _stamp(start + timedelta(seconds=asleep + awake)),
            "is_nap": False,
            "upload_type": 1,
        },
        "sleep_durations_data": {
            "asleep": {
                "duration_asleep_state_seconds": asleep,
                "duration_deep_sleep_state_seconds": asleep // 5,
                "duration_REM_sleep_state_seconds": asleep // 5,
            },
            "awake": {"duration_awake_state_seconds": awake},
            "sleep_efficiency": round(100 * asleep / (asleep + awake), 1),
        },
    }


def _body(day: datetime, rng: random.Random) -> dict:
    measured = day + timedelta(hours=7, minutes=rng.randint(30, 59))
    weight = round(rng.uniform(71.5, 73.5), 1)
    return {
        "metadata": {"start_time": _stamp(day), "end_time": _stamp(day + timedelta(days=1))},
        "measurements_data": {
            "measurements": [
                {
                    "measurement_time": _stamp(measured),
                    "weight_kg": weight,
                    "bodyfat_percentage": round(rng.uniform(17, 19), 1),
                    "BMI": round(weight / 1.79**2, 1),
                }
            ]
        },
        "heart_data": {"heart_rate_data": {"summary": {"resting_hr_bpm": rng.randint(50, 58)}}},
    }


def athlete_profile(account: str) -> dict:
    """The `athlete` event's one object (not a `data` array), made up from the provider account name."""
    return {
        "first_name": account.split("-")[0].capitalize() or "Sam",
        "last_name": "Example",
        "sex": "female",
        "date_of_birth": "1990-05-17",
        "city": "Springfield",
        "country": "United States",
    }


_BUILDERS: dict[str, Callable[[datetime, random.Random], dict]] = {
    "activity": _activity,
    "daily": _daily,
    "sleep": _sleep,
    "body": _body,
}
