"""On SQLite, the inbox's writers take turns on a file lock before they write.

SQLite lets one connection write at a time. A connection that finds the database locked polls it
from SQLite's busy handler, sleeping 1, 2, 5, 10 ... 100 ms between looks, and under a steady stream
of writes it can lose the race for seconds: acknowledgements of webhooks waited up to 2 s so. The
inbox's writers (the recorder's and the applier's threads, in every worker process) instead wait
for an exclusive lock on a file next to the database (`<database>-writers.lock`, flock), which the
kernel hands to the next waiter the moment it is let go. Other writers (the app's own requests)
still meet SQLite's busy handler, rarely. PostgreSQL locks rows, not the database: there a turn is
taken at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from terra_integration.host import bound

try:
    import fcntl
except ImportError:  # Windows: no flock; writers meet SQLite's busy handler there, as the app's others do
    fcntl = None


@contextmanager
def write_turn() -> Iterator[None]:
    """Hold the write turn for the block: start the transaction, write and commit inside it."""
    url = bound().db.engine.url
    database = url.database or ""
    no_plain_path = database in ("", ":memory:") or database.startswith("file:")  # in memory, or a URI
    if fcntl is None or url.get_backend_name() != "sqlite" or no_plain_path:
        yield
        return
    with open(database + "-writers.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file is closed
        yield
