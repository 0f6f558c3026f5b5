"""Terra's webhook receiver.

The order of operations is the contract, and each step guards the next:
1. raw body: read the bytes exactly as sent, before anything parses them (the signature covers them);
2. verify: the signature, fail closed (401 when missing or wrong, 500 when we have no secret);
3. record: insert the event into the inbox, once per trace id (a duplicate is acknowledged, not re-applied);
4. apply: change connections and attempts idempotently, then commit them with the event and its outcome,
   one transaction per delivery; a failure undoes only what applying changed, and the event is committed
   with the failure noted, for replay;
5. acknowledge: 200 quickly, so Terra does not retry what we already have.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from terra_integration import inbox, signature
from terra_integration.events import EventParseError, parse_event
from terra_integration.text_checks import storable_text

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


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
        signature.verify(body, header, secret, tolerance=current_app.config["WEBHOOK_TOLERANCE_SECONDS"])
    except signature.SignatureError as error:
        current_app.logger.warning("webhook rejected: %s", error)
        return _error(401, "invalid_signature", str(error))

    # 3. Record (uncommitted: step 4 commits the event with its outcome).
    problem = _unstorable_headers()
    if problem:
        return _error(400, "malformed_event", problem)
    trace_id = inbox.trace_id_for(request.headers.get("X-Terra-Trace-Id"), body)
    try:
        event = parse_event(body)
    except EventParseError as error:
        # Verified, so it is Terra's: kept as failed (for replay) and acknowledged, not retried for hours.
        outcome = inbox.record_unreadable(body, str(error), trace_id=trace_id,
                                                  terra_reference=request.headers.get("terra-reference"))
        return jsonify(status=outcome, trace_id=trace_id)
    row = inbox.record(body, event, trace_id=trace_id, terra_reference=request.headers.get("terra-reference"))
    if row is None:
        return jsonify(status="duplicate", trace_id=trace_id)

    # 4. Apply.
    outcome = inbox.apply(row, event)

    # 5. Acknowledge: recorded is what matters to Terra, even if applying must be replayed.
    return jsonify(status=outcome, trace_id=trace_id)


def _unstorable_headers() -> str | None:
    """Why the headers of a verified, well-formed event still cannot be stored, or None (parse_event
    checks the body). Terra never sends these; without this check they would fail inside the
    database (a 500, and Terra retrying for hours)."""
    for name in ("X-Terra-Trace-Id", "terra-reference"):
        if not storable_text(request.headers.get(name, "")):
            return f"the {name} header contains NUL characters"
    return None
