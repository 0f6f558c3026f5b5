"""Things that happen to an existing Terra user after it connected: new data, a degraded or revoked
connection, changed permissions, a deauthentication. Each updates the user, commits, then sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extensions import db
from models.time import utcnow
from sandbox import events
from sandbox import providers as catalogue
from sandbox.delivery import DeliveryThread, deliver
from sandbox.faults import webhook_faults
from sandbox.models import SandboxUser
from sandbox.payloads import ping_event
from sandbox.sample_data import DATA_KINDS

USER_EVENT_TYPES = (*DATA_KINDS, "connection_error", "permission_change", "access_revoked", "deauth")


def send_user_event(user: SandboxUser, kind: str, config: Mapping[str, Any]) -> DeliveryThread:
    """Apply event `kind` (one of USER_EVENT_TYPES) to an active `user` and send its webhook."""
    if kind in DATA_KINDS:
        user.last_webhook_update = utcnow()
        event = events.data_event(kind, user)
        if "s3_payload" in webhook_faults(config):  # a ping-mode destination: a download URL instead
            event = ping_event(event)
    elif kind == "connection_error":
        event = events.connection_error(user)
    elif kind == "permission_change":
        added, removed = _toggle_scopes(user)
        event = events.permission_change(user, added=added, removed=removed)
    elif kind in ("access_revoked", "deauth"):
        # Either way Terra stops serving the user: no more data, and userInfo reports it unauthenticated.
        user.active = False
        event = events.access_revoked(user) if kind == "access_revoked" else events.deauth(user)
    else:
        raise ValueError(f"unknown user event type {kind!r}")
    db.session.commit()
    return deliver([event], config)


def _toggle_scopes(user: SandboxUser) -> tuple[list[str], list[str]]:
    """Withdraw the provider's last scope if granted, otherwise grant every missing one back, so that
    pressing the button repeatedly alternates between a narrower and the full permission set."""
    provider = catalogue.find(user.provider)
    full = list(provider.scopes) if provider else user.scope_list
    granted = user.scope_list
    if full and full[-1] in granted:
        added, removed = [], [full[-1]]
        granted = [scope for scope in granted if scope != full[-1]]
    else:
        added = [scope for scope in full if scope not in granted]
        removed = []
        granted = granted + added
    user.scopes = ",".join(granted)
    return added, removed
