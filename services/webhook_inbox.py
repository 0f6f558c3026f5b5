"""The webhook inbox: record each verified delivery exactly once, then apply it.

De-duplication is the unique `trace_id` (Terra's `X-Terra-Trace-Id`, stable across retries; a hash
of the body when absent). The insert either wins or raises IntegrityError: no check-then-insert.
"""

from __future__ import annotations

import hashlib
import time

from flask import current_app
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

from extensions import db
from models import WebhookEvent
from models.time import utcnow
from models.webhook_event import EventOutcome
from services.event_handlers import apply_event
from terra.events import TerraEvent, parse_event


def trace_id_for(header_value: str | None, body: bytes) -> str:
    if header_value and header_value.strip():
        return header_value.strip()[:128]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def record(body: bytes, event: TerraEvent, *, trace_id: str, terra_reference: str | None) -> WebhookEvent | None:
    """Store the event; None when this trace id was already recorded (a duplicate delivery)."""
    row = WebhookEvent(
        trace_id=trace_id,
        event_type=event.type[:64],
        terra_user_id=event.terra_user_id,
        reference_id=event.reference_id,
        terra_reference=(terra_reference or "")[:128] or None,
        body=body.decode("utf-8"),
    )
    try:
        db.session.add(row)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return None
    return row


# Losing a race to a concurrent delivery shows up as one of these (a unique constraint, a deadlock or
# lock timeout, a row another delivery just replaced); the next try sees the winner's rows.
RACE_ERRORS = (IntegrityError, OperationalError, StaleDataError)
APPLY_TRIES = 4


def apply(row: WebhookEvent) -> WebhookEvent:
    """Apply a recorded event and note the outcome on its row.

    Applying is idempotent, so a try that lost a race (a unique constraint, a deadlock) is simply
    run again. Any other failure is kept on the row, and logged, for a later replay; nothing that
    was stored before is lost.
    """
    row_id, body = row.id, row.body.encode("utf-8")
    for attempt_number in range(1, APPLY_TRIES + 1):
        try:
            outcome, detail = apply_event(parse_event(body))
            return _finish(row_id, outcome, detail)
        except RACE_ERRORS as error:
            db.session.rollback()
            if attempt_number == APPLY_TRIES:
                return _record_failure(row_id, error)
            time.sleep(0.01 * attempt_number)
        except Exception as error:  # noqa: BLE001 (kept on the row; see the docstring)
            db.session.rollback()
            return _record_failure(row_id, error)
    raise AssertionError("unreachable")


def _finish(row_id: int, outcome: str, detail: str | None) -> WebhookEvent:
    row = db.session.get(WebhookEvent, row_id)
    row.outcome, row.detail, row.applied_at = outcome, detail, utcnow()
    db.session.commit()
    return row


def _record_failure(row_id: int, error: Exception) -> WebhookEvent:
    current_app.logger.error("applying webhook event %s failed: %s", row_id, type(error).__name__, exc_info=error)
    return _finish(row_id, EventOutcome.FAILED, f"{type(error).__name__}: {error}"[:255])
