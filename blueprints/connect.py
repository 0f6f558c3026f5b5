"""Web pages of the connect flow: dashboard, connect (widget or one provider), return pages, disconnect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from blueprints.auth import login_required
from extensions import db, limiter, terra
from mobile_redirects.deep_links import is_webview
from models import ConnectAttempt, ConnectionStatus, DataRequest, DataRequestStatus, User, WebhookEvent
from models.connect_attempt import AttemptHint, reason_text
from services import attempts, connection_data, connections, data_requests, reconciliation, return_visits
from services.providers import is_provider_code, provider_label, provider_name
from services.steps_chart import StepsChart, steps_chart
from terra_integration import inbox
from terra_integration.client import TerraError, TerraNotFound

bp = Blueprint("connect", __name__)
HISTORY_BUTTON_DAYS = 30


@bp.context_processor
def _in_webview() -> dict:
    # The connect button warns a browser that is an embedded WebView (a social app's, say): providers
    # refuse to sign in there (docs/mobile.md, "Never use a WebView").
    return {"in_webview": is_webview(request.user_agent.string)}


bp.add_app_template_filter(reason_text, "reason_text")
bp.add_app_template_filter(provider_name, "provider_name")
bp.add_app_template_global(provider_label, "provider_label")


def connect_rate_limit(user_id: Callable[[], int]):
    """Starting a connect attempt spends a widget session (or authenticateUser call) of the
    customer's Terra quota, so it is limited per user (not per address: many phones share a carrier's),
    in one budget shared by the web pages and the API, before Terra is called. Counts live in
    RATELIMIT_STORAGE_URI, like the login limit. `user_id` names the caller once authenticated."""
    return per_user_limit("CONNECT_RATE_LIMIT", "connect-attempts", "connections started", user_id)


def data_request_rate_limit(user_id: Callable[[], int]):
    """Asking Terra for history spends the user's hourly budget of requested days at Terra: limited
    per user like connecting, in one budget for the dashboard's button and the API."""
    return per_user_limit("DATA_REQUEST_RATE_LIMIT", "data-requests", "history requests", user_id)


def per_user_limit(setting: str, scope: str, what: str, user_id: Callable[[], int]):
    def rate() -> str:
        return current_app.config[setting]

    return limiter.shared_limit(
        rate,
        scope=scope,
        key_func=lambda: f"user:{user_id()}",
        error_message=lambda: f"Too many {what}: the limit is {rate()}. Please wait and try again.",
    )


@bp.get("/")
def index():
    if g.user is not None:
        return redirect(url_for("connect.dashboard"))
    return render_template("connect/index.html")


@bp.get("/connections")
@login_required
def dashboard():
    terra_check_failed = reconciliation.reconcile_if_due(g.user, terra.client) is not None
    user_connections = connections.owned_connections(g.user.id)
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
    details = {
        connection.id: ConnectionDetails(
            chart=steps_chart(connection_data.recent_steps(connection)),
            timeline=connection_data.timeline(connection),
            data_request=data_requests.latest(connection),
        )
        for connection in user_connections
    }
    return render_template(
        "connect/dashboard.html",
        connections=user_connections,
        attempts=recent_attempts,
        details=details,
        is_operator=connection_data.is_operator(g.user),
        terra_check_failed=terra_check_failed,
    )


@dataclass(frozen=True)
class ConnectionDetails:
    """What the dashboard shows under a connection: its steps chart, its webhook timeline, and where
    its latest history request stands."""

    chart: StepsChart
    timeline: list[WebhookEvent]
    data_request: DataRequest | None


def _owned_connection_or_404(connection_id: int):
    try:
        return connections.owned_connection(g.user.id, connection_id)
    except connections.ConnectionNotFound:
        abort(404, description="No such connection.")


@bp.post("/connections/<int:connection_id>/events/<int:event_id>/replay")
@login_required
def replay_event(connection_id: int, event_id: int):
    """An operator (OPERATOR_EMAILS) applies a failed webhook event of their connection again, as
    `flask webhooks replay` does. Others: 403; an event or connection that is not theirs: 404."""
    if not connection_data.is_operator(g.user):
        abort(403, description="Only operators (OPERATOR_EMAILS) can replay webhook events.")
    connection = _owned_connection_or_404(connection_id)
    event = connection_data.timeline_event(connection, event_id)
    if event is None:
        abort(404, description="No such webhook event.")
    outcome = inbox.apply_recorded(event)
    flash(f"Replayed the {event.event_type} event: {outcome}." + (f" {event.detail}" if event.detail else ""))
    return redirect(url_for("connect.dashboard", _anchor=f"connection-{connection.id}-data"), code=303)


@bp.post("/connections/<int:connection_id>/data-requests")
@login_required
@data_request_rate_limit(lambda: g.user.id)
def request_history(connection_id: int):
    """The dashboard's history button: ask Terra for the last HISTORY_BUTTON_DAYS days, as the API's
    `POST /api/v1/connections/<id>/data-requests` does, and say on the page what happened."""
    try:
        connection = connections.owned_connection(g.user.id, connection_id)
    except connections.ConnectionNotFound:
        abort(404, description="No such connection.")
    name = provider_name(connection.provider)
    try:
        days, types = data_requests.check_request(HISTORY_BUTTON_DAYS, None)
        request_row = data_requests.ask_for_history(connection, days, types, terra.client)
    except data_requests.InvalidDataRequest as error:
        flash(f"Could not ask Terra for {name}'s history: {error}", "error")
    else:
        if request_row.status == DataRequestStatus.SENT:
            flash(f"Asked Terra for {days} days of {name} history: it arrives in the chart within moments.")
        elif request_row.status == DataRequestStatus.THROTTLED:
            flash(
                f"Terra is busy with {name}'s earlier requests: the app asks again at {request_row.retry_at:%H:%M} UTC."
            )
        else:
            flash(f"Could not ask Terra for {name}'s history: {request_row.detail}", "error")
    return redirect(url_for("connect.dashboard", _anchor=f"connection-{connection.id}-data"), code=303)


@bp.post("/connections/connect")
@login_required
@connect_rate_limit(lambda: g.user.id)
def connect():
    """Start a widget session and send the browser to it (303: the next request is a GET)."""
    try:
        attempt = attempts.start_widget_attempt(g.user, channel="web")
    except TerraError as error:
        current_app.logger.warning("widget session failed: %s", error)
        flash(f"Could not start a connection: {error}", "error")
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
    if not is_provider_code(provider):
        abort(404, description="Unknown provider.")
    try:
        attempt = attempts.start_provider_attempt(g.user, provider)
    except TerraNotFound:
        abort(404, description="Terra does not offer this provider.")
    except TerraError as error:
        flash(f"Could not start a connection: {error}", "error")
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
    attempt = return_visits.record_visit(token, hint, request.args)
    if return_visits.signed_in_as_someone_else(attempt, g.user):
        return render_template("connect/return.html", another_account=True)
    if hint == AttemptHint.RETURNED_SUCCESS:
        # Terra's guidance: reconcile on the success redirect, the webhook may not have landed yet.
        # Throttled like the dashboard: the page's own userInfo check follows USERINFO_CHECK_AFTER_SECONDS.
        reconciliation.reconcile_if_due(db.session.get(User, attempt.user_id), terra.client)
    attempts.refresh(attempt)
    status_url = url_for("connect.attempt_status", attempt=token)
    return render_template("connect/return.html", attempt=attempt, status_url=status_url)


@bp.get("/connect/attempts/status")
def attempt_status():
    """JSON state for the return page's live update, authorised by the signed attempt token."""
    try:
        attempt = attempts.attempt_from_token(request.args.get("attempt"))
    except attempts.AttemptNotFound as error:
        raise return_visits.InvalidReturnLink(error) from None
    if return_visits.signed_in_as_someone_else(attempt, g.user):
        raise return_visits.InvalidReturnLink("unknown attempt")
    response = jsonify(attempts.refresh(attempt).to_dict())
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/connections/<int:connection_id>/disconnect")
@login_required
def confirm_disconnect(connection_id: int):
    """Disconnecting cannot be undone, so the dashboard's Disconnect leads here first: a page, not a
    script's dialog, so that it works without JavaScript."""
    connection = _owned_connection_or_404(connection_id)
    if connection.status == ConnectionStatus.REVOKED:
        flash(f"{provider_name(connection.provider)} is already disconnected.")
        return redirect(url_for("connect.dashboard"), code=303)
    return render_template("connect/disconnect.html", connection=connection)


@bp.post("/connections/<int:connection_id>/disconnect")
@login_required
def disconnect(connection_id: int):
    connection = _owned_connection_or_404(connection_id)
    if request.form.get("confirm") != "yes":
        # Only the confirmation page's button says yes: any other post is sent there to be asked.
        return redirect(url_for("connect.confirm_disconnect", connection_id=connection.id), code=303)
    try:
        connections.disconnect(connection, terra.client)
    except TerraError as error:
        flash(f"Could not disconnect {provider_name(connection.provider)}: {error}", "error")
        return redirect(url_for("connect.dashboard"), code=303)
    flash(f"{provider_name(connection.provider)} is disconnected. The app receives none of its data from now on.")
    return redirect(url_for("connect.dashboard"), code=303)
