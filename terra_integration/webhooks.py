"""Terra's webhook receiver.

The order of operations is the contract, and each step guards the next:
1. raw body: read the bytes exactly as sent, before anything parses them (the signature covers them);
2. verify: the signature, fail closed (401 when missing or wrong, 500 when we have no secret);
3. record: insert the event into the inbox and commit it, once per trace id and once per signed payload
   (a duplicate, or a replay of a captured delivery under a fresh trace id, is acknowledged, not
   recorded again);
4. acknowledge: 200 as soon as the event is durably recorded, so Terra does not retry what we already
   have. The 200 means recorded, not applied: the applier (`applier`) applies the row in the background,
   woken by the commit, and keeps the outcome on it (applied, or failed for a replay).

Errors are built here, not by the host app, so the integration needs nothing of it. Hosts with CSRF
protection exempt this blueprint: Terra's signature authenticates it instead.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, current_app, jsonify, request

from terra_integration import inbox, signature
from terra_integration.events import EventParseError, parse_event
from terra_integration.models import TRACE_ID_LENGTH
from terra_integration.text_checks import storable_text

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

MAX_ORDERING_DIGITS = 18  # fits a BIGINT; unix milliseconds have 13 digits until the year 2286


def _error(status: int, code: str, message: str):
    return jsonify(error={"code": code, "message": message}), status


@bp.post("/terra")
def receive_terra_event():
    # 1. Raw body.
    limit = current_app.config["WEBHOOK_MAX_BYTES"]
    if (request.content_length or 0) > limit:
        return _error(413, "payload_too_large", f"webhook bodies are limited to {limit} bytes")
    body = request.get_data(cache=False)
    if len(body) > limit:
        return _error(413, "payload_too_large", f"webhook bodies are limited to {limit} bytes")

    # 2. Verify.
    secret = current_app.config.get("TERRA_SIGNING_SECRET")
    if not secret:
        current_app.logger.error("webhook rejected: no TERRA_SIGNING_SECRET is configured")
        return _error(500, "not_configured", "the webhook signing secret is not configured")
    header = next((request.headers[name] for name in signature.HEADER_NAMES if name in request.headers), None)
    try:
        signed_at = signature.verify(body, header, secret, tolerance=current_app.config["WEBHOOK_TOLERANCE_SECONDS"])
    except signature.SignatureError as error:
        current_app.logger.warning("webhook rejected: %s", error)
        return _error(401, "invalid_signature", str(error))

    # 3. Record: committed, and this process's applier woken.
    try:
        delivery = read_delivery(body, signed_at)
    except MalformedDelivery as error:
        return _error(400, "malformed_event", str(error))
    outcome = inbox.receive(delivery)

    # 4. Acknowledge: recorded is what matters to Terra; applying follows in the background.
    return jsonify(status=outcome, trace_id=delivery.trace_id)


class MalformedDelivery(ValueError):
    """A verified delivery whose headers could not be stored (Terra never sends such)."""


def read_delivery(body: bytes, signed_at: int) -> inbox.Delivery:
    """The verified delivery (`signed_at`: its signature's `t`), its headers and body checked in this
    one place (parse_event checks the body). Terra never sends these; without this check they would fail inside the
    database (a 500, and Terra retrying for hours). A body that is not an event is kept, as failed."""
    for name in ("X-Terra-Trace-Id", "terra-reference"):
        if not storable_text(request.headers.get(name, "")):
            raise MalformedDelivery(f"the {name} header contains NUL characters")
    trace_id = request.headers.get("X-Terra-Trace-Id", "").strip()[:TRACE_ID_LENGTH]
    trace_id = trace_id or "sha256:" + hashlib.sha256(body).hexdigest()
    terra_reference = request.headers.get("terra-reference", "")[:TRACE_ID_LENGTH] or None
    keys = {"trace_id": trace_id, "terra_reference": terra_reference, "ordering_timestamp": _ordering_timestamp()}
    try:
        return inbox.Delivery(body, signed_at, event=parse_event(body), **keys)
    except EventParseError as error:
        return inbox.Delivery(body, signed_at, event=None, problem=str(error), **keys)


def _ordering_timestamp() -> int | None:
    """X-Terra-Ordering-Timestamp: unix milliseconds, or None when Terra sent none (payloads with
    no recency anchor)."""
    value = request.headers.get("X-Terra-Ordering-Timestamp", "").strip()
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > MAX_ORDERING_DIGITS:
        raise MalformedDelivery("the X-Terra-Ordering-Timestamp header must be unix milliseconds")
    return int(value)
