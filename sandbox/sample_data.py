"""Small, plausible data items for the console's data events (shapes from contract §6.4).

Dates are relative to today so that receivers keying daily data on the date see fresh rows, and every
activity gets a new `summary_id` so each send is a new workout rather than an update.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, time, timedelta

DATA_KINDS = ("activity", "daily", "sleep")


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def sample_items(kind: str) -> list[dict]:
    today = datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC)
    return [_BUILDERS[kind](today, random.Random())]


def _activity(today: datetime, rng: random.Random) -> dict:
    start = today + timedelta(hours=7, minutes=rng.randint(0, 50))
    minutes = rng.randint(25, 75)
    steps = minutes * rng.randint(140, 170)
    return {
        "metadata": {
            "name": "Morning Run",
            "summary_id": str(uuid.uuid4()),
            "start_time": _stamp(start),
            "end_time": _stamp(start + timedelta(minutes=minutes)),
            "type": 8,
            "upload_type": 1,
        },
        "distance_data": {"summary": {"distance_meters": round(steps * 1.04, 1), "steps": steps}},
        "calories_data": {"total_burned_calories": minutes * 10.5, "net_activity_calories": minutes * 8.8},
        "heart_rate_data": {"summary": {"avg_hr_bpm": rng.randint(135, 155), "max_hr_bpm": rng.randint(165, 185)}},
    }


def _daily(today: datetime, rng: random.Random) -> dict:
    steps = rng.randint(4000, 15000)
    return {
        "metadata": {"start_time": _stamp(today), "end_time": _stamp(today + timedelta(days=1)), "upload_type": 0},
        "distance_data": {"steps": steps, "distance_meters": round(steps * 0.79, 1)},
        "calories_data": {"total_burned_calories": rng.randint(1900, 2900)},
        "active_durations_data": {"activity_seconds": rng.randint(1800, 7200)},
    }


def _sleep(today: datetime, rng: random.Random) -> dict:
    start = today - timedelta(minutes=rng.randint(20, 90))
    asleep = rng.randint(6 * 3600, 8 * 3600)
    awake = rng.randint(600, 2400)
    return {
        "metadata": {
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


_BUILDERS = {"activity": _activity, "daily": _daily, "sleep": _sleep}
