"""Ping-mode delivery (`s3_payload`): instead of a data event, Terra sends a short event with a
pre-signed, time-limited download URL, and the receiver fetches the data from it. The sandbox keeps
the data event in its own table and serves it at `/sandbox/payloads/<id>`, like the S3 bucket would:
no credentials (the URL is the capability), 403 once expired, 404 for an id it never made.
"""

from __future__ import annotations

import json
from datetime import timedelta

from flask import Response

from extensions import db
from models.time import utcnow
from sandbox.blueprint import bp
from sandbox.models import SandboxPayload
from services.public_urls import public_url

PAYLOAD_LIFETIME_SECONDS = 300  # Terra's example `expires_in`


def ping_event(event: dict) -> dict:
    """Store `event` for download and return the `s3_payload` event that points at it (uncommitted)."""
    payload = SandboxPayload(
        body=json.dumps(event, separators=(",", ":")), expires_at=utcnow() + timedelta(seconds=PAYLOAD_LIFETIME_SECONDS)
    )
    db.session.add(payload)
    db.session.flush()
    return {
        "type": "s3_payload",
        "status": "success",
        "url": public_url("sandbox.download_payload", payload_id=payload.id),
        "expires_in": PAYLOAD_LIFETIME_SECONDS,
    }


@bp.get("/payloads/<payload_id>")
def download_payload(payload_id: str):
    payload = db.session.get(SandboxPayload, payload_id)
    if payload is None:
        return Response("NoSuchKey", status=404, mimetype="text/plain")
    if payload.expires_at <= utcnow():
        return Response("Request has expired", status=403, mimetype="text/plain")
    return Response(payload.body, mimetype="application/json")
