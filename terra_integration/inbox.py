"""The webhook inbox: record each verified delivery exactly once, then apply it.

De-duplication is the unique `trace_id` (Terra's `X-Terra-Trace-Id`, stable across retries; a hash
of the body when absent). The insert either wins or raises IntegrityError: no check-then-insert.

A delivery is one transaction: `record` inserts the row (flushed, not committed), `apply` changes our
state inside a SAVEPOINT, notes the outcome on the row and commits once. A failure rolls back to the
savepoint only, so the event is still committed, with its failure, for a replay.
"""

from __future__ import annotations

import hashlib
import itertools
import time

from flask import current_app
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

from extensions import db
from models import WebhookEvent
from models.time import utcnow
from models.webhook_event import EventOutcome
from services.event_handlers import Outcome, apply_event
from terra_integration.client import download_payload
from terra_integration.events import PING_TYPE, EventParseError, TerraEvent, parse_event


def trace_id_for(header_value: str | None, body: bytes) -> str:
    if header_value and header_value.strip():
        return header_value.strip()[:128]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def record(body: bytes, event: TerraEvent, *, trace_id: str, terra_reference: str | None) -> WebhookEvent | None:
    """Insert the event into the inbox, uncommitted (`apply` commits); None when this trace id was
    already recorded (a duplicate delivery)."""
    row = WebhookEvent(
        trace_id=trace_id,
        event_type=event.type[:64],
        terra_user_id=event.terra_user_id,
        reference_id=event.reference_id,
        terra_reference=(terra_reference or "")[:128] or None,
        body=body.decode("utf-8"),
    )
    db.session.add(row)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return None
    return row


UNREADABLE = "unreadable"  # the event_type of a verified body that is not an event we can read


def record_unreadable(body: bytes, problem: str, *, trace_id: str, terra_reference: str | None) -> str:
    """Keep a verified body that is not a readable event (no user, bad JSON, nesting...) as a failed
    row, committed, and return its outcome ("duplicate" when this trace id is already kept).

    Terra's guidance is to log and acknowledge such deliveries: an error answer would only make
    Terra retry them for hours. The row is there to look at, and to replay once the code reads it.
    """
    current_app.logger.warning("webhook %s kept as failed: %s", trace_id, problem)
    row = WebhookEvent(
        trace_id=trace_id,
        event_type=UNREADABLE,
        terra_reference=(terra_reference or "")[:128] or None,
        # Kept as close to the bytes as text allows: invalid UTF-8 and NUL as backslash escapes.
        body=body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"),
        outcome=EventOutcome.FAILED,
        detail=problem[:255],
        applied_at=utcnow(),
    )
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return "duplicate"
    return EventOutcome.FAILED


# Losing a race to a concurrent delivery shows up as one of these (a unique constraint, a deadlock or
# lock timeout, a row another delivery just replaced); the next try sees the winner's rows.
RACE_ERRORS = (IntegrityError, OperationalError, StaleDataError)
APPLY_TRIES = 4


def apply(row: WebhookEvent, event: TerraEvent) -> str:
    """Apply a recorded event (`row`, parsed as `event`), note the outcome on its row, commit, and
    return the outcome.

    Applying is idempotent, so a try that lost a race (a unique constraint, a deadlock) is simply
    run again, each try in its own savepoint. Any other failure is kept on the row, and logged, for
    a later replay; the row itself is committed either way.
    """
    try:
        if event.type == PING_TYPE:
            event = _downloaded(event)
        outcome, detail = _apply_with_retries(event)
    except Exception as error:  # noqa: BLE001 (kept on the row; see the docstring)
        outcome, detail = _failure(row, error)
    return _finish(row, outcome, detail)


def _downloaded(ping: TerraEvent) -> TerraEvent:
    """The data event an `s3_payload` points at, fetched (timeout, size limit) and parsed as if it
    had arrived inline. The row is committed first: no transaction stays open across the download."""
    db.session.commit()
    if not ping.download_url:
        raise EventParseError("s3_payload without a url")
    config = current_app.config
    event = parse_event(download_payload(ping.download_url, timeout=config["TERRA_PAYLOAD_TIMEOUT_SECONDS"],
                                         max_bytes=config["TERRA_PAYLOAD_MAX_BYTES"]))
    if event.type == PING_TYPE:
        raise EventParseError("an s3_payload must not point at another s3_payload")
    return event


def _apply_with_retries(event: TerraEvent) -> Outcome:
    for attempt_number in itertools.count(1):
        try:
            with db.session.begin_nested():
                return apply_event(event)
        except RACE_ERRORS:
            if attempt_number == APPLY_TRIES:
                raise
            # Rolling back a savepoint expires only what it changed; rows it merely read must be
            # read again too, or the next try would act on what the winner has since changed.
            db.session.expire_all()
            time.sleep(0.01 * attempt_number)


def replay(row: WebhookEvent) -> str:
    """Apply a stored event again (`flask webhooks replay`); safe because applying is idempotent."""
    try:
        event = parse_event(row.body.encode("utf-8"))
    except EventParseError as error:  # a failure like any other: one bad row must not stop a replay
        return _finish(row, *_failure(row, error))
    return apply(row, event)


def _finish(row: WebhookEvent, outcome: str, detail: str | None) -> str:
    row.outcome, row.detail, row.applied_at = outcome, detail, utcnow()
    db.session.commit()
    return outcome


def _failure(row: WebhookEvent, error: Exception) -> Outcome:
    current_app.logger.error("applying webhook event %s failed: %s", row.id, type(error).__name__, exc_info=error)
    return EventOutcome.FAILED, f"{type(error).__name__}: {error}"[:255]
