"""Things that happen to an existing Terra user after it connected: new data (one item, or a month's
backfill in chunks), a degraded or revoked connection, changed permissions, a deauthentication. Each
updates the user, commits, then sends."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from extensions import db
from models.time import utcnow
from sandbox import events
from sandbox import providers as catalogue
from sandbox.delivery import DeliveryThread, deliver
from sandbox.faults import webhook_faults
from sandbox.models import SandboxUser
from sandbox.payloads import ping_event
from sandbox.sample_data import DATA_KINDS, history

DATA_EVENT_TYPES = (*DATA_KINDS, "athlete")
CONNECTION_EVENT_TYPES = ("connection_error", "permission_change", "access_revoked", "deauth")
USER_EVENT_TYPES = (*DATA_EVENT_TYPES, *CONNECTION_EVENT_TYPES)
CHUNK_ITEMS = 10  # Terra sends a large request's data in chunks of at most 10 items (or 10 MB)
BACKFILL_DAYS = 30
MAX_BACKFILL_DAYS = 90


def send_user_event(user: SandboxUser, kind: str, config: Mapping[str, Any]) -> DeliveryThread:
    """Apply event `kind` (one of USER_EVENT_TYPES) to an active `user` and send its webhook."""
    if kind in DATA_EVENT_TYPES:
        user.last_webhook_update = utcnow()
        event = _as_delivered(events.athlete(user) if kind == "athlete" else events.data_event(kind, user), config)
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


def send_backfill(user: SandboxUser, days: int, config: Mapping[str, Any]) -> DeliveryThread:
    """The console's button: `days` of history up to today, as a large request."""
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    return send_history(user, DATA_KINDS, tomorrow - timedelta(days=days), tomorrow, config, large=True)


def send_history(
    user: SandboxUser,
    kinds: Iterable[str],
    first_day: date,
    end_day: date,
    config: Mapping[str, Any],
    *,
    large: bool,
    reference: str | None = None,
) -> DeliveryThread:
    """The `kinds` of history of an active `user` from `first_day` up to `end_day` (not included), sent as Terra sends
    the answer to a data request: for a `large` one a `large_request_processing` event and a
    `large_request_sending` event announcing how many payloads follow, then the data in chunks of at
    most CHUNK_ITEMS items. Every delivery carries the same terra-reference (`reference`, or a new
    one); each chunk has its own trace id, `<id>:chunk:<n>`."""
    reference = reference or str(uuid.uuid4())
    items = history(user.user_id, first_day, end_day)
    chunks = [
        _as_delivered(events.data_event(kind, user, items[kind][start : start + CHUNK_ITEMS]), config)
        for kind in kinds
        for start in range(0, max(len(items[kind]), 1), CHUNK_ITEMS)  # nothing to send: one empty chunk
    ]
    chunk_trace = str(uuid.uuid4())
    announcements = (
        [
            events.large_request_processing(user, reference),
            events.large_request_sending(user, reference, expected_payloads=len(chunks)),
        ]
        if large
        else []
    )
    trace_ids = [str(uuid.uuid4()) for _ in announcements] + [
        f"{chunk_trace}:chunk:{n}" for n in range(1, len(chunks) + 1)
    ]
    user.last_webhook_update = utcnow()
    db.session.commit()
    return deliver([*announcements, *chunks], config, terra_reference=reference, trace_ids=trace_ids)


def _as_delivered(event: dict, config: Mapping[str, Any]) -> dict:
    """A data event as the destination receives it: itself, or for a ping-mode destination (the
    `s3_payload` fault) a download URL in its place."""
    return ping_event(event) if "s3_payload" in webhook_faults(config) else event


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
