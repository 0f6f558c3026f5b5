"""Terra's server-to-server endpoints: widget sessions (new and legacy) and the REST v2 paths the
app uses. REST paths answer under both `/sandbox/v2/...` (Terra's old host, `{status, message}`
errors) and `/sandbox/api/v2/...` (its new host, problem+json errors)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps

from flask import current_app, jsonify, request
from sqlalchemy import select

from extensions import db
from sandbox import providers as catalogue
from sandbox.blueprint import bp
from sandbox.errors import TerraApiError, render_terra_error
from sandbox.faults import check_fault_names, terra_endpoint
from sandbox.flows import start_flow, user_cap_reached
from sandbox.models import FlowKind, SandboxSession, SandboxUser, new_uuid, terra_timestamp
from sandbox.user_events import send_user_event
from sandbox.validation import FlowOptions, json_object_body, parse_flow_options
from services.public_urls import public_url

NEW_WIDGET_SESSION_URL = "https://access.tryterra.co/api/widget/session"

bp.register_error_handler(TerraApiError, render_terra_error)
# Every sandbox request may carry X-Sandbox-Fault; a fault name the sandbox does not know is refused.
bp.before_request(check_fault_names)


def rest_route(rule: str, **options) -> Callable:
    """Register a REST v2 path on both host layouts, as a Terra endpoint (switchable faults apply)."""

    def decorator(view: Callable) -> Callable:
        faultable = terra_endpoint(view)
        bp.add_url_rule("/v2" + rule, view_func=faultable, **options)
        bp.add_url_rule("/api/v2" + rule, view_func=faultable, **options)
        return view

    return decorator


def require_credentials(status: int) -> Callable:
    """Check `dev-id` and `x-api-key` against the sandbox's credentials. Terra's widget API answers
    403 for bad credentials; its REST API answers 401."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def checked(*args, **kwargs):
            dev_id = request.headers.get("dev-id", "")
            api_key = request.headers.get("x-api-key", "")
            if not dev_id or not api_key:
                raise TerraApiError(status, "dev-id or x-api-key headers are missing")
            # `&`, not `and`: compare both so the time taken does not say which one was wrong.
            if not (
                hmac.compare_digest(dev_id.encode(), current_app.config["TERRA_DEV_ID"].encode())
                & hmac.compare_digest(api_key.encode(), current_app.config["TERRA_API_KEY"].encode())
            ):
                raise TerraApiError(status, "invalid dev-id or x-api-key")
            return view(*args, **kwargs)

        return checked

    return decorator


# -- widget sessions ------------------------------------------------------------------------------


@bp.post("/api/widget/session")
@bp.post("/widget/api/session")  # the path in Terra's OpenAPI file; its docs use the one above
@terra_endpoint
@require_credentials(403)
def create_widget_session():
    session, options = _start_widget_session()
    # 200 as Terra's widget spec says; SANDBOX_WIDGET_SESSION_STATUS=201 as a third-party mock answers.
    status = int(current_app.config["SANDBOX_WIDGET_SESSION_STATUS"])
    return jsonify(_session_answer(session) | {"warnings": options.warnings}), status


@rest_route("/auth/generateWidgetSession", methods=["POST"])
@require_credentials(403)
def generate_widget_session():
    if current_app.config["SANDBOX_LEGACY_GONE"]:
        raise TerraApiError(
            410,
            f"generateWidgetSession is deprecated and not available to this account; use POST {NEW_WIDGET_SESSION_URL}",
        )
    session, _ = _start_widget_session()
    return jsonify(_session_answer(session))


def _start_widget_session() -> tuple[SandboxSession, FlowOptions]:
    options = parse_flow_options(json_object_body(required=True), with_providers=True)
    _refuse_when_capped()
    session = start_flow(FlowKind.WIDGET, options, current_app.config, provider_codes=options.providers)
    return session, options


def _session_answer(session: SandboxSession) -> dict:
    return {
        "session_id": session.id,
        "url": _widget_url(session),
        "status": "success",
        "expires_in": current_app.config["SANDBOX_SESSION_TTL_SECONDS"],
    }


def _widget_url(session: SandboxSession) -> str:
    return public_url("sandbox.widget_page", session_id=session.id)


def _refuse_when_capped() -> None:
    # Only in "session" mode; by default the cap bites inside the widget, as a failed flow.
    config = current_app.config
    if config["SANDBOX_USER_CAP_MODE"] == "session" and user_cap_reached(config):
        raise TerraApiError(
            403,
            f"User limit reached: this environment allows {config['SANDBOX_USER_CAP']} connected users. "
            "Deauthenticate test users to free slots.",
        )


# -- authentication -------------------------------------------------------------------------------


@rest_route("/auth/authenticateUser", methods=["POST"])
@require_credentials(401)
def authenticate_user():
    resource = request.args.get("resource", "").strip()
    if not resource:
        raise TerraApiError(400, "resource query parameter is required")
    provider = catalogue.connectable(resource)
    if provider is None:
        raise TerraApiError(404, f"unknown resource {resource}")
    options = parse_flow_options(json_object_body(required=False), with_providers=False)
    _refuse_when_capped()
    user_id = new_uuid()  # the id of the user "being created", known before the user logs in
    session = start_flow(
        FlowKind.AUTHENTICATE, options, current_app.config, provider_codes=[provider.code], user_id=user_id
    )
    # Terra's auth_url is the provider's own login page, not its widget: the sandbox's provider login step.
    auth_url = public_url("sandbox.widget_login", session_id=session.id, provider=provider.code)
    return jsonify(status="success", user_id=user_id, auth_url=auth_url)


@rest_route("/auth/deauthenticateUser", methods=["DELETE"])
@require_credentials(401)
def deauthenticate_user():
    user = _user_or_404(request.args.get("user_id"))
    # Terra deletes a deauthenticated user, so a second call finds nothing.
    if not user.active:
        raise TerraApiError(404, "user not found")
    if current_app.config["SANDBOX_DEAUTH_WEBHOOK"]:
        send_user_event(user, "deauth", current_app.config)
    else:  # Terra does not say that a deauth webhook follows: the caller's 200 is then all it hears
        user.active = False
        db.session.commit()
    return jsonify(status="success")


# -- users ----------------------------------------------------------------------------------------


@rest_route("/userInfo", methods=["GET"])
@require_credentials(401)
def user_info():
    user_id = request.args.get("user_id")
    reference_id = request.args.get("reference_id")
    if user_id:
        user = _user_or_404(user_id)
        details = user.to_terra() | {
            "last_polled_at": None,  # the sandbox never polls providers
            "most_recent_data_at": terra_timestamp(user.last_webhook_update),
        }
        return jsonify(user=details, status="success", is_authenticated=user.active)
    if reference_id:
        users = db.session.scalars(
            select(SandboxUser).where(SandboxUser.reference_id == reference_id).order_by(SandboxUser.created_at)
        )
        listed = [user.to_terra() for user in users]
        # Terra's spec answers a bare array; one of Terra's own examples reads `{"users": [...]}`.
        if current_app.config["SANDBOX_USERINFO_SHAPE"] == "object":
            return jsonify(users=listed)
        return jsonify(listed)
    raise TerraApiError(400, "user_id or reference_id query parameter is required")


@rest_route("/subscriptions", methods=["GET"])
@require_credentials(401)
def subscriptions():
    users = db.session.scalars(select(SandboxUser).where(SandboxUser.active.is_(True)).order_by(SandboxUser.created_at))
    return jsonify(users=[user.to_terra() for user in users])


def _user_or_404(user_id: str | None) -> SandboxUser:
    if not user_id:
        raise TerraApiError(400, "user_id query parameter is required")
    user = db.session.get(SandboxUser, user_id)
    if user is None:
        raise TerraApiError(404, "user not found")
    return user


# -- integrations (public) ------------------------------------------------------------------------


@rest_route("/integrations", methods=["GET"])
def integrations():
    return jsonify(
        providers=[provider.code for provider in catalogue.web_providers()],
        sdk_providers=[provider.code for provider in catalogue.sdk_providers()],
        status="success",
    )


@rest_route("/integrations/detailed", methods=["GET"])
def integrations_detailed():
    # With the account's dev-id Terra lists only what the account has enabled; without it, everything.
    known_account = request.headers.get("dev-id") == current_app.config["TERRA_DEV_ID"]
    listed = catalogue.web_providers(enabled_only=known_account)
    if request.args.get("sdk", "").lower() == "true":
        listed += catalogue.sdk_providers()
    return jsonify(status="success", providers=[provider.to_detailed() for provider in listed])
