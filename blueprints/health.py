"""Liveness and readiness probes for load balancers and orchestrators."""

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from extensions import csrf, db, limiter

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up and serving requests; says nothing about its dependencies."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready for traffic: the database answers, and so does the rate-limit store when it is a shared
    one (Redis): every sign-in, sign-up and connect counts there, and fails while it is down. The
    answer names each dependency and its state, never its address (which may hold a password)."""
    checks = {"database": _database_state()}
    if not current_app.config["RATELIMIT_STORAGE_URI"].startswith("memory://"):
        checks["rate_limit_store"] = "ok" if limiter.storage.check() else "unreachable"
    if any(state != "ok" for state in checks.values()):
        return jsonify(status="unavailable", checks=checks), 503
    return jsonify(status="ok", checks=checks)


def _database_state() -> str:
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        db.session.rollback()
        return "unreachable"
    return "ok"


csrf.exempt(bp)
