"""The app's one clock, and timestamps stored as naive UTC so SQLite and PostgreSQL compare them the
same way.

The app reads the time of day (`utcnow`) and the time for intervals (`clock.monotonic`) only from
here, so that tests move `clock` forward instead of sleeping (tests/conftest.py, the `clock` fixture).
"""

import time
from datetime import UTC, datetime, timedelta


class Clock:
    """The system's clocks, both shifted by `offset` (zero except in tests)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None) + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset.total_seconds()


clock = Clock()


def utcnow() -> datetime:
    return clock.now()


def isoformat(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
