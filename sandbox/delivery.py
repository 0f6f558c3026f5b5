"""Signed webhook delivery, the way Terra delivers: POST the raw JSON, retry any non-2xx with backoff.

Delivery runs on a daemon thread so that a request handler never waits on the app's webhook. That
matters when the app and the sandbox share one process: the sandbox's request must have committed and
returned before the app's webhook handler runs, or the two could wait on each other. Everything the
thread needs (settings, bodies, ids, faults) is captured up front, so it needs no Flask app context.

The webhook faults of `sandbox.faults` (duplicate, reorder, late, stale_signature) are applied here;
`s3_payload` is applied where data events are made (`sandbox.payloads`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from sandbox.faults import late_seconds, webhook_faults
from sandbox.traffic import Traffic, WebhookPost, current_traffic
from terra_integration.signature import sign

log = logging.getLogger(__name__)

# One connection pool for every delivery thread.
_http = requests.Session()

# SANDBOX_SIGNATURE_HEADERS → the headers each delivery carries the signature in: Terra's docs name
# `terra-signature`; its agent skill says the platform sends `X-Terra-Signature` plus that older name.
SIGNATURE_HEADERS = {
    "terra-signature": ("terra-signature",),
    "x-terra-signature": ("X-Terra-Signature",),
    "both": ("X-Terra-Signature", "terra-signature"),
}


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str
    retries: int
    retry_base_seconds: float
    retry_cap_seconds: float
    timeout_seconds: float
    signature_headers: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WebhookSettings:
        return cls(
            url=config["SANDBOX_WEBHOOK_URL"],
            secret=config["TERRA_SIGNING_SECRET"],
            retries=config["SANDBOX_WEBHOOK_RETRIES"],
            retry_base_seconds=config["SANDBOX_WEBHOOK_RETRY_BASE_SECONDS"],
            retry_cap_seconds=config["SANDBOX_WEBHOOK_RETRY_CAP_SECONDS"],
            timeout_seconds=config["SANDBOX_WEBHOOK_TIMEOUT_SECONDS"],
            signature_headers=SIGNATURE_HEADERS[config["SANDBOX_SIGNATURE_HEADERS"]],
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
    terra_reference: str = ""


@dataclass(frozen=True)
class DeliveryFaults:
    """How one batch misbehaves: see `sandbox.faults` for the meaning of each."""

    duplicate: bool = False
    hold_seconds: float = 0.0  # `late`: wait this long before the first try
    reorder_window_seconds: float | None = None  # `reorder`: collect batches this long, send reversed
    stale_signature: bool = False  # retries keep the first try's `t=` instead of being signed afresh

    @classmethod
    def from_names(cls, names: Iterable[str], config: Mapping[str, Any]) -> DeliveryFaults:
        names = set(names)
        return cls(
            duplicate="duplicate" in names,
            hold_seconds=late_seconds(config) if "late" in names else 0.0,
            reorder_window_seconds=float(config["SANDBOX_REORDER_WINDOW_SECONDS"]) if "reorder" in names else None,
            stale_signature="stale_signature" in names,
        )


class DeliveryThread(threading.Thread):
    """Sends one batch of events in order; `join()` it to wait for the outcome in tests."""

    def __init__(
        self,
        envelopes: list[Envelope],
        settings: WebhookSettings,
        terra_reference: str,
        *,
        faults: DeliveryFaults | None = None,
        traffic: Traffic | None = None,
    ):
        super().__init__(name=f"sandbox-webhooks-{terra_reference[:8]}", daemon=True)
        self.envelopes = envelopes
        self.settings = settings
        self.terra_reference = terra_reference
        self.faults = faults or DeliveryFaults()
        self.traffic = traffic
        self.delivered: list[bool] = []  # one entry per envelope sent, in sending order

    @property
    def trace_ids(self) -> list[str]:
        return [envelope.trace_id for envelope in self.envelopes]

    def run(self) -> None:
        hold = max(self.faults.hold_seconds, self.faults.reorder_window_seconds or 0.0)
        if hold:
            time.sleep(hold)
        batch = self._take_batch()
        twin = None
        if self.faults.duplicate:
            # The second copy goes out at the same time, from its own thread: a concurrent duplicate.
            twin = threading.Thread(target=self._send_all, args=(batch, 2), name=self.name + "-copy", daemon=True)
            twin.start()
        self.delivered.extend(self._send_all(batch, 1))
        if twin is not None:
            twin.join()

    def _take_batch(self) -> list[Envelope]:
        if self.faults.reorder_window_seconds is None:
            return list(self.envelopes)
        # Close the window: batches started from now on are sent on their own.
        _reorder_windows.close(self)
        return list(reversed(self.envelopes))

    def _send_all(self, envelopes: list[Envelope], copy: int) -> list[bool]:
        return [
            _send_with_retries(envelope, self.settings, copy, self.traffic, self.faults.stale_signature)
            for envelope in envelopes
        ]


class _Follower(DeliveryThread):
    """A batch that joined an open reorder window: the window's thread sends it; this waits for it."""

    def __init__(self, envelopes: list[Envelope], carrier: DeliveryThread):
        super().__init__(
            envelopes, carrier.settings, carrier.terra_reference, faults=DeliveryFaults(), traffic=carrier.traffic
        )
        self.carrier = carrier

    def run(self) -> None:
        self.carrier.join()


class _ReorderWindows:
    """At most one open reorder window per webhook URL: the batch that opened it, still waiting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, DeliveryThread] = {}

    def submit(self, thread: DeliveryThread) -> DeliveryThread:
        with self._lock:
            carrier = self._open.get(thread.settings.url)
            if carrier is not None:
                carrier.envelopes.extend(thread.envelopes)
                follower = _Follower(thread.envelopes, carrier)
                follower.start()
                return follower
            self._open[thread.settings.url] = thread
        thread.start()
        return thread

    def close(self, thread: DeliveryThread) -> None:
        with self._lock:
            if self._open.get(thread.settings.url) is thread:
                del self._open[thread.settings.url]


_reorder_windows = _ReorderWindows()


def deliver(
    events: list[dict],
    config: Mapping[str, Any],
    faults: Iterable[str] | None = None,
    *,
    terra_reference: str | None = None,
    trace_ids: list[str] | None = None,
) -> DeliveryThread:
    """Start sending `events` (one flow's worth, in order) to the configured webhook URL, all under one
    terra-reference (a new one unless given), each with its trace id (new ones unless given).

    `faults` are webhook fault names; by default those switched on for the run and the current request.
    """
    settings = WebhookSettings.from_config(config)
    terra_reference = terra_reference or str(uuid.uuid4())
    trace_ids = trace_ids or [str(uuid.uuid4()) for _ in events]
    emitted_ms = int(time.time() * 1000)
    envelopes = [
        Envelope(
            event_type=str(event.get("type")),
            body=json.dumps(event, separators=(",", ":")).encode(),
            trace_id=trace_ids[index],
            # One millisecond apart so that receivers ordering by this header keep the emission order.
            ordering_timestamp_ms=emitted_ms + index,
            terra_reference=terra_reference,
        )
        for index, event in enumerate(events)
    ]
    chosen = DeliveryFaults.from_names(webhook_faults(config) if faults is None else faults, config)
    thread = DeliveryThread(envelopes, settings, terra_reference, faults=chosen, traffic=current_traffic())
    if chosen.reorder_window_seconds is not None and settings.url:
        return _reorder_windows.submit(thread)
    thread.start()
    return thread


def _send_with_retries(
    envelope: Envelope,
    settings: WebhookSettings,
    copy: int = 1,
    traffic: Traffic | None = None,
    stale_signature: bool = False,
) -> bool:
    if not settings.url:
        log.info("sandbox webhook %s not sent: SANDBOX_WEBHOOK_URL is empty", envelope.event_type)
        return False
    attempts = 1 + max(settings.retries, 0)
    attempt = 1
    first_signed_at = int(time.time())
    while True:
        status, failure = _post_once(envelope, settings, first_signed_at if stale_signature else None)
        if traffic is not None:
            traffic.record_webhook(WebhookPost(envelope.trace_id, envelope.event_type, attempt, copy, status, failure))
        if failure is None:
            log.info(
                "sandbox webhook %s delivered (trace %s, attempt %d)", envelope.event_type, envelope.trace_id, attempt
            )
            return True
        if attempt == attempts:
            log.error(
                "sandbox webhook %s abandoned after %d attempts (trace %s): %s",
                envelope.event_type,
                attempts,
                envelope.trace_id,
                failure,
            )
            return False
        delay = settings.delay_before_retry(attempt)
        log.warning(
            "sandbox webhook %s failed (trace %s, attempt %d): %s; retrying in %.2f s",
            envelope.event_type,
            envelope.trace_id,
            attempt,
            failure,
            delay,
        )
        time.sleep(delay)
        attempt += 1


def _post_once(
    envelope: Envelope, settings: WebhookSettings, signed_at: int | None = None
) -> tuple[int | None, str | None]:
    """(status, None) on a 2xx answer, otherwise (status or None, a short description of what went wrong)."""
    # Signed afresh on each attempt (unless `signed_at` pins the time: `stale_signature`), so a late
    # retry still falls inside the receiver's time window.
    signature = sign(envelope.body, settings.secret, signed_at)
    headers = {
        "Content-Type": "application/json",
        **dict.fromkeys(settings.signature_headers, signature),
        "X-Terra-Trace-Id": envelope.trace_id,
        "terra-reference": envelope.terra_reference,
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
        return None, f"{type(error).__name__}"
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"
