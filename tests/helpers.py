"""Small builders shared by the tests: users, attempts, and signed webhook deliveries."""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import requests
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from extensions import db
from models import ConnectAttempt, User, WebhookEvent
from models.time import utcnow
from terra_integration.applier import drain
from terra_integration.models import EventOutcome
from terra_integration.reference_ids import new_reference_id
from terra_integration.signature import sign


def redis_test_url(offset: int) -> str:
    """A Redis database the tests may flush: 13, 14 and 15 by default, one per test module that uses
    Redis (the parallel suite runs a module's tests in one process, but modules side by side);
    TEST_REDIS_DB moves all three, so that suites run side by side (several checkouts on one machine)
    do not flush each other's counters."""
    return f"redis://127.0.0.1:6379/{int(os.environ.get('TEST_REDIS_DB', '13')) + offset}"


PASSWORD = "correct horse battery"  # every created user's


@functools.cache
def password_hash() -> str:
    """The hash of PASSWORD: made once, since scrypt is slow on purpose (a tenth of a second), and
    some tests create users by the hundred."""
    return generate_password_hash(PASSWORD)


def lose_webhooks(config) -> None:
    """From now on Terra's webhooks never reach the app: the sandbox sends none (an empty
    SANDBOX_WEBHOOK_URL turns its delivery off), so no delivery thread retries after the test either."""
    config["SANDBOX_WEBHOOK_URL"] = ""


def create_user(email: str = "ada@example.com") -> User:
    user = User(email=email, password_hash=password_hash(), reference_id=new_reference_id())
    db.session.add(user)
    db.session.commit()
    return user


def create_attempt(user: User, session_id: str | None = None, **fields) -> ConnectAttempt:
    attempt = ConnectAttempt(
        user_id=user.id,
        terra_session_id=session_id or str(uuid.uuid4()),
        expires_at=utcnow() + timedelta(minutes=15),
        **fields,
    )
    db.session.add(attempt)
    db.session.commit()
    return attempt


def terra_user(
    user: User, user_id: str | None = None, provider: str = "GARMIN", scopes: str = "ACTIVITY_EXPORT"
) -> dict:
    return {
        "user_id": user_id or str(uuid.uuid4()),
        "provider": provider,
        "reference_id": user.reference_id,
        "scopes": scopes,
        "active": True,
        "last_webhook_update": None,
    }


def auth_event(user: User, terra: dict, session_id: str | None = None) -> dict:
    return {
        "type": "auth",
        "status": "success",
        "message": "User has successfully authenticated",
        "reference_id": user.reference_id,
        "widget_session_id": session_id,
        "flow_id": session_id,
        "version": "2022-03-16",
        "user": terra,
    }


def token_of(return_url: str) -> str:
    """The signed attempt token in the path of one of our return URLs."""
    return urlsplit(return_url).path.rsplit("/", 1)[1]


def finish_widget(
    widget_url: str, outcome: str = "success", account: str = "ada-garmin", provider: str = "GARMIN", **kwargs
) -> str:
    """Finish a sandbox widget session through its automation endpoint, which does what its pages do;
    returns the URL Terra sends the browser back to. `kwargs` go to requests (e.g. headers).
    `widget_url` may also be an authenticateUser auth_url (the session's provider login step)."""
    session_url = widget_url.partition("?")[0].removesuffix("/login")
    response = requests.post(
        session_url + "/complete",
        json={"provider": provider, "account": account, "outcome": outcome},
        timeout=10,
        **kwargs,
    )
    assert response.status_code == 200, response.text
    return response.json()["redirect_url"]


def signed(
    payload: dict | bytes,
    *,
    secret: str,
    trace_id: str | None = "auto",
    header: str = "X-Terra-Signature",
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A webhook's body and headers exactly as Terra signs it (real HMAC over the raw bytes); `headers`
    adds others Terra sends (X-Terra-Ordering-Timestamp, terra-reference)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {**(headers or {}), header: sign(body, secret, timestamp), "Content-Type": "application/json"}
    if trace_id == "auto":
        trace_id = str(uuid.uuid4())
    if trace_id:
        headers["X-Terra-Trace-Id"] = trace_id
    return body, headers


def deliver(client, payload: dict | bytes, *, secret: str, apply: bool = True, **signing):
    """POST a signed webhook through a Flask test client; then, unless `apply` is False, apply what the
    inbox recorded, as the applier thread would."""
    body, headers = signed(payload, secret=secret, **signing)
    response = client.post("/webhooks/terra", data=body, headers=headers)
    if apply:
        apply_inbox(client.application)
    return response


def post_event(
    base_url: str,
    secret: str,
    payload: dict,
    trace_id: str = "auto",
    signed_at: int | None = None,
    ordering_timestamp: int | None = None,
) -> int:
    """POST a signed webhook to a server over HTTP; its status code."""
    extra = {} if ordering_timestamp is None else {"X-Terra-Ordering-Timestamp": str(ordering_timestamp)}
    body, headers = signed(payload, secret=secret, trace_id=trace_id, timestamp=signed_at, headers=extra)
    return requests.post(base_url + "/webhooks/terra", data=body, headers=headers, timeout=30).status_code


def terra_settings(terra_url: str) -> dict[str, str]:
    """Made-up credentials and the endpoints of a Terra at `terra_url`, laid out as Terra's hosts are
    (and the sandbox under /sandbox): for a stub, or for a port nothing listens on."""
    return {
        "TERRA_DEV_ID": "test-dev-id",
        "TERRA_API_KEY": "test-api-key",
        "TERRA_SIGNING_SECRET": "test-secret",
        "TERRA_API_BASE_URL": terra_url + "/v2",
        "TERRA_WIDGET_SESSION_URL": terra_url + "/api/widget/session",
        "TERRA_LEGACY_WIDGET_URL": terra_url + "/v2/auth/generateWidgetSession",
    }


def delivered_outcome(client, payload: dict | bytes, *, secret: str, **signing) -> str:
    """Deliver a signed webhook through a Flask test client, apply it, and return the outcome its inbox
    row ended with (the receiver's 200 only says it was recorded), or "duplicate" for a delivery the
    inbox already had."""
    trace_id = signing.pop("trace_id", None) or str(uuid.uuid4())
    response = deliver(client, payload, secret=secret, trace_id=trace_id, **signing)
    assert response.status_code == 200, response.get_data(as_text=True)
    if response.json["status"] == "duplicate":
        return "duplicate"
    return outcome_of(client.application, trace_id)


def apply_inbox(app) -> int:
    """Apply every recorded webhook event the inbox holds, now, in this thread; returns how many."""
    with app.app_context():
        return drain()


def settle_inbox(app, timeout: float = 20) -> None:
    """Wait until the applier threads of the servers under test have applied every recorded event."""
    from tests.conftest import wait_for

    wait_for(lambda: pending_events(app) == 0, timeout=timeout)


def pending_events(app) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.outcome == EventOutcome.RECEIVED)
        )


def outcome_of(app, trace_id: str) -> str:
    with app.app_context():
        return db.session.scalars(select(WebhookEvent.outcome).where(WebhookEvent.trace_id == trace_id)).one()


DOCS = Path(__file__).resolve().parent.parent / "docs"


def doc_blocks(page: str, heading: str, language: str) -> list[str]:
    """The fenced `language` blocks of the section of docs/<page> whose heading starts with `heading`
    (up to the next heading of its level or above), exactly as a reader copies them."""
    lines = (DOCS / page).read_text().splitlines(keepends=True)
    level = len(heading) - len(heading.lstrip("#"))
    start = next((number for number, line in enumerate(lines) if line.startswith(heading)), None)
    assert start is not None, f"docs/{page} has no section {heading!r}"
    blocks, block, fence = [], [], None
    for line in lines[start + 1 :]:
        if fence is None and re.match(rf"#{{1,{level}}} ", line):
            break
        if fence is None and line.startswith("```"):
            fence, block = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            if fence == language:
                blocks.append("".join(block))
            fence = None
        elif fence is not None:
            block.append(line)
    return blocks
