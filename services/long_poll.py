"""Long-polling a connect attempt's status: the per-caller poll count, the per-caller and per-worker
limits on waiting polls, and the wait.

The status endpoint (blueprints/api.py) parses the request and answers; how long and how many polls
may wait, and how a wait sees news, is decided here.

How many long-polls one caller holds at once (STATUS_MAX_WAITERS_PER_TOKEN, per bearer token, and
STATUS_MAX_WAITERS_PER_USER, per user, 4 each by default) is counted where the app's processes share
a count, so that one client cannot fill the proxy's connections (issue 19: 766 polls from one user):
- RATELIMIT_STORAGE_URI names Redis (production, docs/deploy.md): one sorted set of slots per token
  and per user, taken and checked in one script, so the cap is exact across every worker of every
  instance. A slot is given back when its poll ends, whatever ends it (an answer, the time running
  out, an error; a client that went away is noticed when the wait ends); a slot a killed worker
  never gave back lapses after SLOT_LEASE_SECONDS. If Redis cannot be asked, the poll is answered at
  once without waiting (as when the worker has no waiter free) and a warning is logged.
- Otherwise (memory://, the development default, or a storage other than Redis): each worker
  process counts alone, so with WEB_CONCURRENCY workers a caller holds at most that many times the
  cap. Not the database: on SQLite every write would make each worker's change feed re-read all
  its attempts (services/attempt_states.py), twice per long-poll.
Past the cap the poll is answered at once with 429 and Retry-After (docs/openapi.json).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app
from limits.storage import RedisStorage, Storage

from extensions import db, limiter
from models.time import utcnow
from services import attempt_states, attempts
from services.request_windows import RequestWindows

MAX_WAIT_SECONDS = 25
SLOT_LEASE_SECONDS = 60  # a slot nobody gave back (its worker was killed) lapses after this long
SLOT_KEY_PREFIX = "terra-connect:long-polls"

log = logging.getLogger(__name__)


class TooManyWaits(Exception):
    """The caller already holds as many long-polls as its token or user may."""


def init_app(app: Flask) -> None:
    app.extensions["status_waiters"] = threading.BoundedSemaphore(app.config["STATUS_MAX_WAITERS"])
    app.extensions["status_windows"] = RequestWindows()
    # The rate limiter's store, bound to this app just before (RATELIMIT_STORAGE_URI): one connection
    # to it per process, with the same options.
    app.extensions["status_wait_slots"] = _slots_in(limiter.storage)


def _slots_in(storage: Storage) -> ProcessSlots | RedisSlots:
    return RedisSlots(storage) if isinstance(storage, RedisStorage) else ProcessSlots()


class ProcessSlots:
    """Long-poll slots counted in this worker process alone."""

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, caps: dict[str, int], slot: str) -> bool:
        with self._lock:
            if any(self._held[key] >= cap for key, cap in caps.items()):
                return False
            self._held.update(caps.keys())
            return True

    def give_back(self, keys: list[str], slot: str) -> None:
        with self._lock:
            self._held.subtract(keys)
            for key in keys:
                if self._held[key] <= 0:
                    del self._held[key]


class RedisSlots:
    """Long-poll slots in Redis: per key, a sorted set of slot ids scored by when each lapses."""

    # KEYS: the sorted sets; ARGV: the slot id, its lease (ms), then each key's cap. Redis's clock,
    # so instances whose clocks differ agree.
    TAKE = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
for i, key in ipairs(KEYS) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
        return 0
    end
end
for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
    redis.call('PEXPIRE', key, ARGV[2])
end
return 1
"""

    def __init__(self, storage: RedisStorage) -> None:
        self.redis = storage.get_connection()
        self._take = self.redis.register_script(self.TAKE)

    def take(self, caps: dict[str, int], slot: str) -> bool:
        keys = [f"{SLOT_KEY_PREFIX}:{key}" for key in caps]
        return bool(self._take(keys=keys, args=[slot, SLOT_LEASE_SECONDS * 1000, *caps.values()]))

    def give_back(self, keys: list[str], slot: str) -> None:
        pipeline = self.redis.pipeline(transaction=False)
        for key in keys:
            pipeline.zrem(f"{SLOT_KEY_PREFIX}:{key}", slot)
        pipeline.execute()


def caller_keys(token_id: int, user_id: int) -> tuple[str, str]:
    """The slot keys of a token and its user; `{user:N}` keeps both in one Redis Cluster slot."""
    return f"{{user:{user_id}}}:token:{token_id}", f"{{user:{user_id}}}"


@contextmanager
def caller_slot(token_id: int, user_id: int) -> Iterator[bool]:
    """Hold one of the caller's long-poll slots while the block runs. Yields True when one was taken,
    False when the shared store could not be asked (then do not wait); TooManyWaits past the cap."""
    slots = current_app.extensions["status_wait_slots"]
    token_key, user_key = caller_keys(token_id, user_id)
    caps = {
        token_key: current_app.config["STATUS_MAX_WAITERS_PER_TOKEN"],
        user_key: current_app.config["STATUS_MAX_WAITERS_PER_USER"],
    }
    slot = uuid.uuid4().hex
    try:
        taken = slots.take(caps, slot)
    except Exception:  # the store is down or unreachable: serve, but hold nothing
        log.warning("long-poll slots could not be counted; answering without waiting", exc_info=True)
        taken = None
    if taken is None:
        yield False
        return
    if not taken:
        raise TooManyWaits
    try:
        yield True
    finally:
        try:
            slots.give_back(list(caps), slot)
        except Exception:  # it lapses after SLOT_LEASE_SECONDS
            log.warning("a long-poll slot could not be given back; it lapses on its own", exc_info=True)


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
