"""What the sandbox received and sent, kept in memory per app (and per process) so that tests and the
console can count: which Terra endpoints were called, with which faults, and every webhook POST.

It is a record for observation only; nothing in the sandbox decides anything from it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, has_app_context

EXTENSION_KEY = "sandbox_traffic"
MAX_ENTRIES = 1000  # oldest entries are dropped first; plenty for a walkthrough or a test


@dataclass(frozen=True)
class TerraRequest:
    """One call to an emulated Terra endpoint (REST or widget session)."""

    method: str
    path: str
    endpoint: str  # the Flask endpoint, e.g. "sandbox.user_info"
    faults: tuple[str, ...]  # the REST faults applied to it
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class WebhookPost:
    """One POST of one event to the webhook URL (each retry and each duplicate is its own entry)."""

    trace_id: str
    event_type: str
    attempt: int  # 1 for the first try, 2 for the first retry...
    copy: int  # 1, or 2 for the second copy of a `duplicate` delivery
    status: int | None  # the receiver's HTTP status; None when no answer came
    error: str | None  # what went wrong, None on a 2xx
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.error is None


class Traffic:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[TerraRequest] = []
        self._webhooks: list[WebhookPost] = []

    def record_request(self, entry: TerraRequest) -> None:
        with self._lock:
            self._requests.append(entry)
            del self._requests[:-MAX_ENTRIES]

    def record_webhook(self, entry: WebhookPost) -> None:
        with self._lock:
            self._webhooks.append(entry)
            del self._webhooks[:-MAX_ENTRIES]

    def requests(self, endpoint: str | None = None) -> list[TerraRequest]:
        """Requests received, oldest first; only those to `endpoint` (e.g. "sandbox.user_info") if given."""
        with self._lock:
            return [entry for entry in self._requests if endpoint is None or entry.endpoint == endpoint]

    def webhooks(self) -> list[WebhookPost]:
        with self._lock:
            return list(self._webhooks)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._webhooks.clear()


def install(app: Flask) -> Traffic:
    traffic = app.extensions.setdefault(EXTENSION_KEY, Traffic())
    return traffic


def traffic_of(app: Flask) -> Traffic:
    return app.extensions[EXTENSION_KEY]


def current_traffic() -> Traffic | None:
    """The running app's record, or None outside an app (e.g. a delivery started from a bare test)."""
    if not has_app_context():
        return None
    traffic: Any = current_app.extensions.get(EXTENSION_KEY)
    return traffic
