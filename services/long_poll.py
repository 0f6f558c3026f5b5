"""Long-polling a connect attempt's status: the per-caller poll count, the waiter limit and the wait.

The status endpoint (blueprints/api.py) parses the request and answers; how long and how many polls
may wait, and how a wait sees news, is decided here.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, current_app

from extensions import db
from models.time import utcnow
from services import attempt_states, attempts
from services.request_windows import RequestWindows

MAX_WAIT_SECONDS = 25


def init_app(app: Flask) -> None:
    app.extensions["status_waiters"] = threading.BoundedSemaphore(app.config["STATUS_MAX_WAITERS"])
    app.extensions["status_windows"] = RequestWindows()


def count_poll(user_id: int, attempt_id: str, app: Flask | None = None) -> int | None:
    """Count one status poll: None while within STATUS_RATE_LIMIT, else whole seconds to wait.
    Per caller and attempt, not per address: many phones share one carrier NAT address."""
    app = app or current_app
    return app.extensions["status_windows"].hit(f"{user_id}:{attempt_id}", app.config["STATUS_RATE_LIMIT"])


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
    """Whether the attempt changed (in any process) or time alone changed it, within `wait` seconds.
    Asleep until the worker's change feed says the attempt may have changed, or the moment time
    would change it (services/attempt_states.py); without a feed, it re-reads every
    FALLBACK_CHECK_SECONDS."""
    deadline = time.monotonic() + wait
    states = attempt_states.states()
    with states.watching(attempt_id, seen_version) as woken:
        while True:
            # End the transaction before sleeping: the connection goes back to the pool (a sleeping
            # long-poll must not hold one), and the next read sees other processes' commits.
            db.session.rollback()
            state = attempts.poll_state(attempt_id)
            if state is None or state.version != seen_version or attempts.change_due(state):
                return True
            sleep = deadline - time.monotonic()
            if sleep <= 0:
                return False
            due = attempts.change_due_at(state)
            if due is not None:
                sleep = min(sleep, (due - utcnow()).total_seconds())
            if not states.live:
                sleep = min(sleep, attempt_states.FALLBACK_CHECK_SECONDS)
            woken.wait(max(sleep, 0))
            woken.clear()
