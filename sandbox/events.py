"""Webhook event bodies, shaped like Terra's (contract §6). Pure functions: no database, no sending."""

from __future__ import annotations

from sandbox.models import FlowKind, SandboxSession, SandboxUser
from sandbox.sample_data import athlete_profile, sample_items

API_VERSION = "2022-03-16"


def _widget_session_id(session: SandboxSession) -> str | None:
    # Only widget flows have a widget session; authenticateUser flows are known by flow_id alone.
    return session.id if session.kind == FlowKind.WIDGET else None


def auth_success(user: SandboxUser, session: SandboxSession | None, *, flow_id: str | None) -> dict:
    """`session` None: a user the mobile SDK registered (initConnection), which no widget flow started."""
    return {
        "type": "auth",
        "status": "success",
        "message": "User has successfully authenticated",
        "reference_id": user.reference_id,
        "widget_session_id": _widget_session_id(session) if session else None,
        "flow_id": flow_id,
        "version": API_VERSION,
        "user": user.to_terra(),
    }


def user_reauth(new_user: SandboxUser, old_user: SandboxUser) -> dict:
    return {
        "type": "user_reauth",
        "status": "warning",
        "message": "User has reauthenticated and old ID has been deleted",
        "version": API_VERSION,
        "new_user": new_user.to_terra(),
        "old_user": old_user.to_terra(),
    }


def auth_failure(
    shape: str, session: SandboxSession, *, flow_id: str, provider: str, reason: str, user_id: str
) -> dict:
    """The failed-authentication event in the 2026 shape (`auth_cancelled`) or the older one
    (`auth` with status `error`, which still names the user that was being created)."""
    if shape == "auth_cancelled":
        return {
            "type": "auth_cancelled",
            "status": "error",
            "flow_id": flow_id,
            "reason": reason,
            "reference_id": session.reference_id,
        }
    return {
        "type": "auth",
        "status": "error",
        "message": "User failed to authenticate and has been deleted",
        "reason": reason,
        "reference_id": session.reference_id,
        "widget_session_id": _widget_session_id(session),
        "version": API_VERSION,
        "user": {
            "user_id": user_id,
            "provider": provider,
            "created_at": None,
            "last_webhook_update": None,
            "scopes": None,
            "reference_id": session.reference_id,
            "active": False,
        },
    }


def deauth(user: SandboxUser) -> dict:
    return {"type": "deauth", "status": "success", "message": "User has deauthenticated", "user": user.to_terra()}


def access_revoked(user: SandboxUser) -> dict:
    return {"type": "access_revoked", "status": "warning", "message": "User revoked access", "user": user.to_terra()}


def connection_error(user: SandboxUser) -> dict:
    return {
        "type": "connection_error",
        "status": "warning",
        "message": "Connection degraded: the provider rejected Terra's access token; "
        "the user may need to reauthenticate",
        "user": user.to_terra(),
    }


def permission_change(user: SandboxUser, *, added: list[str], removed: list[str]) -> dict:
    return {
        "type": "permission_change",
        "status": "warning",
        "message": "User permissions have been modified",
        "version": API_VERSION,
        "scopes_added": ",".join(added),
        "scopes_removed": ",".join(removed),
        "user": user.to_terra(),
    }


def data_event(kind: str, user: SandboxUser, items: list[dict] | None = None) -> dict:
    """A data event of `kind` carrying `items` (by default one sample item for today)."""
    items = sample_items(kind) if items is None else items
    return {"type": kind, "user": user.to_terra(), "data": items, "version": API_VERSION}


def athlete(user: SandboxUser) -> dict:
    # The one data event with an object instead of a `data` array.
    return {
        "type": "athlete",
        "user": user.to_terra(),
        "athlete": athlete_profile(user.account),
        "version": API_VERSION,
    }


def large_request_processing(user: SandboxUser, reference: str) -> dict:
    return {
        "type": "large_request_processing",
        "status": "processing",
        "reference": reference,
        "message": "Large request is being processed; payloads will be delivered when ready",
        "user": user.to_terra(),
    }


def large_request_sending(user: SandboxUser, reference: str, expected_payloads: int) -> dict:
    return {
        "type": "large_request_sending",
        "reference": reference,
        "message": "Large request payloads are being sent",
        "expected_payloads": expected_payloads,
        "user": user.to_terra(),
    }
