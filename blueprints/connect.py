"""Web pages of the connect flow: dashboard, connect (widget or one provider), return pages, disconnect."""

from __future__ import annotations

import re
from typing import Callable

from flask import Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from blueprints import MAX_ROW_ID
from terra_integration.text_checks import storable_text
from blueprints.auth import login_required
from extensions import db, limiter, terra
from models import ConnectAttempt, Connection, User
from models.connect_attempt import AttemptHint, reason_text
from services import attempts, connections, reconciliation
from terra_integration.client import TerraError, TerraNotFound

bp = Blueprint("connect", __name__)

PROVIDER_CODE = re.compile(r"[A-Z0-9_]{2,40}")  # the whole value (fullmatch): no trailing newline

bp.add_app_template_filter(reason_text, "reason_text")


def connect_rate_limit(user_id: Callable[[], int]):
    """Starting a connect attempt spends a widget session (or authenticateUser call) of the
    customer's Terra quota, so it is limited per user (not per address: many phones share a carrier's),
    in one budget shared by the web pages and the API, before Terra is called. Counts live in
    RATELIMIT_STORAGE_URI, like the login limit. `user_id` names the caller once authenticated."""

    def rate() -> str:
        return current_app.config["CONNECT_RATE_LIMIT"]

    return limiter.shared_limit(
        rate, scope="connect-attempts", key_func=lambda: f"user:{user_id()}",
        error_message=lambda: f"Too many connections started: the limit is {rate()}. Please wait and try again.",
    )


@bp.get("/")
def index():
    if g.user is not None:
        return redirect(url_for("connect.dashboard"))
    return render_template("connect/index.html")


@bp.get("/connections")
@login_required
def dashboard():
    reconciliation.reconcile_if_due(g.user, terra.client)
    user_connections = db.session.scalars(
        select(Connection).where(Connection.user_id == g.user.id).order_by(Connection.created_at.desc())
    ).all()
    recent_attempts = db.session.scalars(
        select(ConnectAttempt)
        .where(ConnectAttempt.user_id == g.user.id)
        .order_by(ConnectAttempt.created_at.desc())
        .limit(5)
    ).all()
    for attempt in recent_attempts:
        # Expiry only: a dashboard must not wait on Terra (userInfo) once per listed attempt.
        if attempts.expire_if_due(attempt):
            db.session.commit()
    return render_template("connect/dashboard.html", connections=user_connections, attempts=recent_attempts)


@bp.post("/connections/connect")
@login_required
@connect_rate_limit(lambda: g.user.id)
def connect():
    """Start a widget session and send the browser to it (303: the next request is a GET)."""
    try:
        attempt = attempts.start_widget_attempt(g.user, channel="web")
    except TerraError as error:
        current_app.logger.warning("widget session failed: %s", error)
        flash(f"Could not start a connection: {error}")
        return redirect(url_for("connect.dashboard"), code=303)
    return redirect(attempt.widget_url, code=303)


@bp.get("/connections/providers")
@login_required
def providers():
    """Custom UI: our own provider list instead of Terra's widget picker."""
    try:
        catalogue = [provider for provider in terra.client.integrations_detailed() if provider.enabled]
    except TerraError as error:
        return render_template("connect/providers.html", providers=[], error=str(error)), 502
    return render_template("connect/providers.html", providers=catalogue, error=None)


@bp.post("/connections/connect/<provider>")
@login_required
@connect_rate_limit(lambda: g.user.id)
def connect_provider(provider: str):
    if not PROVIDER_CODE.fullmatch(provider):
        abort(404, description="Unknown provider.")
    try:
        attempt = attempts.start_provider_attempt(g.user, provider)
    except TerraNotFound:
        abort(404, description="Terra does not offer this provider.")
    except TerraError as error:
        flash(f"Could not start a connection: {error}")
        return redirect(url_for("connect.providers"), code=303)
    return redirect(attempt.widget_url, code=303)


@bp.get("/connect/return/success/<token>")
def return_success(token: str):
    return _return_page(token, AttemptHint.RETURNED_SUCCESS)


@bp.get("/connect/return/failure/<token>")
def return_failure(token: str):
    return _return_page(token, AttemptHint.RETURNED_FAILURE)


def _return_page(token: str, hint: AttemptHint):
    """Where Terra sends the browser back. The query string is a hint; the page shows the truth."""
    attempt = record_return_visit(token, hint)
    if signed_in_as_someone_else(attempt):
        return render_template("connect/return.html", another_account=True)
    if hint == AttemptHint.RETURNED_SUCCESS:
        # Terra's guidance: reconcile on the success redirect, the webhook may not have landed yet.
        # Throttled like the dashboard: the page's own userInfo check follows USERINFO_CHECK_AFTER_SECONDS.
        reconciliation.reconcile_if_due(db.session.get(User, attempt.user_id), terra.client)
    attempts.refresh(attempt)
    status_url = url_for("connect.attempt_status", attempt=token)
    return render_template("connect/return.html", attempt=attempt, status_url=status_url)


def record_return_visit(token: str, hint: AttemptHint) -> ConnectAttempt:
    """What both return pages, web and mobile (mobile_redirects/views.py), do first.

    The signed attempt token in the URL is the capability: it alone names the attempt, and a browser
    with no session at all (an in-app browser) is served in full. Whoever holds it may record the
    return hint, which is advisory: an outcome needs a verified webhook or a userInfo check against
    the attempt owner's reference_id, so a visit cannot move a connection to anyone. 404 for a token
    that is not valid.
    """
    try:
        return attempts.record_return(token, hint, claimed_terra_user_id(), claimed_resource())
    except attempts.AttemptNotFound as error:
        abort(404, description=f"This connection link is not valid ({error}).")


def signed_in_as_someone_else(attempt: ConnectAttempt) -> bool:
    """A browser signed in as another account than the attempt's owner is told the link is not
    theirs and shown none of the attempt's state: someone who finished an attacker's widget or
    followed an attacker's link must not read "Connected" as news about their own account."""
    return g.user is not None and g.user.id != attempt.user_id


@bp.get("/connect/attempts/status")
def attempt_status():
    """JSON state for the return page's live update, authorised by the signed attempt token."""
    try:
        attempt = attempts.attempt_from_token(request.args.get("attempt"))
        if signed_in_as_someone_else(attempt):
            raise attempts.AttemptNotFound("unknown attempt")
    except attempts.AttemptNotFound as error:
        abort(404, description=f"This connection link is not valid ({error}).")
    response = jsonify(attempts.refresh(attempt).to_dict())
    response.headers["Cache-Control"] = "no-store"
    return response


def claimed_terra_user_id() -> str | None:
    """The Terra user id a return redirect claims (a hint, checked later), or None when it is not
    text the database can keep (`%00`)."""
    value = request.args.get("user_id")
    return value if value is not None and storable_text(value) else None


def claimed_resource() -> str | None:
    """The provider code a return redirect names (`resource`), or None when it does not look like one."""
    value = request.args.get("resource", "").upper()
    return value if PROVIDER_CODE.fullmatch(value) else None


@bp.post("/connections/<int:connection_id>/disconnect")
@login_required
def disconnect(connection_id: int):
    connection = db.session.get(Connection, connection_id) if connection_id <= MAX_ROW_ID else None
    if connection is None or connection.user_id != g.user.id:
        abort(404, description="No such connection.")
    try:
        connections.disconnect(connection, terra.client)
    except TerraError as error:
        flash(f"Could not disconnect {connection.provider}: {error}")
        return redirect(url_for("connect.dashboard"), code=303)
    flash(f"{connection.provider} is disconnected.")
    return redirect(url_for("connect.dashboard"), code=303)
