"""The inbox's applier: recorded events applied in the background, the inbox row being the job.

The receiver only records (`inbox.receive` commits a `received` row) and answers; this applies. A row
moves `received` → applied, recorded, ignored or failed (`EventOutcome`), once, at least once:

- **Claim.** A taker marks a batch of the oldest pending rows as its own until `claimed_until` (a
  lease) and counts the try in `attempts`, in one short transaction, then applies them a few to a
  transaction, one failure failing alone (`inbox.apply_together`). On PostgreSQL several takers (threads, processes, instances) claim at
  once without waiting for each other (`FOR UPDATE SKIP LOCKED`); on SQLite the claim is one
  conditional UPDATE, which holds the database's single write lock, so one taker claims at a time
  (in turn with the other writers of the inbox, `write_turns`).
- **Crash.** A taker that dies mid-apply (a crash, kill -9, a lost database) leaves its rows pending
  with a lease that runs out; any taker then claims them again. Applying is idempotent, so an event
  applied but not yet marked is only applied twice. After MAX_ATTEMPTS such claims a row is marked
  failed, so one event that kills its taker cannot stop the queue.
- **Failures** stay on the row (`failed`, with the error in `detail`); `flask webhooks replay` applies
  them again.
- **Order.** A row is claimed only when no older row with the same `reference_id` is still pending:
  the events of one user of the host (all of its Terra users, the old and the new one of a
  re-authentication included) are applied one at a time, in the order they were recorded (the inbox
  id). Rows without a reference_id (an `s3_payload` before its download) are not ordered.
- **Downloads.** An `s3_payload` row is a download first (payloads.py), which can take as long as
  its deadline. So the rows are two queues in one table: `DOWNLOADS` (s3_payload rows, claimed one
  at a time) and `EVENTS` (every other row), each with a taker of its own in each process. A
  download in flight then holds no claim but its own row's, and no other event waits for it: the
  events' taker goes on. The download's deadline (TERRA_PAYLOAD_TIMEOUT_SECONDS, for the whole
  download) is shorter than the lease, which start-up checks, so its claim never runs out under
  it and no second taker fetches the same payload. A download that failed in a way that may pass
  leaves its row pending, claimable again only after a backoff (`inbox.apply_download`). Chosen
  over a pool of download threads or a queue in memory: the row stays the job, so the lease, the
  retries, a crash and several processes work as for any other row, with nothing new to lose.
- **Wake-up.** `InboxWorker` is a thread per queue in each web worker process: the receiver wakes
  them as soon as its row is committed, and they also look every WEBHOOK_SWEEP_SECONDS for rows no
  wake-up announced (recorded by another process, or left by a taker that died).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import Select, func, literal_column, or_, select, update
from sqlalchemy.orm import aliased

from terra_integration import inbox
from terra_integration.events import PING_TYPE
from terra_integration.host import bound
from terra_integration.models import TEXT_LENGTH, EventOutcome, WebhookEventColumns, utcnow
from terra_integration.write_turns import write_turn

# Written into the SQL, not bound: only then can the databases use the partial indexes over the
# pending rows (`models.PENDING`), whose condition must be seen to hold when the statement is planned.
RECEIVED = literal_column(f"'{EventOutcome.RECEIVED}'")
BATCH_SIZE = 20  # rows per claim: one short transaction claims them
# Rows applied in one transaction (one commit, and on SQLite one write turn, `write_turns`): fewer
# commits, while the receivers, who wait for the turn, wait for a few events' work at most.
APPLY_TOGETHER = 5
# The applier waits for a pause of QUIET_SECONDS in this process's deliveries before each claim, at
# most LONGEST_WAIT_SECONDS, and not at all once BACKLOG_LIMIT rows are waiting
# (InboxWorker._let_deliveries_pass).
QUIET_SECONDS = 0.02
LONGEST_WAIT_SECONDS = 0.25
BACKLOG_LIMIT = 2000
MAX_ATTEMPTS = 5  # claims of one row whose taker never finished it, before it is kept as failed
# The queues (see above); None in `claim` and `drain`: both, as `flask terra work --until-empty` and
# the tests take them.
EVENTS, DOWNLOADS = "events", "downloads"
THREAD_NAMES = {EVENTS: "terra-inbox-applier", DOWNLOADS: "terra-inbox-downloads"}  # InboxWorker's


def queue_of(event_type: str) -> str:
    """The queue a row of `event_type` waits in: an s3_payload's download, or any other event."""
    return DOWNLOADS if event_type == PING_TYPE else EVENTS


def claim(limit: int = BATCH_SIZE, queue: str | None = None) -> list[int]:
    """Claim up to `limit` pending rows of `queue`, oldest first, at most one per reference_id (its
    oldest), for one lease; commit, and return their ids. Rows whose takers gave up MAX_ATTEMPTS
    times are marked failed on the way."""
    integration = bound()
    session, model = integration.db.session, integration.host.webhook_event_model
    config = current_app.config
    now = utcnow()
    candidates = claimable(model, now, queue)
    session.rollback()  # a fresh transaction, for the look and for the claim
    # A look first, which takes no lock: most wake-ups and sweeps find nothing, and on SQLite an
    # UPDATE takes the database's one write lock even when it changes no row.
    if session.scalars(candidates.limit(1)).first() is None:
        session.rollback()
        return []
    lease_over = or_(model.claimed_until.is_(None), model.claimed_until < now)
    with write_turn():
        session.execute(
            update(model)
            .where(model.outcome == RECEIVED, lease_over, model.attempts >= MAX_ATTEMPTS)
            .values(
                outcome=EventOutcome.FAILED,
                detail=f"abandoned: applying it stopped mid-way {MAX_ATTEMPTS} times (the process died?)"[:TEXT_LENGTH],
                applied_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        candidates = candidates.limit(limit)
        if session.get_bind().dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True, of=candidates.selected_columns.id)
        claimed = session.scalars(
            update(model)
            .where(model.id.in_(candidates))
            .values(
                claimed_until=now + timedelta(seconds=config["WEBHOOK_CLAIM_LEASE_SECONDS"]),
                attempts=model.attempts + 1,
            )
            .returning(model.id)
            .execution_options(synchronize_session=False)
        ).all()
        session.commit()
    return sorted(claimed)


def claimable(model: type[WebhookEventColumns], now: datetime, queue: str | None = None) -> Select:
    """The ids of the rows of `queue` (None: both) that may be claimed at `now`, oldest first: pending,
    with no lease running, and each the oldest pending row of its user (reference_id)."""
    # Aliases: the subqueries name the table the claim's UPDATE changes, and must not be correlated with it.
    job, older = aliased(model), aliased(model)
    # "No later than the smallest pending id of its reference_id" (a pending row cannot be earlier, so:
    # equal), a subquery run for each row through the (reference_id, id) index. Not "no older pending
    # row exists": PostgreSQL turns that into a join, and once its statistics say that few rows are
    # pending (the usual state) it plans the join as a scan of every pending row for each pending row:
    # a claim took 0.4 s with 2,000 waiting, and grew with their square. And "no later than", not
    # "equal": the planner takes an equality to pass few rows, and could sort every pending row instead
    # of reading them oldest first until the batch is full (a claim of 6.7 ms, not 1.4, with 2,000 waiting).
    oldest_of_its_user = (
        select(func.min(older.id))
        .where(older.outcome == RECEIVED, older.reference_id == job.reference_id)
        .scalar_subquery()
    )
    candidates = (
        select(job.id)
        .where(
            job.outcome == RECEIVED,
            or_(job.claimed_until.is_(None), job.claimed_until < now),
            or_(job.reference_id.is_(None), job.id <= oldest_of_its_user),
        )
        .order_by(job.id)
    )
    if queue is None:
        return candidates
    return candidates.where(job.event_type == PING_TYPE if queue == DOWNLOADS else job.event_type != PING_TYPE)


def waiting_at_least(count: int) -> bool:
    """Whether `count` rows or more wait to be applied (counted no further than that)."""
    integration = bound()
    session, model = integration.db.session, integration.host.webhook_event_model
    waiting = select(model.id).where(model.outcome == RECEIVED).limit(count).subquery()
    found = session.scalar(select(func.count()).select_from(waiting))
    session.rollback()
    return found >= count


def apply_claimed(ids: list[int]) -> None:
    """Apply the claimed rows, APPLY_TOGETHER at a time in one transaction (one bad event fails alone)."""
    integration = bound()
    session, model = integration.db.session, integration.host.webhook_event_model
    for start in range(0, len(ids), APPLY_TOGETHER):
        # Read just before their transaction: a commit expires what the session has read, and each
        # row would be read again, one by one. Another taker may have finished one since (its lease
        # ran out, or a replay applied it).
        together = ids[start : start + APPLY_TOGETHER]
        pending = session.scalars(
            select(model).where(model.id.in_(together), model.outcome == RECEIVED).order_by(model.id)
        ).all()
        inbox.apply_together(pending)


def drain(before_each_claim: Callable[[], None] = lambda: None, queue: str | None = None) -> int:
    """Claim and apply the rows of `queue` (None: both) until none is left to claim; returns how many
    rows were claimed. Tests call it to apply synchronously; `flask terra work` and `InboxWorker`
    call it when woken."""
    total = 0
    while True:
        before_each_claim()
        ids = claim(1 if queue == DOWNLOADS else BATCH_SIZE, queue)
        if not ids:
            return total
        apply_claimed(ids)
        total += len(ids)


class InboxWorker:
    """The applier as threads of this process, one per queue (THREAD_NAMES): woken at once by the
    receiver's commits, and looking for other rows every `sweep_seconds`. Started by `start()`
    (gunicorn's post_worker_init) or by the first wake-up, never at import, nor in the `flask`
    command's processes unless asked."""

    def __init__(self, app: Flask):
        self.app = app
        self._wakes = {queue: threading.Event() for queue in THREAD_NAMES}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pid: int | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.app.config["WEBHOOK_APPLY_IN_PROCESS"])

    def start(self) -> None:
        """Run the threads in this process, if the setting allows and they are not running yet."""
        if not self.enabled:
            return
        with self._lock:
            # Thread objects inherited across fork() are not running in the child: start anew.
            if self._threads and all(thread.is_alive() for thread in self._threads) and self._pid == os.getpid():
                return
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._run, args=(queue,), name=name, daemon=True)
                for queue, name in THREAD_NAMES.items()
            ]
            self._pid = os.getpid()
            for thread in self._threads:
                thread.start()

    def wake(self, event_types: Iterable[str] = ()) -> None:
        """Rows of `event_types` were committed: wake their queues' threads (every thread when none is
        named), starting the threads on first use. A queue woken for nothing would look in vain."""
        if self.enabled:
            self.start()
            for queue in {queue_of(event_type) for event_type in event_types} or self._wakes:
                self._wakes[queue].set()

    def stop(self, timeout: float = 5) -> None:
        """Let the threads finish the row each is applying and end (gunicorn's worker_exit)."""
        self._stop.set()
        for wake in self._wakes.values():
            wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, queue: str) -> None:
        sweep, wake = self.app.config["WEBHOOK_SWEEP_SECONDS"], self._wakes[queue]
        while not self._stop.is_set():
            wake.clear()  # before draining: a commit during the drain wakes the next round
            try:
                with self.app.app_context():
                    drain(before_each_claim=self._let_deliveries_pass, queue=queue)
            except Exception:  # the database may be away: log, wait, and try again
                self.app.logger.exception("the webhook applier (%s) failed; trying again in %s s", queue, sweep)
                self._stop.wait(sweep)
            wake.wait(sweep)

    def _let_deliveries_pass(self) -> None:
        """Acknowledging comes first: while deliveries keep arriving in this process, wait for a pause
        in them (QUIET_SECONDS), but no longer than LONGEST_WAIT_SECONDS, so that during a burst
        applying takes neither the interpreter nor the write turn from the receivers as often. Not
        once BACKLOG_LIMIT rows are waiting: under a flow that never pauses the applier must keep up,
        so a burst is absorbed up to that many rows, and beyond them applying runs at full speed."""
        last_arrival = self.app.extensions["terra_integration"].recorder.last_arrival
        if last_arrival() + QUIET_SECONDS <= time.monotonic() or waiting_at_least(BACKLOG_LIMIT):
            return
        deadline = time.monotonic() + LONGEST_WAIT_SECONDS
        while (quiet_in := last_arrival() + QUIET_SECONDS - time.monotonic()) > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(quiet_in, left))


def start_in(app: object) -> None:
    """Start the applier's threads in this process if `app` carries the integration (gunicorn's
    post_worker_init hands it every app it serves)."""
    integration = getattr(app, "extensions", {}).get("terra_integration")
    if integration is not None:
        integration.worker.start()


def stop_in(app: object) -> None:
    """Let the applier's threads finish their rows and end (gunicorn's worker_exit)."""
    integration = getattr(app, "extensions", {}).get("terra_integration")
    if integration is not None:
        integration.worker.stop()
