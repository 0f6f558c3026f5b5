"""Terra's webhook receiver: the integration's blueprint, `POST /webhooks/terra`.

The order of operations is the contract, and each step guards the next:
1. raw body: read the bytes exactly as sent, before anything parses them (the signature covers them);
2. verify: the signature, fail closed (401 when missing or wrong, 500 when we have no secret);
3. record: the inbox checks the headers and body (`inbox.read_delivery`) and inserts the event once
   per trace id (a duplicate is acknowledged, not re-applied); applying follows from the inbox: the
   host changes its state idempotently, committed with the event and its outcome in one transaction,
   and a failure undoes only what applying changed, the event kept with the failure for a replay;
4. acknowledge: 200 quickly, so Terra does not retry what we already have.

Errors are `{"error": {"code", "message"}}`, built here so the integration needs nothing of its host's.
Hosts with CSRF protection exempt this blueprint: Terra's signature authenticates it instead.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from terra_integration import inbox, signature

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

    # 3. Record; the inbox applies what it records.
    try:
        delivery = inbox.read_delivery(body, request.headers)
    except inbox.MalformedDelivery as error:
        return _error(400, "malformed_event", str(error))
    outcome = inbox.receive(delivery)

    # 4. Acknowledge: recorded is what matters to Terra, even if applying must be replayed.
    return jsonify(status=outcome, trace_id=delivery.trace_id)
