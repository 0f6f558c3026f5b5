"""A small console: the sandbox's Terra users and recent flows, with buttons that make things happen
to a user (new data, a degraded connection, revoked access...) so the app's handling can be watched."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, redirect, render_template, request, url_for
from sqlalchemy import select

from extensions import db
from sandbox.blueprint import bp
from sandbox.errors import sandbox_error
from sandbox.faults import ALL_FAULTS, FLOW_VARIANTS, REST_FAULTS, WEBHOOK_FAULTS, run_faults
from sandbox.flows import active_user_count
from sandbox.models import SandboxSession, SandboxUser
from sandbox.user_events import (
    BACKFILL_DAYS,
    CONNECTION_EVENT_TYPES,
    DATA_EVENT_TYPES,
    MAX_BACKFILL_DAYS,
    USER_EVENT_TYPES,
    send_backfill,
    send_user_event,
)

RECENT_SESSIONS = 20


def app_home() -> str | None:
    """The home page of the app the sandbox feeds: the origin its webhooks go to (none when they go
    nowhere). Not a link into the app's own routes: the sandbox stays liftable on its own."""
    webhook_url = current_app.config["SANDBOX_WEBHOOK_URL"]
    if not webhook_url:
        return None
    parts = urlsplit(str(webhook_url))
    return f"{parts.scheme}://{parts.netloc}/"


# The knobs worth seeing while testing (never the signing secret).
CONSOLE_SETTINGS = (
    "SANDBOX_WEBHOOK_URL",
    "SANDBOX_USER_CAP",
    "SANDBOX_USER_CAP_MODE",
    "SANDBOX_LEGACY_GONE",
    "SANDBOX_AUTH_FAILURE_SHAPE",
    "SANDBOX_REAUTH_ORDER",
    "SANDBOX_USERINFO_SHAPE",
    "SANDBOX_SESSION_TTL_SECONDS",
    "SANDBOX_DATA_MAX_SPAN_DAYS",
    "SANDBOX_DATA_HOURLY_DAYS",
)


@bp.get("/")
def console():
    users = db.session.scalars(select(SandboxUser).order_by(SandboxUser.created_at.desc())).all()
    sessions = db.session.scalars(
        select(SandboxSession).order_by(SandboxSession.created_at.desc()).limit(RECENT_SESSIONS)
    ).all()
    return render_template(
        "sandbox/console.html",
        users=users,
        sessions=sessions,
        active_count=active_user_count(),
        data_events=DATA_EVENT_TYPES,
        # What happens to the connection itself; deauth has a button of its own.
        connection_events=[kind for kind in CONNECTION_EVENT_TYPES if kind != "deauth"],
        sent=request.args.get("sent"),
        backfilled=request.args.get("backfilled", type=int),
        settings={name: current_app.config[name] for name in CONSOLE_SETTINGS},
        faults=run_faults(current_app.config),
        rest_faults=REST_FAULTS,
        webhook_faults=WEBHOOK_FAULTS,
        flow_variants=FLOW_VARIANTS,
        app_home=app_home(),
    )


@bp.post("/faults")
def set_faults():
    """Switch the run's faults from the console (this process only: every gunicorn worker has its own)."""
    chosen = set(request.form.getlist("fault"))
    current_app.config["SANDBOX_FAULTS"] = [name for name in ALL_FAULTS if name in chosen]
    return redirect(url_for("sandbox.console"), 303)


def _refusal(wants_json: bool, status: int, code: str, message: str):
    if wants_json:
        return sandbox_error(status, code, message)
    page = render_template(
        "sandbox/message.html",
        title="Not sent",
        message=message,
        back_url=url_for("sandbox.console"),
        back_label="Back to the console",
    )
    return page, status


def _active_user(user_id: str, wants_json: bool):
    """(the active sandbox user `user_id`, None), or (None, the refusal to answer with)."""
    user = db.session.get(SandboxUser, user_id)
    if user is None:
        return None, _refusal(wants_json, 404, "user_not_found", "No sandbox user has this id.")
    if not user.active:
        return None, _refusal(
            wants_json, 409, "user_inactive", "This user is no longer connected; Terra sends it nothing."
        )
    return user, None


def _request_fields() -> tuple[bool, dict]:
    """(whether the caller wants JSON, its JSON body or form fields)."""
    if request.is_json:
        body = request.get_json(silent=True)
        return True, body if isinstance(body, dict) else {}
    return False, request.form


@bp.post("/users/<user_id>/events")
def send_event(user_id: str):
    wants_json, fields = _request_fields()
    kind = fields.get("type")
    user, refusal = _active_user(user_id, wants_json)
    if refusal:
        return refusal
    if kind not in USER_EVENT_TYPES:
        return _refusal(wants_json, 400, "invalid_request", "type must be one of: " + ", ".join(USER_EVENT_TYPES))
    delivery = send_user_event(user, kind, current_app.config)
    if wants_json:
        return {"trace_id": delivery.trace_ids[0]}, 202
    return redirect(url_for("sandbox.console", sent=kind), 303)


@bp.post("/users/<user_id>/backfill")
def send_backfill_history(user_id: str):
    """Send `days` (default 30) of history the way Terra answers a large data request: in chunks."""
    wants_json, fields = _request_fields()
    user, refusal = _active_user(user_id, wants_json)
    if refusal:
        return refusal
    days = fields.get("days", BACKFILL_DAYS)
    if not wants_json and isinstance(days, str) and days.isdigit():  # a form sends text
        days = int(days)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_BACKFILL_DAYS:
        return _refusal(
            wants_json, 400, "invalid_request", f"days must be a whole number from 1 to {MAX_BACKFILL_DAYS}"
        )
    delivery = send_backfill(user, days, current_app.config)
    if wants_json:
        return {"terra_reference": delivery.terra_reference, "trace_ids": delivery.trace_ids}, 202
    return redirect(url_for("sandbox.console", backfilled=days), 303)
