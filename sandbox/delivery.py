"""Signed webhook delivery, the way Terra delivers: POST the raw JSON, retry any non-2xx with backoff.

Delivery runs on a daemon thread so that a request handler never waits on the app's webhook. That
matters when the app and the sandbox share one process: the sandbox's request must have committed and
returned before the app's webhook handler runs, or the two could wait on each other. Everything the
thread needs (settings, bodies, ids) is captured up front, so it needs no Flask app context.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import requests

from terra.signature import sign

log = logging.getLogger(__name__)

# One connection pool for every delivery thread.
_http = requests.Session()


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str
    retries: int
    retry_base_seconds: float
    retry_cap_seconds: float
    timeout_seconds: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "WebhookSettings":
        return cls(
            url=config["SANDBOX_WEBHOOK_URL"],
            secret=config["TERRA_SIGNING_SECRET"],
            retries=config["SANDBOX_WEBHOOK_RETRIES"],
            retry_base_seconds=config["SANDBOX_WEBHOOK_RETRY_BASE_SECONDS"],
            retry_cap_seconds=config["SANDBOX_WEBHOOK_RETRY_CAP_SECONDS"],
            timeout_seconds=config["SANDBOX_WEBHOOK_TIMEOUT_SECONDS"],
        )

    def delay_before_retry(self, retry_number: int) -> float:
        return min(self.retry_base_seconds * 2 ** (retry_number - 1), self.retry_cap_seconds)


@dataclass(frozen=True)
class Envelope:
    """One event ready to send. Its trace id and ordering timestamp stay the same on every retry."""

    event_type: str
    body: bytes
    trace_id: str
    ordering_timestamp_ms: int


class DeliveryThread(threading.Thread):
    """Sends one batch of events in order; `join()` it to wait for the outcome in tests."""

    def __init__(self, envelopes: list[Envelope], settings: WebhookSettings, terra_reference: str):
        super().__init__(name=f"sandbox-webhooks-{terra_reference[:8]}", daemon=True)
        self.envelopes = envelopes
        self.settings = settings
        self.terra_reference = terra_reference
        self.delivered: list[bool] = []

    @property
    def trace_ids(self) -> list[str]:
        return [envelope.trace_id for envelope in self.envelopes]

    def run(self) -> None:
        for envelope in self.envelopes:
            self.delivered.append(_send_with_retries(envelope, self.settings, self.terra_reference))


def deliver(events: list[dict], config: Mapping[str, Any]) -> DeliveryThread:
    """Start sending `events` (one flow's worth, in order) to the configured webhook URL."""
    settings = WebhookSettings.from_config(config)
    emitted_ms = int(time.time() * 1000)
    envelopes = [
        Envelope(
            event_type=str(event.get("type")),
            body=json.dumps(event, separators=(",", ":")).encode(),
            trace_id=str(uuid.uuid4()),
            # One millisecond apart so that receivers ordering by this header keep the emission order.
            ordering_timestamp_ms=emitted_ms + index,
        )
        for index, event in enumerate(events)
    ]
    thread = DeliveryThread(envelopes, settings, terra_reference=str(uuid.uuid4()))
    thread.start()
    return thread


def _send_with_retries(envelope: Envelope, settings: WebhookSettings, terra_reference: str) -> bool:
    if not settings.url:
        log.info("sandbox webhook %s not sent: SANDBOX_WEBHOOK_URL is empty", envelope.event_type)
        return False
    attempts = 1 + max(settings.retries, 0)
    attempt = 1
    while True:
        failure = _post_once(envelope, settings, terra_reference)
        if failure is None:
            log.info(
                "sandbox webhook %s delivered (trace %s, attempt %d)", envelope.event_type, envelope.trace_id, attempt
            )
            return True
        if attempt == attempts:
            log.error(
                "sandbox webhook %s abandoned after %d attempts (trace %s): %s",
                envelope.event_type, attempts, envelope.trace_id, failure,
            )
            return False
        delay = settings.delay_before_retry(attempt)
        log.warning(
            "sandbox webhook %s failed (trace %s, attempt %d): %s; retrying in %.2f s",
            envelope.event_type, envelope.trace_id, attempt, failure, delay,
        )
        time.sleep(delay)
        attempt += 1


def _post_once(envelope: Envelope, settings: WebhookSettings, terra_reference: str) -> str | None:
    """None on a 2xx answer, otherwise a short description of what went wrong."""
    # Signed afresh on each attempt, so a late retry still falls inside the receiver's time window.
    signature = sign(envelope.body, settings.secret)
    headers = {
        "Content-Type": "application/json",
        "X-Terra-Signature": signature,
        "terra-signature": signature,
        "X-Terra-Trace-Id": envelope.trace_id,
        "terra-reference": terra_reference,
        "X-Terra-Ordering-Timestamp": str(envelope.ordering_timestamp_ms),
        "User-Agent": "terra-sandbox-webhooks",
    }
    try:
        response = _http.post(
            settings.url,
            data=envelope.body,
            headers=headers,
            timeout=settings.timeout_seconds,
            allow_redirects=False,  # Terra counts a 3xx as a failed delivery
        )
    except requests.RequestException as error:
        return f"{type(error).__name__}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"
