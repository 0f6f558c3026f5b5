"""Terra's side of the mobile SDK: `generateAuthToken` (a REST v2 path, as Terra serves it) and a
sandbox-only stand-in for the SDK's `initConnection`.

On a phone, Terra's SDK (TerraiOS, TerraAndroid, terra-react) registers the device's health store
(Apple Health, Samsung Health, Health Connect) with Terra using a token the app's backend asked Terra
for, and Terra then sends the `auth` webhook for the new user. The stand-in does what that does, over
HTTP, so that tests and the stand-in mobile client can finish the SDK path without a phone:
`POST /sandbox/sdk/init-connection` with JSON `{"token", "provider", "reference_id", "dev_id"}` (and
an optional `device`, the phone's health store: the same device again under the same reference_id
is a re-authentication, as for a web provider account).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from flask import current_app, jsonify, request
from sqlalchemy import update

from extensions import db
from models.time import utcnow
from sandbox import events
from sandbox import providers as catalogue
from sandbox.api import require_credentials, rest_route
from sandbox.blueprint import bp
from sandbox.delivery import deliver
from sandbox.errors import sandbox_error
from sandbox.flows import FlowProblem, auth_events, create_user, normalise_account
from sandbox.models import SandboxAuthToken, SessionState
from sandbox.validation import MAX_REFERENCE_ID_LENGTH

DEFAULT_DEVICE = "phone"


class TokenProblem(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@rest_route("/auth/generateAuthToken", methods=["POST"])
@require_credentials(404)  # Terra answers an invalid dev-id with 404 here
def generate_auth_token():
    token = secrets.token_hex(32)  # Terra's are 64 hex digits
    lifetime = current_app.config["SANDBOX_AUTH_TOKEN_TTL_SECONDS"]
    now = utcnow()
    db.session.add(
        SandboxAuthToken(
            token_sha256=_digest(token),
            dev_id=request.headers["dev-id"],
            state=SessionState.OPEN,
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime),
        )
    )
    db.session.commit()
    return jsonify(status="success", token=token, expires_in=lifetime)


@bp.post("/sdk/init-connection")
def init_connection():
    """The SDK's initConnection: the token is spent, the Terra user is created, its `auth` webhook
    (after `user_reauth` for a re-authentication) is sent. 201 `{"status", "user"}`."""
    try:
        token, provider, reference_id, dev_id, device = _read_init_body()
        _claim(token, dev_id)
        created = create_user(provider, device, reference_id, current_app.config)
        if created is None:
            raise TokenProblem(
                403,
                "user_limit_reached",
                f"User limit reached: this environment allows {current_app.config['SANDBOX_USER_CAP']} "
                "connected users. Deauthenticate test users to free slots.",
            )
    except TokenProblem as problem:
        db.session.rollback()  # a refused connection leaves its token unspent
        return sandbox_error(problem.status, problem.code, problem.message)
    user, previous = created
    outgoing = auth_events(events.auth_success(user, None, flow_id=None), user, previous, current_app.config)
    db.session.commit()
    deliver(outgoing, current_app.config)
    return jsonify(status="success", user=user.to_terra()), 201


def _read_init_body() -> tuple[str, catalogue.Provider, str | None, str, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise TokenProblem(400, "invalid_request", "Send a JSON object: {token, provider, reference_id, dev_id}.")
    token, dev_id, reference_id = body.get("token"), body.get("dev_id"), body.get("reference_id")
    if not isinstance(token, str) or not token:
        raise TokenProblem(400, "invalid_request", "token is required: the one generateAuthToken answered.")
    if not isinstance(dev_id, str) or not dev_id:
        raise TokenProblem(400, "invalid_request", "dev_id is required: the dev-id the SDK was set up with.")
    provider = catalogue.find(body.get("provider") if isinstance(body.get("provider"), str) else None)
    if provider is None or not provider.sdk_only:
        codes = ", ".join(each.code for each in catalogue.sdk_providers())
        raise TokenProblem(400, "invalid_request", f"provider must be one of {codes}.")
    if reference_id is not None and (not isinstance(reference_id, str) or len(reference_id) > MAX_REFERENCE_ID_LENGTH):
        raise TokenProblem(
            400, "invalid_request", f"reference_id must be a string of at most {MAX_REFERENCE_ID_LENGTH} characters."
        )
    try:
        device = normalise_account(body.get("device", DEFAULT_DEVICE))
    except FlowProblem as problem:
        raise TokenProblem(400, "invalid_request", f"device: {problem.message}") from None
    return token, provider, reference_id or None, dev_id, device


def _claim(token: str, dev_id: str) -> None:
    """Spend the token, atomically: of two simultaneous uses only one goes through."""
    row = db.session.get(SandboxAuthToken, _digest(token))
    if row is None:
        raise TokenProblem(404, "token_not_found", "This token was not issued by generateAuthToken.")
    if not secrets.compare_digest(row.dev_id.encode(), dev_id.encode()):
        raise TokenProblem(403, "token_dev_id_mismatch", "This token was issued to another dev-id.")
    if row.state == SessionState.USED:
        raise TokenProblem(409, "token_used", "This token was already used: ask the backend for a new one.")
    if row.is_expired():
        raise TokenProblem(410, "token_expired", "This token has expired: ask the backend for a new one.")
    claimed = db.session.execute(
        update(SandboxAuthToken)
        .where(SandboxAuthToken.token_sha256 == row.token_sha256, SandboxAuthToken.state == SessionState.OPEN)
        .values(state=SessionState.USED)
    )
    if claimed.rowcount != 1:
        raise TokenProblem(409, "token_used", "This token was already used: ask the backend for a new one.")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
