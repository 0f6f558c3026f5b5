"""Each worker's copy of its connect attempts' poll state (the POLL_STATE columns), kept current by the
database's change feed, so that a status poll with nothing new is answered without a query and a
long-poll sleeps until its attempt changes instead of re-reading it.

How changes reach a worker, from any writer in any process:
- PostgreSQL: every UPDATE or DELETE of a `connect_attempts` row sends NOTIFY on CHANNEL with the
  row's id (a trigger, migration 0010, so no writer can forget it). One thread per worker LISTENs,
  drops that attempt's state and wakes its long-polls. The lag is the notification's (milliseconds).
- SQLite (the development default; gunicorn still runs two worker processes): there is no channel
  between processes, so one thread per worker reads `PRAGMA data_version`, which changes whenever
  another connection commits, every SQLITE_CHECK_SECONDS. On a change it re-reads every state it
  keeps (one query per READ_CHUNK) and wakes each long-poll whose attempt now has another version
  than the one that long-poll holds (`replace`). A poll may so be
  answered from a state up to SQLITE_CHECK_SECONDS old: the answer a poll sent that much earlier got.
  The re-read follows every commit to the database (webhooks too), which suits the development
  default; PostgreSQL is told which attempt changed.

A worker's own writes reach its copy at once, at commit (`noted_change` and the session events
below), so an app reading its own write through the same worker never sees the state before it.

While the feed is not running (not yet started, reconnecting after a lost connection, an in-memory
database) nothing is served from here: every poll reads the database, and a long-poll re-reads every
FALLBACK_CHECK_SECONDS. On reconnecting, everything is dropped, since notifications may have been
missed. Time alone changes a pending attempt too (expiry, an abandoned browser, the userInfo check):
that is never cached, `attempts.change_due` asks it of the state on every poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from cachetools import LRUCache
from flask import Flask, current_app, has_app_context
from sqlalchemy import bindparam, event, select
from sqlalchemy.engine import Engine, Row
from sqlalchemy.orm import Session

from extensions import db
from models import ConnectAttempt

CHANNEL = "connect_attempt_changed"  # the trigger of migration 0010 notifies it
SQLITE_CHECK_SECONDS = 0.01
FALLBACK_CHECK_SECONDS = 0.05
RECONNECT_SECONDS = 1.0
MAX_STATES = 10_000  # per worker, far above its active pollers; the least recently used goes first
READ_CHUNK = 500  # ids per re-read query
FEED_THREAD = "attempt-states"

log = logging.getLogger(__name__)

# What a poll must know to answer "not modified": the version, the owner, and whatever lets time
# alone change a pending attempt (`attempts.change_due`); and what a pending attempt's answer shows,
# so that it can be answered from here too. Plain Core on the table, built once.
_columns = ConnectAttempt.__table__.c
POLL_COLUMNS = (
    _columns.id,
    _columns.user_id,
    _columns.version,
    _columns.status,
    _columns.expires_at,
    _columns.browser_closed_at,
    _columns.hint,
    _columns.hinted_at,
    _columns.redirect_terra_user_id,
    _columns.resource,
    _columns.requested_provider,
    _columns.error,
    _columns.connection_id,
    _columns.created_at,
    _columns.updated_at,
)
POLL_STATE = select(*POLL_COLUMNS).where(_columns.id == bindparam("attempt_id"))
POLL_STATES = select(*POLL_COLUMNS).where(_columns.id.in_(bindparam("attempt_ids", expanding=True)))


class AttemptStates:
    """attempt id -> POLL_STATE row, and the long-polls waiting on each attempt, for one process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._rows: LRUCache[str, Row] = LRUCache(MAX_STATES)
        self._waiting: dict[str, dict[threading.Event, int]] = {}  # attempt id -> each waiter's version
        self._lock = threading.Lock()
        self._generation = 0  # moves on every change seen: a read that began before must not be kept
        self.live = False

    # -- readers ----------------------------------------------------------------------------------

    def get(self, attempt_id: str) -> Row | None:
        with self._lock:
            return self._rows.get(attempt_id) if self.live else None

    def generation(self) -> int:
        """Take this before reading a state from the database, and hand it to `put`."""
        return self._generation

    def put(self, row: Row, generation: int) -> None:
        """Keep a state read from the database, unless a change was seen since the read began."""
        with self._lock:
            if self.live and generation == self._generation:
                self._rows[row.id] = row

    @contextmanager
    def watching(self, attempt_id: str, version: int) -> Iterator[threading.Event]:
        """An event set whenever `attempt_id` may have changed from `version` (the one the waiter
        holds), for as long as the block runs. Register before reading the state, so that no change
        falls between the read and the wait."""
        woken = threading.Event()
        with self._lock:
            self._waiting.setdefault(attempt_id, {})[woken] = version
        try:
            yield woken
        finally:
            with self._lock:
                events = self._waiting[attempt_id]
                events.pop(woken, None)
                if not events:
                    del self._waiting[attempt_id]

    # -- the change feed ----------------------------------------------------------------------------

    def changed(self, attempt_ids: Iterable[str]) -> None:
        """These attempts changed (PostgreSQL's notifications): forget them, wake their long-polls."""
        attempt_ids = list(attempt_ids)
        if not attempt_ids:
            return
        with self._lock:
            self._generation += 1
            for attempt_id in attempt_ids:
                self._rows.pop(attempt_id, None)
                for woken in self._waiting.get(attempt_id, ()):
                    woken.set()

    def waited_on(self) -> list[str]:
        with self._lock:
            return list(self._waiting)

    def known(self) -> list[str]:
        """The attempts whose state this worker keeps or whose long-polls it holds."""
        with self._lock:
            return list({*self._rows.keys(), *self._waiting})

    def replace(self, fresh: dict[str, Row], generation: int) -> bool:
        """Something changed, but what is not known (SQLite): keep `fresh` instead (the states of
        `known()` attempts, read after the change was seen, with `generation` taken before that
        read), and wake every long-poll whose attempt is gone or has another version than the one
        that long-poll holds. Not whether the kept copy changed: a poll's own read may have put the
        new version there first, while another long-poll still sleeps on the old one.

        False, keeping nothing, when another change was seen during the read (this worker's own
        commit, `changed`): `fresh` may predate it, so the feed must read again."""
        with self._lock:
            if generation != self._generation:
                return False
            self._generation += 1
            self._rows = LRUCache(MAX_STATES)
            self._rows.update(fresh)
            for attempt_id, events in self._waiting.items():
                after = fresh.get(attempt_id)
                for woken, version in events.items():
                    if after is None or after.version != version:
                        woken.set()
            return True

    def set_live(self, live: bool) -> None:
        """The feed started (or restarted: notifications may have been missed) or stopped: forget
        everything and wake every long-poll to read the database."""
        with self._lock:
            self._generation += 1
            self._rows.clear()
            self.live = live
            for events in self._waiting.values():
                for woken in events:
                    woken.set()


# -- this worker's own writes ------------------------------------------------------------------------

_CHANGED_IN_TRANSACTION = "connect_attempts_changed"


def noted_change(session: Session, attempt_id: str) -> None:
    """A statement outside the unit of work (a Core UPDATE) changed this attempt: forget its state at
    commit. ORM changes to ConnectAttempt objects are noted by themselves."""
    session.info.setdefault(_CHANGED_IN_TRANSACTION, set()).add(attempt_id)


@event.listens_for(Session, "before_flush")
def _note_flushed_changes(session: Session, _context, _instances) -> None:
    for instance in (*session.dirty, *session.deleted):
        if isinstance(instance, ConnectAttempt):
            noted_change(session, instance.id)


@event.listens_for(Session, "after_commit")
def _forget_committed_changes(session: Session) -> None:
    changed = session.info.pop(_CHANGED_IN_TRANSACTION, None)
    if changed and has_app_context():
        states = current_app.extensions.get("attempt_states")
        if states is not None:
            states.changed(changed)


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back_changes(session: Session) -> None:
    session.info.pop(_CHANGED_IN_TRANSACTION, None)


# -- one per process and database, and its feed -------------------------------------------------------

_per_database: dict[tuple[int, str], AttemptStates] = {}
_per_database_lock = threading.Lock()


def states(app: Flask | None = None) -> AttemptStates:
    """This process's AttemptStates for the app's database, its change feed started on first use
    (in the worker, after gunicorn forked it). Apps on the same database share one (the tests)."""
    app = app or current_app._get_current_object()
    found = app.extensions.get("attempt_states")
    if found is not None and found.pid == os.getpid():
        return found
    with app.app_context():
        engine = db.engine
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    with _per_database_lock:
        found = _per_database.get(key)
        if found is None:
            found = _per_database[key] = AttemptStates()
            _start_feed(found, engine)
    app.extensions["attempt_states"] = found
    return found


def _start_feed(states: AttemptStates, engine: Engine) -> None:
    dialect, database = engine.dialect.name, engine.url.database
    if dialect == "postgresql":
        target = _listen
    elif dialect == "sqlite" and database and database != ":memory:" and not database.startswith("file::memory:"):
        target = _watch_data_version
    else:
        return  # no feed: every poll reads the database
    threading.Thread(target=_run_feed, args=(target, states, engine), name=FEED_THREAD, daemon=True).start()


def _run_feed(feed, states: AttemptStates, engine: Engine) -> None:
    while True:
        try:
            feed(states, engine)
        except Exception:  # any failure: serve from the database until reconnected
            log.warning("attempt change feed lost; polls read the database until it is back", exc_info=True)
        states.set_live(False)
        time.sleep(RECONNECT_SECONDS)


def _listen(states: AttemptStates, engine: Engine) -> None:
    connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    connection.detach()  # ours for as long as the worker lives, not a pool slot
    try:
        connection.exec_driver_sql(f"LISTEN {CHANNEL}")
        listener = connection.connection.dbapi_connection
        states.set_live(True)
        while True:  # each notification as it arrives
            for note in listener.notifies(timeout=1.0):
                states.changed((note.payload,))
    finally:
        connection.close()


def _watch_data_version(states: AttemptStates, engine: Engine) -> None:
    connection = engine.connect()
    connection.detach()
    try:
        raw = connection.connection.dbapi_connection
        seen = _data_version(raw)
        states.set_live(True)
        while True:
            time.sleep(SQLITE_CHECK_SECONDS)
            version = _data_version(raw)
            if version == seen:
                continue
            seen = version
            generation = states.generation()
            known = states.known()
            fresh: dict[str, Row] = {}
            for start in range(0, len(known), READ_CHUNK):
                rows = connection.execute(POLL_STATES, {"attempt_ids": known[start : start + READ_CHUNK]})
                fresh.update((row.id, row) for row in rows)
            connection.rollback()
            if not states.replace(fresh, generation):
                seen = None  # read again at the next check, whatever data_version says
    finally:
        connection.close()


def _data_version(raw) -> int:
    """SQLite's count of commits by other connections, as this (autocommit) connection sees it."""
    cursor = raw.execute("PRAGMA data_version")
    try:
        return cursor.fetchone()[0]
    finally:
        cursor.close()
