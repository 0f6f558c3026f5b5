"""Long-polling a connect attempt's status: the per-caller poll count, the waiter limit and the wait.

The status endpoint (blueprints/api.py) parses the request and answers; how long and how many polls
may wait, and how a wait sees news, is decided here.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, current_app

from extensions import db
from services import attempts
from services.request_windows import RequestWindows

MAX_WAIT_SECONDS = 25
WAIT_CHECK_INTERVAL = 0.05  # how often a long-poll looks for a new version (cheap primary-key read)


def init_app(app: Flask) -> None:
    app.extensions["status_waiters"] = threading.BoundedSemaphore(app.config["STATUS_MAX_WAITERS"])
    app.extensions["status_windows"] = RequestWindows()


def count_poll(user_id: int, attempt_id: str) -> int | None:
    """Count one status poll: None while within STATUS_RATE_LIMIT, else whole seconds to wait.
    Per caller and attempt, not per address: many phones share one carrier NAT address."""
    key = f"{user_id}:{attempt_id}"
    return current_app.extensions["status_windows"].hit(key, current_app.config["STATUS_RATE_LIMIT"])


def wait_for_change(attempt_id: str, seen_version: int, wait: float) -> bool:
    """Whether the attempt changed within `wait` seconds, if this worker has a waiter slot free; else
    False at once (the client then backs off, docs/mobile.md), so sleeping long-polls never hold
    every thread a webhook needs."""
    slots = current_app.extensions["status_waiters"]
    if not slots.acquire(blocking=False):
        return False
    try:
        return _watch(attempt_id, seen_version, wait)
    finally:
        slots.release()


def _watch(attempt_id: str, seen_version: int, wait: float) -> bool:
    """Whether the attempt changed (in any process: this reads the database) or time alone changed
    it, within `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        # End the transaction before sleeping: the connection goes back to the pool (a sleeping
        # long-poll must not hold one), and the next read sees other processes' commits.
        db.session.rollback()
        if time.monotonic() >= deadline:
            return False
        time.sleep(WAIT_CHECK_INTERVAL)
        state = attempts.poll_state(attempt_id)
        if state is None or state.version != seen_version or attempts.change_due(state):
            return True
