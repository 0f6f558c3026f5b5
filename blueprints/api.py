"""The mobile app's JSON API, version 1: bearer tokens, connect attempts and their status, connections.

Every answer is JSON with `Cache-Control: no-store`; every error is `{"error": {"code", "message"}}`.
Authentication is the bearer token only: no session cookie is read and no CSRF token is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

from authlib.integrations.flask_oauth2 import current_token
from flask import Blueprint, Response, current_app, jsonify, request, url_for
from werkzeug.datastructures import ETags

from blueprints.auth import sign_in_account_limit
from blueprints.connect import connect_rate_limit, data_request_rate_limit
from extensions import csrf, db, limiter, terra
from mobile_redirects.deep_links import CALLBACKS, DeepLinkNotConfigured, direct_link
from models import AttemptStatus, ConnectAttempt, Connection, User
from models.connect_attempt import ATTEMPT_ID, attempt_dict
from models.data_request import DataRequestStatus
from services import accounts, api_tokens, attempts, connection_data, connections, long_poll, reconciliation
from services.api_tokens import require_token
from services.data_requests import InvalidDataRequest, ask_for_history, check_request
from services.json_errors import json_error
from services.providers import UnknownProviders, require_offered
from terra_integration.client import TerraError
from terra_integration.text_checks import storable_json

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)

WHOLE_SECONDS = re.compile(r"[0-9]+")  # fullmatch
LANGUAGE = re.compile(r"[a-z]{2,3}([_-][A-Za-z]{2,4})?")  # whole value (fullmatch): no trailing newline
OPENAPI_DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@bp.errorhandler(ApiError)
def handle_api_error(error: ApiError):
    return json_error(error.status, error.code, error.message, error.headers)


def json_object() -> dict | None:
    """The body if it is a JSON object, else None."""
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON parser goes ("silent" does not cover it)
        return None
    return data if request.is_json and isinstance(data, dict) else None


def json_body() -> dict:
    data = json_object()
    if data is None:
        raise ApiError(400, "invalid_request", "the body must be a JSON object (Content-Type: application/json)")
    if not storable_json(data):
        raise ApiError(400, "invalid_request", "the body must not contain NUL characters or lone surrogates")
    return data


def caller() -> User:
    return db.session.get(User, current_token.user_id)


def caller_id() -> int:
    # The token row already names its owner: no need to load the user just to compare ids.
    return current_token.user_id


# -- tokens ---------------------------------------------------------------------------------


@bp.post("/tokens")
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"])
@sign_in_account_limit(lambda: (json_object() or {}).get("email"))
def create_token():
    data = json_body()
    email, password = data.get("email"), data.get("password")
    if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
        raise ApiError(400, "invalid_request", "email and password are required strings")
    user = accounts.find_user_by_credentials(email, password)
    if user is None:
        raise ApiError(401, "invalid_credentials", "email or password is not right")
    token, lifetime = api_tokens.issue_token(user)
    return jsonify(access_token=token, token_type="Bearer", expires_in=lifetime), 201


@bp.delete("/tokens/current")
@require_token()
def revoke_current_token():
    api_tokens.revoke(current_token._get_current_object())
    return Response(status=204)


# -- connect attempts -----------------------------------------------------------------------


@bp.post("/connect-attempts")
@require_token()
@connect_rate_limit(caller_id)
def create_attempt():
    # Every field is optional, and null is the same as leaving it out (docs/openapi.json): a generated
    # client may send `"language": null` for a field its caller did not set.
    data = json_body()
    providers = _providers(data.get("providers"))
    language = data.get("language")
    if language is not None and (not isinstance(language, str) or not LANGUAGE.fullmatch(language)):
        raise ApiError(400, "invalid_language", "language must be a code such as en or zh_cn")
    return_mode = data.get("return")
    if return_mode is None:
        return_mode = current_app.config["MOBILE_REDIRECT_MODE"]
    if return_mode not in ("page", "app"):
        raise ApiError(400, "invalid_return", 'return must be "page" or "app"')
    callback = data.get("callback")
    if callback is None:
        callback = current_app.config["MOBILE_CALLBACK"]
    elif callback not in CALLBACKS:
        raise ApiError(400, "invalid_callback", 'callback must be "scheme" or "https"')
    callback = _callback(callback, return_mode)
    try:
        attempt = attempts.start_widget_attempt(
            caller(),
            channel="mobile",
            return_urls=_mobile_return_urls(return_mode, callback),
            providers=providers,
            language=language,
            return_mode=return_mode,
            callback=callback,
        )
    except TerraError as error:
        raise ApiError(502, error.code, str(error)) from None
    response = jsonify(
        attempt_id=attempt.id,
        url=attempt.widget_url,
        status_url=url_for("api.get_attempt", attempt_id=attempt.id, _external=False),
        expires_at=attempt.to_dict()["expires_at"],
        poll_after_ms=current_app.config["STATUS_POLL_AFTER_MS"],
        callback=callback,
    )
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_attempt", attempt_id=attempt.id)
    return response


def _providers(value) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise ApiError(400, "invalid_providers", "providers must be a non-empty list of provider codes")
    try:
        # Case-insensitive here (docs/openapi.json). SDK-only providers too: Terra's widget offers
        # them, and hands the user back to the app.
        return require_offered([item.upper() for item in value], terra.client, include_sdk=True)
    except UnknownProviders as error:
        raise ApiError(400, "unknown_provider", str(error)) from None
    except TerraError as error:
        raise ApiError(502, error.code, str(error)) from None


def _callback(callback, return_mode: str) -> str | None:
    """The link the app's in-app browser catches, checked against what the server can build. None
    only for a page-mode attempt on a server with no link at all (its return page says so)."""
    if callback is None and return_mode == "page":
        return None
    try:
        direct_link(current_app.config, callback, "success")
    except DeepLinkNotConfigured:
        needed = {
            None: "return=app needs MOBILE_APP_SCHEME or MOBILE_UNIVERSAL_LINK_BASE",
            "scheme": "callback=scheme needs MOBILE_APP_SCHEME",
            "https": "callback=https needs MOBILE_UNIVERSAL_LINK_BASE",
        }[callback]
        raise ApiError(409, "deep_link_not_configured", f"{needed} on the server") from None
    return callback


def _mobile_return_urls(return_mode: str, callback: str | None):
    def urls(attempt: ConnectAttempt) -> tuple[str, str]:
        if return_mode == "app":
            # Terra redirects straight into the app and appends its query parameters to the link.
            return (
                direct_link(current_app.config, callback, "success"),
                direct_link(current_app.config, callback, "failure"),
            )
        return attempts.return_page_urls(attempt, "mobile")

    return urls


def _count_poll(attempt_id: str) -> None:
    retry_after = long_poll.count_poll(caller_id(), attempt_id)
    if retry_after is not None:
        raise ApiError(
            429,
            "too_many_requests",
            f"status polls are limited to {current_app.config['STATUS_RATE_LIMIT']}; see poll_after_ms",
            headers={"Retry-After": str(retry_after)},
        )


@bp.record_once
def _create_poll_state(state) -> None:
    long_poll.init_app(state.app)


@bp.get("/connect-attempts/<attempt_id>")
@require_token()
def get_attempt(attempt_id: str):
    _count_poll(attempt_id)
    wait = _wait_seconds()
    if request.if_match:
        # Rare (an app that must not act on a stale state): judged on the attempt brought up to date.
        _require_if_match(attempts.refresh(_owned_attempt(attempt_id)))
    if request.if_none_match or wait:
        # Most conditional polls find nothing new: decide that from the attempt's poll state (as
        # this worker keeps it, services/attempt_states.py), and build the attempt only when there is
        # news. Most of those polls never get here: blueprints/status_fast_path.py answers them.
        state = _owned(attempts.owned_poll_state, attempt_id)
        # Without If-None-Match, a long-poll waits for news after the version it finds; with one
        # that names an older version, the caller is behind and gets the state at once.
        unchanged = not attempts.change_due(state) and (
            not request.if_none_match or etag_matches(request.if_none_match, state)
        )
        if unchanged:
            held = wait and state.status == AttemptStatus.PENDING
            changed = held and _wait_for_change(attempt_id, state.version, wait)
            if not changed and request.if_none_match:
                return _not_modified(state)
            # No If-None-Match: a wait that saw no change answers 200 with the same state, so a
            # client (a generated one, say) can long-poll without handling 304.
    attempt = attempts.refresh(_owned_attempt(attempt_id))
    if etag_matches(request.if_none_match, attempt):
        return _not_modified(attempt)
    return _attempt_response(attempt)


def _wait_for_change(attempt_id: str, version: int, wait: float) -> bool:
    """`long_poll.wait_for_change` in one of the caller's long-poll slots; past the cap, 429 at once."""
    try:
        with long_poll.caller_slot(current_token.id, caller_id()) as may_wait:
            return may_wait and long_poll.wait_for_change(attempt_id, version, wait)
    except long_poll.TooManyWaits:
        raise ApiError(
            429,
            "too_many_long_polls",
            f"this token or its user already holds {current_app.config['STATUS_MAX_WAITERS_PER_TOKEN']} "
            "long-polls (STATUS_MAX_WAITERS_PER_TOKEN) or "
            f"{current_app.config['STATUS_MAX_WAITERS_PER_USER']} (STATUS_MAX_WAITERS_PER_USER); "
            "poll one attempt at a time",
            headers={"Retry-After": str(math.ceil(current_app.config["STATUS_POLL_AFTER_MS"] / 1000))},
        ) from None


def _wait_seconds() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0
    # ASCII digits only: int() would also take "٣", " 5" and "+5".
    if not WHOLE_SECONDS.fullmatch(raw):
        raise ApiError(400, "invalid_wait", "wait must be a whole number of seconds (digits 0-9 only)")
    digits = raw.lstrip("0") or "0"  # leading zeros are harmless; thousands of digits are not worth int()
    if len(digits) > 2 or int(digits) > long_poll.MAX_WAIT_SECONDS:
        raise ApiError(400, "invalid_wait", f"wait must be between 0 and {long_poll.MAX_WAIT_SECONDS} seconds")
    return int(digits)


def _etag(attempt) -> str:
    return str(attempt.version)


def etag_matches(if_none_match: ETags, attempt) -> bool:
    """Whether If-None-Match names the attempt's current version (or is `*`): then nothing is new
    (304). Weak comparison, as RFC 9110 prescribes for If-None-Match: a compressing proxy (nginx's
    gzip) turns our "3" into W/"3", and that must still match, or long-polling silently stops."""
    return if_none_match.contains_weak(_etag(attempt))


def status_body(attempt, connection: Connection | None, config: Mapping) -> dict:
    """The status answer's JSON: the attempt, and when to poll again while it is pending."""
    body = attempt_dict(attempt, connection)
    body["poll_after_ms"] = None if body["terminal"] else config["STATUS_POLL_AFTER_MS"]
    return body


def _require_if_match(attempt) -> None:
    """RFC 9110 §13.1.1: an If-Match naming none of the attempt's current version (strong comparison:
    `W/"3"` never matches) is a 412, and nothing is done. `*` matches any attempt."""
    if not request.if_match.contains(_etag(attempt)):
        raise ApiError(
            412,
            "precondition_failed",
            f"If-Match names another version; the attempt is at version {attempt.version} (its ETag)",
            headers={"ETag": f'"{_etag(attempt)}"'},
        )


def _not_modified(attempt) -> Response:
    response = Response(status=304)
    response.set_etag(_etag(attempt))
    return response


def _attempt_response(attempt: ConnectAttempt, status: int = 200) -> Response:
    response = jsonify(status_body(attempt, attempt.connection, current_app.config))
    response.status_code = status
    response.set_etag(_etag(attempt))
    return response


@bp.post("/connect-attempts/<attempt_id>/browser-closed")
@require_token()
def browser_closed(attempt_id: str):
    """Recorded and answered with 202, unless If-Match names another version of the attempt (412,
    nothing recorded): an app may so report only what it saw. If-None-Match is ignored: this
    resource has no representation of its own (no GET) to match; the body, ETag and
    Content-Location are those of the attempt."""
    attempt = _owned_attempt(attempt_id)
    if request.if_match:
        _require_if_match(attempts.refresh(attempt))
    attempts.record_browser_closed(attempt)
    db.session.commit()
    response = _attempt_response(attempts.refresh(attempt), status=202)
    response.headers["Content-Location"] = url_for("api.get_attempt", attempt_id=attempt_id)
    return response


def _owned_attempt(attempt_id: str) -> ConnectAttempt:
    return _owned(attempts.owned_attempt, attempt_id)


def _owned(read, attempt_id: str):
    """`read(caller's id, attempt_id)`, or a 404 for an id that is not the caller's."""
    if not ATTEMPT_ID.fullmatch(attempt_id):  # not an id we make; never worth a query (NUL breaks PostgreSQL's)
        raise ApiError(404, "not_found", "no such connect attempt")
    try:
        return read(caller_id(), attempt_id)
    except attempts.AttemptNotFound:
        raise ApiError(404, "not_found", "no such connect attempt") from None


# -- connections ----------------------------------------------------------------------------


@bp.get("/connections")
@require_token()
def list_connections():
    reconciliation.reconcile_if_due(caller(), terra.client)
    return jsonify(connections=[row.to_dict() for row in connections.owned_connections(caller_id())])


@bp.delete("/connections/<int:connection_id>")
@require_token()
def delete_connection(connection_id: int):
    try:
        connection = connections.owned_connection(caller_id(), connection_id)
    except connections.ConnectionNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    try:
        connections.disconnect(connection, terra.client)
    except TerraError as error:
        raise ApiError(502, error.code, f"could not disconnect: {error}") from None
    return jsonify(connection.to_dict())


@bp.get("/connections/<int:connection_id>/summary")
@require_token()
def connection_summary(connection_id: int):
    """What the dashboard shows of the connection's data: when it last arrived, 14 days of steps,
    the latest workout and sleep."""
    try:
        connection = connections.owned_connection(caller_id(), connection_id)
    except connections.ConnectionNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    return jsonify(connection_data.summary(connection))


# -- mobile SDK tokens (Apple Health, Samsung Health, Health Connect) ------------------------


@bp.post("/sdk-tokens")
@require_token()
@connect_rate_limit(caller_id)  # like starting a connect attempt: each token is a call to Terra
def create_sdk_token():
    """A token from Terra's generateAuthToken for the app's mobile SDK (`initConnection`), and the
    caller's reference_id, which the SDK must be set up with so that Terra's `auth` webhook finds
    them. A fresh one from Terra on every call: never cached or reused (each is single use)."""
    try:
        issued = terra.client.generate_auth_token()
    except TerraError as error:
        raise ApiError(502, error.code, str(error)) from None
    return jsonify(token=issued.token, expires_in=issued.expires_in, reference_id=caller().reference_id), 201


# -- history asked of Terra ------------------------------------------------------------------


@bp.post("/connections/<int:connection_id>/data-requests")
@require_token()
@data_request_rate_limit(caller_id)
def create_data_request(connection_id: int):
    """Ask Terra for the connection's last `days` days (`types`: some of daily, activity, sleep, body);
    202: the data arrives by webhook. The answer says where the request stands (sent, or throttled
    until `retry_at`), as the connection's summary does later; 409 when Terra refused it, 502 when
    Terra could not be asked."""
    data = json_body()
    try:
        connection = connections.owned_connection(caller_id(), connection_id)
        days, types = check_request(data.get("days"), data.get("types"))
        request_row = ask_for_history(connection, days, types, terra.client)
    except connections.ConnectionNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except InvalidDataRequest as error:
        raise ApiError(409 if error.code == "connection_revoked" else 400, error.code, str(error)) from None
    if request_row.status == DataRequestStatus.FAILED:
        if request_row.terra_status and 400 <= request_row.terra_status < 500:  # Terra answered: it refused
            raise ApiError(409, "data_request_refused", request_row.detail)
        raise ApiError(502, "data_request_failed", request_row.detail)
    return jsonify(request_row.to_dict()), 202


# -- the API's own description --------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_document():
    return Response(OPENAPI_DOCUMENT.read_bytes(), mimetype="application/json")
