"""The receiver's inserts, committed together (a group commit).

Each request that received a verified delivery hands its inbox row to this process's InboxRecorder
and waits. One thread writes every row waiting at that moment with one INSERT ... ON CONFLICT DO
NOTHING and one commit, then tells each request whether its row was new or a duplicate, and wakes
the applier. Many deliveries arriving together so cost one transaction instead of one each: on
SQLite the database's single write lock is taken once a batch (in turn with the applier's writes,
`write_turns`), and no request thread waits for it; on PostgreSQL one commit (one WAL flush) serves
the batch.

A batch that fails for another reason than a duplicate (one row the database refuses, a lost
connection) is written again row by row, so that only the requests whose rows fail get the error.
The integration's inserts use ON CONFLICT, which SQLite and PostgreSQL have.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy.dialects import postgresql, sqlite

from terra_integration.host import bound
from terra_integration.write_turns import write_turn

MAX_BATCH = 256  # rows per statement: under both databases' limits on bound parameters
WAIT_SECONDS = 30  # a request gives up on its row (a 500, and Terra retries) after this long
INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


@dataclass(eq=False)
class _Waiting:
    values: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    inserted: bool = False
    error: BaseException | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.values["trace_id"], self.values["signed_payload_sha256"]


class InboxRecorder:
    """This process's inbox writer: `record(values)` returns once the row is committed."""

    def __init__(self, app: Flask):
        self.app = app
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._last_arrival = float("-inf")

    def last_arrival(self) -> float:
        """When (time.monotonic) this process last received a delivery to record."""
        return self._last_arrival

    def record(self, values: dict[str, Any]) -> bool:
        """Insert one inbox row (every column given) and commit it, together with whatever other
        rows are waiting; True when it is new, False when its trace id or signed payload is
        already recorded. Raises what writing it raised."""
        self._start()
        self._last_arrival = time.monotonic()
        waiting = _Waiting(values)
        self._queue.put(waiting)
        if not waiting.done.wait(WAIT_SECONDS):
            raise TimeoutError(f"the inbox row was not written within {WAIT_SECONDS} s")
        if waiting.error is not None:
            raise waiting.error
        return waiting.inserted

    def _start(self) -> None:
        with self._lock:
            # Started in the process that records (a thread does not survive gunicorn's fork).
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="terra-inbox-recorder", daemon=True).start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                with self.app.app_context():
                    self._write(batch)
                    inserted = [waiting.values["event_type"] for waiting in batch if waiting.inserted]
                    if inserted:
                        bound().worker.wake(inserted)
            except Exception as error:  # noqa: BLE001 (no app context, say: each request answers 500)
                for waiting in batch:
                    waiting.error = waiting.error or error
            finally:
                for waiting in batch:
                    waiting.done.set()

    def _write(self, batch: list[_Waiting]) -> None:
        session = bound().db.session
        try:
            with write_turn():
                new = _insert_new(session, [waiting.values for waiting in batch])
                session.commit()
        except Exception as error:  # noqa: BLE001 (handed to the requests, or retried one by one)
            session.rollback()
            if len(batch) == 1:
                batch[0].error = error
            else:
                for waiting in batch:
                    self._write([waiting])
            return
        for waiting in batch:  # the first of several rows with the same keys is the one inserted
            if waiting.key in new:
                new.discard(waiting.key)
                waiting.inserted = True


def _insert_new(session, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert the rows whose trace id and signed payload are both new; the keys of those inserted."""
    table = bound().host.webhook_event_model.__table__
    insert = INSERT[session.get_bind().dialect.name]
    statement = insert(table).on_conflict_do_nothing().returning(table.c.trace_id, table.c.signed_payload_sha256)
    return {tuple(row) for row in session.execute(statement, rows)}
