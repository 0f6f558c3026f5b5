"""The webhook inbox: record each verified delivery exactly once, then apply it.

De-duplication is the unique `trace_id` (Terra's `X-Terra-Trace-Id`, stable across retries; a hash
of the body when absent). The insert either wins or raises IntegrityError: no check-then-insert.
"""

from __future__ import annotations

import hashlib

from flask import current_app
from sqlalchemy.exc import IntegrityError

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


def apply(row: WebhookEvent) -> WebhookEvent:
    """Apply a recorded event. A failure is kept on the row (and logged) for a later replay."""
    try:
        outcome, detail = apply_event(parse_event(row.body.encode("utf-8")))
        row.outcome, row.detail = outcome, detail
    except Exception as error:  # the event stays in the inbox; nothing already stored is lost
        db.session.rollback()
        current_app.logger.exception("applying webhook event %s (%s) failed", row.trace_id, row.event_type)
        row = db.session.get(WebhookEvent, row.id)
        row.outcome, row.detail = EventOutcome.FAILED, f"{type(error).__name__}: {error}"[:255]
    row.applied_at = utcnow()
    db.session.commit()
    return row
