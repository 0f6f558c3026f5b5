"""What the integration needs from the app it runs in (the host), and where each app keeps it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from flask import current_app
from flask_sqlalchemy import SQLAlchemy

from terra_integration.client import TerraClient
from terra_integration.events import TerraEvent
from terra_integration.models import WebhookEventColumns

# (outcome, detail): an `EventOutcome` and a short note for the inbox row, or None.
Outcome = tuple[str, str | None]


class TerraHost(Protocol):
    """The host's side of the webhook inbox. Both `apply_*` calls run inside the inbox's transaction:
    change rows, never commit; be idempotent (Terra delivers at least once, in any order)."""

    # The inbox table: the host's `class WebhookEvent(WebhookEventColumns, db.Model)`.
    webhook_event_model: type[WebhookEventColumns]

    def find_owner(self, reference_id: str) -> Any | None:
        """The host's user with this reference_id, or None. Only ever asked for an id the host signed
        (`reference_ids.is_authentic`)."""

    def apply_account_event(self, owner: Any, event: TerraEvent) -> Outcome:
        """An event of `events.ACCOUNT_EVENT_KINDS` for `owner`: an authentication that succeeded or
        failed, a re-authentication, a deauthentication, a lost or changed permission."""

    def apply_data_event(self, event: TerraEvent) -> Outcome:
        """A data or informational event (activity, sleep, healthcheck...), `event.terra_user_id` its user."""


class Applier(Protocol):
    """This process's applier threads (applier.InboxWorker), as the integration's files call them: a
    protocol, not the class, since the workers look their app's integration up here (`bound`), so
    this module imports neither of them."""

    def start(self) -> None: ...

    def wake(self, event_types: Iterable[str] = ...) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...


class Recorder(Protocol):
    """This process's inbox writer (recorder.InboxRecorder), as the integration's files call it."""

    def record(self, values: dict[str, Any]) -> bool: ...

    def last_arrival(self) -> float: ...


@dataclass
class BoundIntegration:
    """What `TerraIntegration.init_app` keeps for one app, in `app.extensions["terra_integration"]`."""

    client: TerraClient
    host: TerraHost
    db: SQLAlchemy
    worker: Applier  # this process's applier thread (started by gunicorn or the first wake-up)
    recorder: Recorder  # this process's inbox writer thread (started by the first delivery)


def bound() -> BoundIntegration:
    return current_app.extensions["terra_integration"]
