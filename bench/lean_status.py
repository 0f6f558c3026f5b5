"""A prototype, for measurement only: the status endpoint's read path as the fix recommended in
docs/performance.md would make it, served by the same gunicorn configuration against the same
database, so `bench.status --lean` can show what that fix is worth before anyone changes the app.

    gunicorn --config gunicorn.conf.py "bench.lean_status:create_app()"

What it does differently from `blueprints/api.py`'s `get_attempt` (and nothing else):
- the bearer token's check is cached in the process for a few seconds (token hash -> owner, expiry,
  revocation), so a poller's repeated requests do not look the token up (nor lazy-load its user);
- the attempt is read with one SQLAlchemy Core statement (its columns and its connection's, joined),
  not through the ORM;
- no pool pre-ping (a ping per checkout is a round trip per request), no Flask-Limiter check.
It answers the same ETag / 304 / JSON shape for a pending attempt. It does not expire attempts or
run the userInfo check, which cost nothing while an attempt is pending and not due.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime

from flask import Flask, Response, jsonify, request
from sqlalchemy import create_engine, text

TOKEN_CACHE_SECONDS = 5.0
POLL_AFTER_MS = 2000

ATTEMPT_SQL = text(
    "SELECT a.id, a.user_id, a.status, a.hint, a.requested_provider, a.error, a.version, a.created_at, "
    "a.updated_at, a.expires_at, c.id AS c_id, c.terra_user_id, c.provider, c.status AS c_status, "
    "c.status_reason, c.scopes, c.created_at AS c_created_at, c.updated_at AS c_updated_at "
    "FROM connect_attempts a LEFT JOIN connections c ON c.id = a.connection_id WHERE a.id = :id"
)
TOKEN_SQL = text("SELECT user_id, expires_at, revoked_at FROM api_tokens WHERE token_hash = :hash")


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _naive_utc(value):
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def create_app() -> Flask:
    url = os.environ["DATABASE_URL"]
    if url.startswith(("postgres://", "postgresql://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = create_engine(url)
    app = Flask(__name__)
    tokens: dict[str, tuple[float, int | None]] = {}
    lock = threading.Lock()

    def owner_of(token: str) -> int | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = tokens.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        with engine.connect() as connection:
            row = connection.execute(TOKEN_SQL, {"hash": digest}).first()
        user_id = None
        if row is not None and row.revoked_at is None and _naive_utc(row.expires_at) > datetime.now(UTC).replace(tzinfo=None):
            user_id = row.user_id
        with lock:
            tokens[digest] = (now + TOKEN_CACHE_SECONDS, user_id)
        return user_id

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.get("/api/v1/connect-attempts/<attempt_id>")
    def get_attempt(attempt_id: str):
        header = request.headers.get("Authorization", "")
        user_id = owner_of(header[7:]) if header.startswith("Bearer ") else None
        if user_id is None:
            return jsonify(error={"code": "invalid_token", "message": "a valid bearer token is required"}), 401
        with engine.connect() as connection:
            row = connection.execute(ATTEMPT_SQL, {"id": attempt_id}).first()
        if row is None or row.user_id != user_id:
            return jsonify(error={"code": "not_found", "message": "no such connect attempt"}), 404
        etag = str(row.version)
        if etag in request.if_none_match:
            response = Response(status=304)
        else:
            terminal = row.status != "pending"
            connection_json = None
            if row.c_id is not None:
                connection_json = {"id": row.c_id, "terra_user_id": row.terra_user_id, "provider": row.provider,
                                   "status": row.c_status, "status_reason": row.status_reason,
                                   "scopes": [s for s in (row.scopes or "").split(",") if s],
                                   "created_at": _iso(row.c_created_at), "updated_at": _iso(row.c_updated_at)}
            response = jsonify(
                attempt_id=row.id, status=row.status, terminal=terminal, hint=row.hint,
                provider=row.provider if row.c_id is not None else row.requested_provider,
                connection=connection_json,
                error={"code": row.error, "message": row.error} if row.error else None,
                version=row.version, created_at=_iso(row.created_at), updated_at=_iso(row.updated_at),
                expires_at=_iso(row.expires_at), poll_after_ms=None if terminal else POLL_AFTER_MS,
            )
        response.set_etag(etag)
        response.headers["Cache-Control"] = "no-store"
        return response

    return app
