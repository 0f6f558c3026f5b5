"""s3_payload downloads (terra_integration/payloads.py, inbox.apply_download, the applier's queues):
a deadline for the whole download, only public https addresses in production, no credentials, a
retry with backoff for a failure that may pass, and other events applied while a download is in
flight."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest
from sqlalchemy import func, select

from extensions import db
from models import WebhookEvent
from terra_integration.models import utcnow
from terra_integration.payloads import PayloadUnavailable, download_payload
from tests.conftest import wait_for
from tests.helpers import apply_inbox, auth_event, deliver, outcome_of, post_event, terra_user
from tests.test_inbox_applier import lapse_leases, make_user, row

# A data event of a Terra user the app does not know: applied, it is kept for the record.
EMPTY_ACTIVITY = json.dumps(
    {"type": "activity", "user": {"user_id": "tu-unknown", "provider": "GARMIN"}, "data": []}
).encode()


@pytest.fixture
def secret(app):
    return app.config["TERRA_SIGNING_SECRET"]


def ping(url: str) -> dict:
    return {"type": "s3_payload", "status": "success", "url": url, "expires_in": 300}


def stored(app) -> dict[str, int]:
    """How many rows each table but the inbox holds: what applying an event could change."""
    with app.app_context():
        return {
            table.name: db.session.scalar(select(func.count()).select_from(table))
            for table in db.metadata.sorted_tables
            if table.name != WebhookEvent.__tablename__
        }


class TricklingStorage(BaseHTTPRequestHandler):
    """A storage host that announces a payload and sends it one byte every TRICKLE_SECONDS: every
    read gets something in time, only the whole takes long (about 10 s)."""

    TRICKLE_SECONDS = 0.25
    body = EMPTY_ACTIVITY.ljust(len(EMPTY_ACTIVITY) + 10)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for byte in self.body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.TRICKLE_SECONDS)
        except OSError:  # the downloader gave up and closed: stop
            return

    def log_message(self, *args):
        pass


def test_a_trickling_download_ends_at_its_deadline_and_is_tried_again_later(client, app, secret, stub_server):
    server = stub_server(TricklingStorage)
    app.config["TERRA_PAYLOAD_TIMEOUT_SECONDS"] = 1
    before = stored(app)
    started = time.monotonic()
    deliver(client, ping(f"http://127.0.0.1:{server.server_port}/p?X-Amz-Signature=abc"), secret=secret, trace_id="t")
    # The whole payload takes about 10 s to trickle in; the 1 s deadline ends it long before. The
    # bound is loose (a busy machine may be late by seconds), and still far below the trickle's time.
    assert time.monotonic() - started < 6
    pending = row(app, "t")
    assert (pending.outcome, pending.attempts) == ("received", 1)
    assert "download try 1 of 4: the s3_payload download did not finish within 1 s; next in 5 s" == pending.detail
    assert pending.claimed_until > utcnow() + timedelta(seconds=4)  # not claimed again before the backoff
    assert apply_inbox(app) == 0
    assert stored(app) == before


class FlakyStorage(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then the payload."""

    failures: ClassVar[int] = 0
    requests: ClassVar[list[dict]] = []

    def do_GET(self):
        FlakyStorage.requests.append(dict(self.headers))
        failing = len(FlakyStorage.requests) <= FlakyStorage.failures
        self.send_response(503 if failing else 200)
        body = b"busy" if failing else EMPTY_ACTIVITY
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("failures, outcome", [(1, "recorded"), (4, "failed")])  # inbox.DOWNLOAD_TRIES: 4
def test_a_download_that_failed_for_a_passing_reason_is_tried_again_after_a_backoff(
    client, app, secret, stub_server, failures, outcome
):
    FlakyStorage.failures, FlakyStorage.requests = failures, []
    server = stub_server(FlakyStorage)
    deliver(client, ping(f"http://127.0.0.1:{server.server_port}/p"), secret=secret, trace_id="t")
    assert (row(app, "t").outcome, row(app, "t").detail) == (
        "received",
        "download try 1 of 4: downloading the s3_payload answered 503; next in 5 s",
    )
    for _ in range(failures):
        lapse_leases(app)  # as if the backoff had passed
        apply_inbox(app)
    done = row(app, "t")
    assert (done.outcome, done.attempts) == (outcome, failures + 1 if outcome == "recorded" else failures)
    assert outcome == "recorded" or done.detail == "PayloadUnavailable: downloading the s3_payload answered 503"
    # The URL is the capability: none of our credentials go with it.
    sent = {name.lower() for headers in FlakyStorage.requests for name in headers}
    assert not sent & {"x-api-key", "dev-id", "authorization", "cookie"}


class CountingStorage(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, dict]]] = []

    def do_GET(self):
        CountingStorage.requests.append((self.path, dict(self.headers)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(EMPTY_ACTIVITY)))
        self.end_headers()
        self.wfile.write(EMPTY_ACTIVITY)

    def log_message(self, *args):
        pass


# (URL, where {port} is the stub storage's, what the row says); refused by the production setting.
REFUSED = [
    pytest.param("http://127.0.0.1:{port}/p", "the s3_payload url must be https, not http", id="plain http"),
    pytest.param("ftp://127.0.0.1:{port}/p", "the s3_payload url must be https, not ftp", id="ftp"),
    pytest.param(
        "https://127.0.0.1:{port}/p",
        "the s3_payload host '127.0.0.1' is at a non-public address (127.0.0.1)",
        id="loopback",
    ),
    pytest.param(
        "https://localhost:{port}/p", "the s3_payload host 'localhost' is at a non-public address", id="localhost"
    ),
    pytest.param(
        "https://[::1]:{port}/p", "the s3_payload host '::1' is at a non-public address (::1)", id="IPv6 loopback"
    ),
    pytest.param(
        "https://[::ffff:127.0.0.1]:{port}/p",
        "the s3_payload host '::ffff:127.0.0.1' is at a non-public address (127.0.0.1)",
        id="IPv4-mapped loopback",
    ),
    pytest.param(
        "https://10.0.0.7/p", "the s3_payload host '10.0.0.7' is at a non-public address (10.0.0.7)", id="private"
    ),
    pytest.param(
        "https://169.254.169.254/latest/meta-data/",
        "the s3_payload host '169.254.169.254' is at a non-public address (169.254.169.254)",
        id="link-local (cloud metadata)",
    ),
    pytest.param("https://100.64.0.1/p", "is at a non-public address (100.64.0.1)", id="shared (carrier NAT)"),
    pytest.param("https://0.0.0.0:{port}/p", "is at a non-public address (0.0.0.0)", id="unspecified"),
    pytest.param("https://224.0.0.1/p", "is at a non-public address (224.0.0.1)", id="multicast"),
    pytest.param(
        "https://terra:hunter2@s3.eu-west-2.amazonaws.com/p", "the s3_payload url carries credentials", id="credentials"
    ),
]


@pytest.mark.parametrize("url, reason", REFUSED)
def test_refused_payload_urls_are_kept_as_failed_with_the_reason_and_never_fetched(
    client, app, secret, stub_server, url, reason
):
    CountingStorage.requests = []
    server = stub_server(CountingStorage)
    app.config["TERRA_PAYLOAD_ALLOW_LOOPBACK"] = False  # production's setting
    before = stored(app)
    deliver(client, ping(url.format(port=server.server_port)), secret=secret, trace_id="t")
    refused = row(app, "t")
    assert (refused.outcome, refused.attempts) == ("failed", 1)
    assert refused.detail.startswith("PayloadRefused: ") and reason in refused.detail
    assert "hunter2" not in refused.detail
    assert CountingStorage.requests == [] and stored(app) == before


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.7/p", "http://169.254.169.254/latest/meta-data/", "http://user:pw@127.0.0.1:{port}/p"],
    ids=["private", "link-local", "credentials"],
)
def test_allowing_loopback_allows_nothing_else(client, app, secret, stub_server, url):
    CountingStorage.requests = []
    server = stub_server(CountingStorage)
    assert app.config["TERRA_PAYLOAD_ALLOW_LOOPBACK"] is True  # the tests' (and development's) default
    deliver(client, ping(url.format(port=server.server_port)), secret=secret, trace_id="t")
    assert row(app, "t").outcome == "failed" and "PayloadRefused" in row(app, "t").detail
    assert CountingStorage.requests == []


def test_the_download_connects_to_the_address_it_checked(stub_server, monkeypatch):
    """The name is resolved once, checked, and the connection made to that address (a second lookup
    could answer another one: DNS rebinding); the Host header still names the host. A made-up name
    stands in for a storage host, since this machine's DNS cannot be made to rebind."""
    CountingStorage.requests = []
    server = stub_server(CountingStorage)
    real_lookup, lookups = socket.getaddrinfo, []

    def lookup(host, *args, **kwargs):
        if host == "payloads.storage.test":
            lookups.append(host)
            return real_lookup("127.0.0.1", *args, **kwargs)
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    url = f"http://payloads.storage.test:{server.server_port}/payloads/p1?X-Amz-Signature=abc"
    assert download_payload(url, deadline=5, max_bytes=1000, allow_loopback=True) == EMPTY_ACTIVITY
    [(path, headers)] = CountingStorage.requests
    assert (path, headers["Host"], lookups) == (
        "/payloads/p1?X-Amz-Signature=abc",
        f"payloads.storage.test:{server.server_port}",
        ["payloads.storage.test"],
    )


def test_https_to_a_host_that_does_not_speak_tls_is_a_failure_that_may_pass(stub_server):
    server = stub_server(CountingStorage)
    with pytest.raises(PayloadUnavailable, match=r"could not be downloaded \(SSL"):
        download_payload(f"https://127.0.0.1:{server.server_port}/p", deadline=5, max_bytes=1000, allow_loopback=True)


class HeldStorage(BaseHTTPRequestHandler):
    """Holds every download open until released (a slow storage host)."""

    asked: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()

    def do_GET(self):
        HeldStorage.asked.set()
        HeldStorage.release.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", str(len(EMPTY_ACTIVITY)))
        self.end_headers()
        self.wfile.write(EMPTY_ACTIVITY)

    def log_message(self, *args):
        pass


def test_other_events_are_applied_while_a_download_is_in_flight(start_live_server, stub_server):
    HeldStorage.asked, HeldStorage.release = threading.Event(), threading.Event()
    storage = stub_server(HeldStorage)
    server = start_live_server(TERRA_PAYLOAD_TIMEOUT_SECONDS="45")
    secret = server.app.config["TERRA_SIGNING_SECRET"]
    user = make_user(server.app)
    try:
        url = f"http://127.0.0.1:{storage.server_port}/p"
        assert post_event(server.url, secret, ping(url), trace_id="t-slow") == 200
        assert HeldStorage.asked.wait(20)  # the download is in flight, and stays so until released
        assert post_event(server.url, secret, auth_event(user, terra_user(user, "tu-1")), trace_id="t-auth") == 200
        wait_for(lambda: outcome_of(server.app, "t-auth") == "applied", timeout=20)
        slow = row(server.app, "t-slow")
        assert (slow.outcome, slow.attempts) == ("received", 1)  # still downloading, claimed once
    finally:
        HeldStorage.release.set()
    wait_for(lambda: outcome_of(server.app, "t-slow") == "recorded", timeout=20)
    assert row(server.app, "t-slow").attempts == 1  # fetched once: the lease outlasted the download
