"""Fixed-window request counting in the worker's memory, for a limit checked on every status poll.

Sign-in limits go through Flask-Limiter, whose storage can be Redis so every instance shares one
count. For polls that machinery cost as much as the rest of a 304 answer, and its memory storage
starts a timer thread while busy (docs/performance.md). A poll limit only has to stop a runaway
client, so a count per worker is enough: with N workers a client gets at most N times the budget.
Kept rather than `limits`' own in-memory strategies (checked with the pinned limits 5.8): their
MemoryStorage still starts a `threading.Timer` from inside each hit once the last one has fired (every
10 ms under load), reads the wall clock, and the moving window keeps one entry per request.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import limits

from models.time import clock

SWEEP_SECONDS = 60.0


@lru_cache(maxsize=32)
def parse_limit(text: str) -> limits.RateLimitItem:
    """'120 per minute' and the rest of Flask-Limiter's notation."""
    return limits.parse(text)


class RequestWindows:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window end, requests so far)
        self._lock = threading.Lock()
        self._next_sweep = clock.monotonic() + SWEEP_SECONDS

    def hit(self, key: str, limit_text: str) -> int | None:
        """Count a request under `key`: None while within the limit, else whole seconds to wait."""
        limit = parse_limit(limit_text)
        now = clock.monotonic()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            ends, count = self._windows.get(key, (0.0, 0))
            if ends <= now:
                ends, count = now + limit.get_expiry(), 0
            count += 1
            self._windows[key] = (ends, count)
        return None if count <= limit.amount else max(1, math.ceil(ends - now))

    def _sweep(self, now: float) -> None:
        # Finished windows are dropped lazily, so memory follows the active pollers, with no thread.
        self._windows = {key: window for key, window in self._windows.items() if window[0] > now}
        self._next_sweep = now + SWEEP_SECONDS
