"""Hostile input at every entry point, table by table.

Each case names one thing an attacker (or a broken client) sends, and asserts two things: the exact
status code of the answer, and that the stored data is unchanged (every row of users, api_tokens,
connect_attempts, connections, replaced_terra_users and webhook_events, compared before and after).
A few cases are expected to store something (a verified webhook is always recorded; a valid but odd
email registers); those say exactly what changes and check that nothing else does.

Two things are checked on every answer: no HTML page contains one of the markup payloads raw (they
must be refused, or escaped), and nothing was logged at ERROR level (an unhandled exception, such as
a RecursionError or a database error, is logged there before it becomes a 500).

The entry points: the web forms (register, login, logout, connect, connect to one provider,
disconnect), the return pages (web and mobile, and the web page's status endpoint), Terra's webhook,
the JSON API, the .well-known files, the health probes, and the login `next` redirect.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import redis
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer
from sqlalchemy import select, update
from werkzeug.datastructures import ImmutableMultiDict

from extensions import db
from models import ApiToken, Connection, User, WebhookEvent
from models.api_token import hash_token
from models.time import utcnow
from sandbox.traffic import traffic_of
from services.api_tokens import issue_token
from services.attempts import TOKEN_SALT, attempt_token
from terra_integration.reference_ids import SALT as REFERENCE_ID_SALT
from terra_integration.reference_ids import is_authentic
from terra_integration.signature import compute, sign
from terra_integration.signing import signing_keys
from tests.conftest import Browser
from tests.helpers import PASSWORD, apply_inbox, auth_event, create_attempt, create_user, redis_test_url, terra_user

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
MARKUP = (SCRIPT, IMG)
SQL = "' OR '1'='1' --"
SQL_DROP = "'; DROP TABLE users; --"
DEEP = 10_000  # levels of nesting: far past Python's recursion limit
TABLES = ("users", "api_tokens", "connect_attempts", "connections", "replaced_terra_users", "webhook_events")
REDIS_URL = redis_test_url(1)


# -- what every case checks ----------------------------------------------------------------------


def snapshot(app) -> dict[str, list[tuple]]:
    """Every row of every table a request could change, in primary-key order."""
    with app.app_context(), db.engine.connect() as connection:
        rows = {}
        for name in TABLES:
            table = db.metadata.tables[name]
            # When the user's connections were last reconciled with Terra is bookkeeping, not input kept.
            columns = [column for column in table.columns if column.name != "connections_reconciled_at"]
            query = select(*columns).order_by(*table.primary_key.columns)
            rows[name] = [tuple(row) for row in connection.execute(query)]
        return rows


@contextmanager
def unchanged(app):
    before = snapshot(app)
    yield
    after = snapshot(app)
    for name in TABLES:
        assert after[name] == before[name], f"{name} changed"


def body_text(response) -> str:
    if isinstance(response, requests.Response):
        return response.text
    return response.get_data(as_text=True)


def content_type(response) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip()


def check(response, status: int):
    """The exact status; no raw markup payload in an HTML answer; JSON answers are not sniffable."""
    text = body_text(response)
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {text[:300]}"
    if content_type(response) == "text/html":
        for payload in MARKUP:
            assert payload not in text, f"unescaped {payload!r} in the page"
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    return response


def error_code(response) -> str:
    data = response.json() if isinstance(response, requests.Response) else response.get_json()
    return data["error"]["code"]


@pytest.fixture(autouse=True)
def no_unhandled_errors(caplog):
    """An unhandled exception (a RecursionError, a database error) is logged at ERROR before it turns
    into a 500; no hostile case may get that far."""
    yield
    errors = [f"{record.name}: {record.getMessage()}" for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, errors


# -- the world the cases attack ----------------------------------------------------------------------


@dataclass
class World:
    ada_id: int
    eve_id: int
    ada_reference_id: str
    eve_reference_id: str
    ada_token: str  # bearer tokens (already used once: last_used_at is set, so using one writes nothing)
    eve_token: str
    ada_attempt: str  # pending, never hinted
    ada_attempt_token: str
    ada_session_id: str  # its Terra widget session id
    eve_attempt: str
    eve_attempt_token: str
    returned_success: str  # tokens of Ada's attempts that already carry the hint their return page records
    returned_failure: str
    returned_ids: dict  # their attempt ids, by outcome
    ada_connection: int
    eve_connection: int


@pytest.fixture
def world(app) -> World:
    # Ada's attempt that returned through the failure URL must stay within its grace period for the
    # whole test, however long a busy machine takes over the Hypothesis examples (10 s once was not).
    app.config["BROWSER_CLOSED_GRACE_SECONDS"] = 3600
    return build_world(app)


def build_world(app) -> World:
    with app.test_request_context():
        ada, eve = create_user("ada@example.com"), create_user("eve@example.com")
        ada_token, _ = issue_token(ada)
        eve_token, _ = issue_token(eve)
        db.session.execute(update(ApiToken).values(last_used_at=utcnow()))
        ada_attempt = create_attempt(ada, channel="mobile", return_mode="page")
        eve_attempt = create_attempt(eve)
        success = create_attempt(ada, hint="returned_success", hinted_at=utcnow())
        failure = create_attempt(ada, hint="returned_failure", hinted_at=utcnow())
        connections = [
            Connection(user_id=user.id, terra_user_id=f"terra-{user.id}", provider="GARMIN", scopes="")
            for user in (ada, eve)
        ]
        db.session.add_all(connections)
        db.session.commit()
        return World(
            ada_id=ada.id,
            eve_id=eve.id,
            ada_reference_id=ada.reference_id,
            eve_reference_id=eve.reference_id,
            ada_token=ada_token,
            eve_token=eve_token,
            ada_attempt=ada_attempt.id,
            ada_attempt_token=attempt_token(ada_attempt),
            ada_session_id=ada_attempt.terra_session_id,
            eve_attempt=eve_attempt.id,
            eve_attempt_token=attempt_token(eve_attempt),
            returned_success=attempt_token(success),
            returned_failure=attempt_token(failure),
            returned_ids={"success": success.id, "failure": failure.id},
            ada_connection=connections[0].id,
            eve_connection=connections[1].id,
        )


def log_in(client, user_id: int) -> None:
    with client.application.app_context():
        generation = db.session.get(User, user_id).session_generation
    with client.session_transaction() as session:
        session.update(user_id=user_id, session_generation=generation)


def logged_in_as(client) -> int | None:
    with client.session_transaction() as session:
        return session.get("user_id")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


def in_request(app, make: Callable[[], Any]) -> Any:
    with app.test_request_context():
        return make()


# == the webhook ========================================================================================


def ada_auth_event(world: World, **changes) -> dict:
    """A successful `auth` for Ada answering her pending attempt: if it were accepted it would create a
    connection and connect the attempt, so any case that gets through shows up as changed data."""
    ada = SimpleNamespace(reference_id=world.ada_reference_id)
    event = auth_event(ada, terra_user(ada, "hostile-terra-user"), session_id=world.ada_session_id)
    event.update(changes)
    return event


def post_webhook(client, body: bytes, headers: dict | None = None, **kwargs):
    """POST to the receiver, then apply what it recorded (as the applier thread would)."""
    response = client.post(
        "/webhooks/terra", data=body, headers={"Content-Type": "application/json", **(headers or {})}, **kwargs
    )
    apply_inbox(client.application)
    return response


def signed(body: bytes, secret: str, timestamp: int | None = None) -> dict:
    return {"X-Terra-Signature": sign(body, secret, timestamp)}


def header(value: str) -> dict:
    return {"headers": {"X-Terra-Signature": value}}


# Each: (body, secret, now) -> keyword arguments for the POST.
SIGNATURES = [
    pytest.param(lambda b, s, now: {}, id="absent"),
    pytest.param(lambda b, s, now: header(""), id="empty header"),
    pytest.param(lambda b, s, now: header(f"t={now},v1={'0' * 64}"), id="forged hex"),
    pytest.param(lambda b, s, now: header(f"t={now},v1={'ab' * 16}"), id="forged, wrong length"),
    pytest.param(lambda b, s, now: header(sign(b, "not-the-signing-secret", now)), id="wrong secret"),
    pytest.param(lambda b, s, now: header(sign(b, s, now - 301)), id="stale by 301 s"),
    pytest.param(lambda b, s, now: header(sign(b, s, now - 86400 * 365)), id="stale by a year"),
    # A margin past the 300 s window: `now` here is a whole second, the server's clock runs on.
    pytest.param(lambda b, s, now: header(sign(b, s, now + 330)), id="future by 330 s"),
    pytest.param(lambda b, s, now: header(sign(b, s, now * 1000)), id="millisecond timestamp"),
    pytest.param(lambda b, s, now: header(sign(b, s, -1)), id="negative timestamp"),
    pytest.param(lambda b, s, now: header(f"t={'9' * 400},v1={compute(b, s, now)}"), id="400-digit timestamp"),
    pytest.param(lambda b, s, now: header(f"t=now,v1={compute(b, s, now)}"), id="timestamp not a number"),
    pytest.param(lambda b, s, now: header(f"v1={compute(b, s, now)}"), id="no timestamp"),
    pytest.param(lambda b, s, now: header(f"t={now}"), id="no v1"),
    pytest.param(lambda b, s, now: header(f"t={now},v0={compute(b, s, now)}"), id="v0 only (downgrade)"),
    pytest.param(lambda b, s, now: header(sign(b + b" ", s, now)), id="signature of another body"),
    pytest.param(
        lambda b, s, now: header(sign(json.dumps(json.loads(b), indent=1).encode(), s, now)),
        id="signature of re-serialised JSON",
    ),
    pytest.param(lambda b, s, now: header(f"t={now},v1={compute(b, s, now - 600)}"), id="old signature with a fresh t"),
    pytest.param(
        lambda b, s, now: header(f"t={now - 600},v1={compute(b, s, now - 600)},t={now}"),
        id="second t appended to an old signature",
    ),
    pytest.param(lambda b, s, now: header(f"t={now},v1={s}"), id="the secret itself as v1"),
    pytest.param(lambda b, s, now: {"headers": {"Stripe-Signature": sign(b, s, now)}}, id="another header name"),
    pytest.param(lambda b, s, now: {"query_string": {"signature": sign(b, s, now)}}, id="in the query string"),
    pytest.param(
        lambda b, s, now: {
            "headers": {
                "X-Terra-Signature": f"t={now},v1={'0' * 64}",
                "Content-Type": "application/x-www-form-urlencoded",
            }
        },
        id="forged, form content type",
    ),
    # Header values arrive as Latin-1: "²" passes str.isdigit and then fails int(), and a non-ASCII v1
    # makes compare_digest raise TypeError. Both must stay a 401.
    pytest.param(lambda b, s, now: header(f"t=\u00b2,v1={compute(b, s, now)}"), id="timestamp a superscript digit"),
    pytest.param(lambda b, s, now: header(f"t={now},v1={compute(b, s, now)[:-1]}\u00e9"), id="non-ASCII v1"),
    pytest.param(
        lambda b, s, now: header(sign(b, s, now) + ",v1=" + "\u00e9" * 64), id="non-ASCII v1 beside the right one"
    ),
    pytest.param(lambda b, s, now: header(f"t={now},v1={'g' * 64}"), id="v1 not hex"),
    pytest.param(lambda b, s, now: header(f"t={now:_},v1={compute(b, s, now)}"), id="timestamp with underscores"),
]


@pytest.mark.parametrize("attack", SIGNATURES)
def test_webhook_signature_attacks_are_401(app, client, world, attack):
    body = json.dumps(ada_auth_event(world)).encode()
    kwargs = attack(body, app.config["TERRA_SIGNING_SECRET"], int(time.time()))
    with unchanged(app):
        response = post_webhook(client, body, kwargs.pop("headers", {}), **kwargs)
    check(response, 401)
    assert error_code(response) == "invalid_signature"


def test_the_same_webhook_correctly_signed_is_applied(app, client, world):
    """Control for the table above: the body the attacks use does change data when it is genuine."""
    body = json.dumps(ada_auth_event(world)).encode()
    response = check(post_webhook(client, body, signed(body, app.config["TERRA_SIGNING_SECRET"])), 200)
    assert response.get_json()["status"] == "received"
    with app.app_context():
        assert db.session.scalars(select(Connection.terra_user_id)).all().count("hostile-terra-user") == 1


def valid_event_bytes(world: World, **changes) -> bytes:
    return json.dumps(ada_auth_event(world, **changes)).encode()


def padded(size: int) -> bytes:
    prefix, suffix = b'{"type": "activity", "pad": "', b'"}'
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


def with_user(world: World, **user) -> bytes:
    event = ada_auth_event(world)
    event["user"].update(user)
    return json.dumps(event).encode()


# Each: (world, config) -> body, the status (200: acknowledged, kept as failed), and config overrides.
WEBHOOK_BODIES = [
    pytest.param(lambda w, c: padded(c["WEBHOOK_MAX_BYTES"] + 1), 413, {}, id="over WEBHOOK_MAX_BYTES"),
    pytest.param(
        lambda w, c: padded(c["MAX_CONTENT_LENGTH"] + 1),
        413,
        {"WEBHOOK_MAX_BYTES": 4 * 1024 * 1024},
        id="over MAX_CONTENT_LENGTH",
    ),
    pytest.param(lambda w, c: valid_event_bytes(w)[:-20], 200, {}, id="truncated JSON"),
    pytest.param(lambda w, c: b"", 200, {}, id="empty"),
    pytest.param(lambda w, c: b" \r\n\t", 200, {}, id="whitespace only"),
    pytest.param(lambda w, c: '{"type": "auth", "reason": "caf\xe9"}'.encode("latin-1"), 200, {}, id="non-UTF-8"),
    pytest.param(lambda w, c: valid_event_bytes(w).decode().encode("utf-16"), 200, {}, id="UTF-16"),
    pytest.param(lambda w, c: b"\xef\xbb\xbf" + valid_event_bytes(w), 200, {}, id="UTF-8 byte order mark"),
    pytest.param(lambda w, c: nested_arrays(DEEP), 200, {}, id="10,000 nested arrays"),
    pytest.param(lambda w, c: nested_objects(DEEP), 200, {}, id="10,000 nested objects"),
    pytest.param(
        lambda w, c: b'{"type": "auth", "user": ' + nested_arrays(DEEP) + b"}",
        200,
        {},
        id="10,000 levels inside an event",
    ),
    pytest.param(
        lambda w, c: b'{"type": "auth", "user": ' + nested_arrays(100) + b"}", 200, {}, id="100 levels inside an event"
    ),
    pytest.param(lambda w, c: b"[" + valid_event_bytes(w) + b"]", 200, {}, id="JSON array"),
    pytest.param(lambda w, c: b"42", 200, {}, id="JSON number"),
    pytest.param(lambda w, c: b'"auth"', 200, {}, id="JSON string"),
    pytest.param(lambda w, c: b"null", 200, {}, id="JSON null"),
    pytest.param(lambda w, c: b"true", 200, {}, id="JSON true"),
    pytest.param(lambda w, c: valid_event_bytes(w, type=None), 200, {}, id="no type"),
    pytest.param(lambda w, c: valid_event_bytes(w, type=["auth"]), 200, {}, id="type not a string"),
    pytest.param(lambda w, c: valid_event_bytes(w, type="auth\u0000"), 200, {}, id="NUL in the type"),
    pytest.param(
        lambda w, c: valid_event_bytes(w, reference_id=w.ada_reference_id + "\u0000"),
        200,
        {},
        id="NUL in the reference_id",
    ),
    pytest.param(lambda w, c: with_user(w, user_id="terra\ud800"), 200, {}, id="lone surrogate in the user id"),
    pytest.param(lambda w, c: with_user(w, user_id="u" * 65), 200, {}, id="Terra user id of 65 characters"),
    pytest.param(
        lambda w, c: valid_event_bytes(w, reference_id=None).replace(
            json.dumps(w.ada_reference_id).encode(), b'{"$ne": null}'
        ),
        200,
        {},
        id="reference_id an object",
    ),
    # Past Python's int_max_str_digits (4300): json.loads raises a ValueError that is not a JSONDecodeError.
    pytest.param(
        lambda w, c: valid_event_bytes(w)[:-1] + b', "n": ' + b"9" * 5000 + b"}", 200, {}, id="a 5000-digit number"
    ),
    pytest.param(
        lambda w, c: valid_event_bytes(w, user=None).replace(b'"user": null', b'"user": [-' + b"1" * 5000 + b"]"),
        200,
        {},
        id="a 5000-digit negative number inside",
    ),
]


@pytest.mark.parametrize("make_body, status, config", WEBHOOK_BODIES)
def test_webhook_bodies_that_are_not_events_are_kept_failed_or_refused(app, client, world, make_body, status, config):
    """Verified but unreadable: acknowledged (Terra would retry an error for hours) and kept as one
    failed row for replay, changing nothing else. Too large: refused, nothing kept."""
    app.config.update(config)
    body = make_body(world, app.config)
    secret = app.config["TERRA_SIGNING_SECRET"]
    before = snapshot(app)
    response = post_webhook(client, body, signed(body, secret))
    after = snapshot(app)
    check(response, status)
    assert content_type(response) == "application/json"
    assert {name: rows for name, rows in after.items() if name != "webhook_events"} == {
        name: rows for name, rows in before.items() if name != "webhook_events"
    }
    if status == 413:
        # The webhook's own limit, or Werkzeug's MAX_CONTENT_LENGTH when that one is the smaller.
        too_large = "request_entity_too_large" if "WEBHOOK_MAX_BYTES" in config else "payload_too_large"
        assert error_code(response) == too_large
        assert after["webhook_events"] == before["webhook_events"]
        return
    assert response.get_json()["status"] == "failed"
    with app.app_context():
        [row] = db.session.scalars(select(WebhookEvent)).all()
    assert (row.event_type, row.outcome) == ("unreadable", "failed") and row.detail


@pytest.mark.parametrize("make_body, status, config", WEBHOOK_BODIES)
def test_webhook_bodies_that_are_not_events_are_refused_for_their_signature_first(
    app, client, world, make_body, status, config
):
    """The same bodies, signed with another secret: the signature is checked before the body is read
    (only the size limits come first), so the answer is the signature's 401, never the parser's 400."""
    app.config.update(config)
    body = make_body(world, app.config)
    with unchanged(app):
        response = post_webhook(client, body, signed(body, "not-the-signing-secret"))
    check(response, 413 if status == 413 else 401)
    if status != 413:
        assert error_code(response) == "invalid_signature"


def test_a_captured_webhook_replayed_under_a_fresh_trace_id_changes_nothing(app, client, world):
    """Within the signature's tolerance a captured delivery still verifies; the inbox knows its signed
    payload, so it is acknowledged as a duplicate and not applied again."""
    body = valid_event_bytes(world)
    captured = {**signed(body, app.config["TERRA_SIGNING_SECRET"]), "X-Terra-Trace-Id": "trace-genuine"}
    check(post_webhook(client, body, captured), 200)
    with unchanged(app):
        response = check(post_webhook(client, body, {**captured, "X-Terra-Trace-Id": "trace-fresh"}), 200)
    assert response.get_json() == {"status": "duplicate", "trace_id": "trace-fresh"}


@pytest.mark.parametrize("name", ["X-Terra-Trace-Id", "terra-reference"])
def test_webhook_nul_in_a_stored_header_is_refused(app, client, world, name):
    body = valid_event_bytes(world)
    with unchanged(app):
        response = post_webhook(client, body, {**signed(body, app.config["TERRA_SIGNING_SECRET"]), name: "trace\x00"})
    check(response, 400)
    assert name in response.get_json()["error"]["message"]


def chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield b" " * piece
        sent += piece


@pytest.mark.parametrize("size_name", ["WEBHOOK_MAX_BYTES", "MAX_CONTENT_LENGTH"])
def test_webhook_oversized_chunked_body_without_content_length_is_413(live_server, size_name):
    """Over real HTTP, with Transfer-Encoding: chunked: the limits hold without a Content-Length too."""
    size = live_server.app.config[size_name] + 1
    with unchanged(live_server.app):
        response = requests.post(
            live_server.url + "/webhooks/terra",
            data=chunks(size),
            timeout=30,
            headers={"Content-Type": "application/json", "X-Terra-Signature": "t=1,v1=00"},
        )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    check(response, 413)


def other_key_reference_id(app, world) -> str:
    return URLSafeSerializer("another-secret-key", salt=REFERENCE_ID_SALT).dumps("abcdefghijklmnop")


def changed_payload(token: str) -> str:
    """One character of the signed payload (not of the signature) changed."""
    index = 3
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


def session_cookie_value(app, user_id: int) -> str:
    return app.session_interface.get_signing_serializer(app).dumps({"user_id": user_id})


# Each: (app, world) -> the reference_id a correctly signed auth event carries (in the event and its user).
FOREIGN_REFERENCE_IDS = [
    pytest.param(other_key_reference_id, id="signed with another SECRET_KEY"),
    pytest.param(
        lambda app, w: URLSafeSerializer(signing_keys()).dumps("abcdefghijklmnop"), id="the right key, without the salt"
    ),
    pytest.param(lambda app, w: "f3b1c0de-unsigned-reference", id="unsigned"),
    pytest.param(lambda app, w: "null", id="the literal null"),
    pytest.param(lambda app, w: None, id="absent"),
    pytest.param(lambda app, w: w.ada_attempt_token, id="another purpose's signed value: attempt token"),
    pytest.param(lambda app, w: session_cookie_value(app, w.ada_id), id="another purpose's signed value: session"),
    pytest.param(lambda app, w: changed_payload(w.ada_reference_id), id="Ada's, one payload character changed"),
    pytest.param(lambda app, w: w.ada_reference_id.rsplit(".", 1)[0], id="Ada's without its signature"),
    pytest.param(lambda app, w: w.ada_reference_id + "\n", id="Ada's with a trailing newline"),
    pytest.param(lambda app, w: w.ada_reference_id.upper(), id="Ada's in upper case"),
    pytest.param(lambda app, w: SQL, id="SQL"),
    pytest.param(lambda app, w: SCRIPT, id="HTML"),
]


@pytest.mark.parametrize("make_reference_id", FOREIGN_REFERENCE_IDS)
def test_webhook_with_a_foreign_reference_id_is_recorded_and_ignored(app, client, world, make_reference_id):
    reference_id = in_request(app, lambda: make_reference_id(app, world))
    event = ada_auth_event(world, reference_id=reference_id)
    event["user"]["reference_id"] = reference_id
    body = json.dumps(event).encode()
    before = snapshot(app)
    response = check(post_webhook(client, body, signed(body, app.config["TERRA_SIGNING_SECRET"])), 200)
    assert response.get_json()["status"] == "received"
    after = snapshot(app)
    # A verified delivery is always kept in the inbox (for replay); nothing else may change.
    assert {name: rows for name, rows in after.items() if name != "webhook_events"} == {
        name: rows for name, rows in before.items() if name != "webhook_events"
    }
    with app.app_context():
        new = db.session.execute(select(db.metadata.tables["webhook_events"])).all()[len(before["webhook_events"]) :]
    assert [(row.event_type, row.outcome) for row in new] == [("auth", "ignored")]


@pytest.mark.parametrize("make_reference_id", FOREIGN_REFERENCE_IDS)
def test_a_foreign_reference_id_is_refused_by_its_signature_before_any_lookup(app, world, make_reference_id):
    """The database lookup that follows would find no owner either: this checks the signature does it."""
    with app.test_request_context():
        assert not is_authentic(make_reference_id(app, world))
        assert is_authentic(world.ada_reference_id)


def test_webhook_for_eve_naming_adas_attempt_leaves_adas_attempt_alone(app, client, world):
    """Correlation by widget session id is limited to the event's owner: Eve's genuine auth that names
    Ada's widget session links Eve's connection, ends none of Eve's attempts (it names none of
    them), and Ada's attempts stay as they were."""
    eve = SimpleNamespace(reference_id=world.eve_reference_id)
    body = json.dumps(auth_event(eve, terra_user(eve, "eve-new-terra-user"), session_id=world.ada_session_id)).encode()
    attempts = db.metadata.tables["connect_attempts"]

    def adas_attempts(rows):
        return [row for row in rows if row[attempts.c.keys().index("user_id")] == world.ada_id]

    before = snapshot(app)
    check(post_webhook(client, body, signed(body, app.config["TERRA_SIGNING_SECRET"])), 200)
    after = snapshot(app)
    assert adas_attempts(after["connect_attempts"]) == adas_attempts(before["connect_attempts"])
    assert after["users"] == before["users"] and after["api_tokens"] == before["api_tokens"]
    with app.app_context():
        eves = db.session.execute(select(attempts).where(attempts.c.id == world.eve_attempt)).one()
        new_connection = db.session.scalars(
            select(Connection).where(Connection.terra_user_id == "eve-new-terra-user")
        ).one()
    assert (eves.status, eves.connection_id, new_connection.user_id) == ("pending", None, world.eve_id)


# == the JSON API =======================================================================================

TOKEN_BODY = {"email": "ada@example.com", "password": PASSWORD}  # valid: would issue a token
ATTEMPT_BODY: dict = {}  # valid: would create an attempt (and call Terra)


def api_post(client, path: str, body: Any, content_type: str | None, token: str | None = None):
    headers = bearer(token) if token else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post(path, data=body, headers=headers)


def multipart(client, path: str, fields: dict, token: str | None):
    return client.post(
        path,
        data={key: str(value) for key, value in fields.items()} or {"x": "1"},
        content_type="multipart/form-data",
        headers=bearer(token) if token else {},
    )


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


# Each: (valid body as a dict) -> (raw body, content type). All are 400 invalid_request except the 413.
API_BODIES = [
    pytest.param(lambda valid: (as_json(valid), "text/plain"), 400, id="text/plain"),
    pytest.param(
        lambda valid: ("&".join(f"{k}={quote(str(v))}" for k, v in valid.items()), "application/x-www-form-urlencoded"),
        400,
        id="form-urlencoded",
    ),
    pytest.param("multipart", 400, id="multipart/form-data"),
    pytest.param(lambda valid: (as_json(valid), None), 400, id="no content type"),
    pytest.param(lambda valid: (b"<credentials/>", "application/xml"), 400, id="application/xml"),
    pytest.param(lambda valid: (as_json(valid), "application/javascript"), 400, id="application/javascript"),
    pytest.param(lambda valid: (as_json(valid)[:-3], "application/json"), 400, id="truncated JSON"),
    pytest.param(lambda valid: (b"", "application/json"), 400, id="empty"),
    pytest.param(
        lambda valid: (b'{"email": "caf\xe9@example.com", "password": "x"}', "application/json"), 400, id="non-UTF-8"
    ),
    pytest.param(lambda valid: (nested_arrays(DEEP), "application/json"), 400, id="10,000 nested arrays"),
    pytest.param(lambda valid: (nested_objects(DEEP), "application/json"), 400, id="10,000 nested objects"),
    pytest.param(
        lambda valid: (
            as_json(valid)[:-1] + (b", " if valid else b"") + b'"x": ' + nested_arrays(DEEP) + b"}",
            "application/json",
        ),
        400,
        id="10,000 levels in a field",
    ),
    pytest.param(lambda valid: (as_json([valid]), "application/json"), 400, id="JSON array"),
    pytest.param(lambda valid: (b"42", "application/json"), 400, id="JSON number"),
    pytest.param(lambda valid: (b'"ada@example.com"', "application/json"), 400, id="JSON string"),
    pytest.param(lambda valid: (b"null", "application/json"), 400, id="JSON null"),
    pytest.param(lambda valid: (as_json({**valid, "note": "a\u0000b"}), "application/json"), 400, id="NUL in a string"),
    pytest.param(
        lambda valid: (as_json({**valid, "note": "a\ud800b"}), "application/json"), 400, id="lone surrogate in a string"
    ),
    pytest.param(
        lambda valid: (b'{"pad": "' + b"x" * (1024 * 1024) + b'"}', "application/json"),
        413,
        id="over MAX_CONTENT_LENGTH",
    ),
]


@pytest.mark.parametrize(
    "path, valid, authenticated",
    [
        pytest.param("/api/v1/tokens", TOKEN_BODY, False, id="POST tokens"),
        pytest.param("/api/v1/connect-attempts", ATTEMPT_BODY, True, id="POST connect-attempts"),
    ],
)
@pytest.mark.parametrize("make, status", API_BODIES)
def test_api_bodies_that_are_not_json_objects_are_refused(app, client, world, path, valid, authenticated, make, status):
    token = world.ada_token if authenticated else None
    with unchanged(app):
        if make == "multipart":
            response = multipart(client, path, valid, token)
        else:
            body, media_type = make(valid)
            response = api_post(client, path, body, media_type, token)
    check(response, status)
    assert content_type(response) == "application/json" and response.headers["Cache-Control"] == "no-store"
    assert error_code(response) == ("invalid_request" if status == 400 else "request_entity_too_large")


TOKEN_FIELDS = [
    pytest.param({"email": SQL, "password": "x"}, 401, "invalid_credentials", id="SQL email"),
    pytest.param(
        {"email": "ada@example.com' --", "password": "x"}, 401, "invalid_credentials", id="SQL comment after the email"
    ),
    pytest.param({"email": "ada@example.com", "password": SQL}, 401, "invalid_credentials", id="SQL password"),
    pytest.param({"email": "%", "password": PASSWORD}, 401, "invalid_credentials", id="LIKE wildcard email"),
    pytest.param(
        {"email": "%@example.com", "password": PASSWORD}, 401, "invalid_credentials", id="LIKE wildcard in the email"
    ),
    pytest.param(
        {"email": "_da@example.com", "password": PASSWORD}, 401, "invalid_credentials", id="single-character wildcard"
    ),
    pytest.param({"email": SCRIPT, "password": SCRIPT}, 401, "invalid_credentials", id="HTML"),
    pytest.param({"email": {"$ne": None}, "password": {"$ne": None}}, 400, "invalid_request", id="operator objects"),
    pytest.param({"email": ["ada@example.com"], "password": PASSWORD}, 400, "invalid_request", id="email a list"),
    pytest.param({"email": "ada@example.com", "password": True}, 400, "invalid_request", id="password true"),
    pytest.param({"email": "ada@example.com\u0000", "password": PASSWORD}, 400, "invalid_request", id="NUL email"),
    pytest.param(
        {"email": "ada\udfff@example.com", "password": PASSWORD}, 400, "invalid_request", id="lone surrogate email"
    ),
]


@pytest.mark.parametrize("body, status, code", TOKEN_FIELDS)
def test_api_sign_in_with_hostile_fields_issues_nothing(app, client, world, body, status, code):
    with unchanged(app):
        response = client.post("/api/v1/tokens", json=body)
    check(response, status)
    assert error_code(response) == code


ATTEMPT_FIELDS = [
    pytest.param({"language": SQL}, "invalid_language", id="SQL language"),
    pytest.param({"language": SCRIPT}, "invalid_language", id="HTML language"),
    pytest.param({"language": "en\n"}, "invalid_language", id="language with a trailing newline"),
    pytest.param({"language": "EN"}, "invalid_language", id="language in upper case"),
    pytest.param({"language": 5}, "invalid_language", id="language a number"),
    pytest.param({"return": SQL}, "invalid_return", id="SQL return"),
    pytest.param({"return": SCRIPT}, "invalid_return", id="HTML return"),
    pytest.param({"return": "app\n"}, "invalid_return", id="return with a trailing newline"),
    pytest.param({"providers": {"$ne": 1}}, "invalid_providers", id="providers an object"),
    pytest.param({"providers": [SQL_DROP, 5]}, "invalid_providers", id="providers with a number"),
    pytest.param({"providers": []}, "invalid_providers", id="providers empty"),
    pytest.param({"providers": SCRIPT}, "invalid_providers", id="providers a string"),
]


@pytest.mark.parametrize("body, code", ATTEMPT_FIELDS)
def test_api_attempt_with_hostile_fields_creates_nothing(app, client, world, body, code):
    with unchanged(app):
        response = client.post("/api/v1/connect-attempts", json=body, headers=bearer(world.ada_token))
    check(response, 400)
    assert error_code(response) == code


@pytest.mark.parametrize(
    "providers",
    [
        pytest.param([SQL], id="SQL"),
        pytest.param([SQL_DROP], id="SQL DROP TABLE"),
        pytest.param([SCRIPT], id="HTML"),
        pytest.param(["GARMIN\n"], id="trailing newline"),
        pytest.param(["GARMIN", "FITBIT' --"], id="one good one bad"),
        pytest.param([""], id="empty string"),
    ],
)
def test_api_attempt_with_hostile_provider_codes_creates_nothing(live_server, providers):
    """A value that is not written like a provider code is refused before Terra's list is asked
    for, as on the web (services/providers.py)."""
    world = build_world(live_server.app)
    with unchanged(live_server.app):
        response = requests.post(
            live_server.url + "/api/v1/connect-attempts",
            json={"providers": providers},
            headers=bearer(world.ada_token),
            timeout=10,
        )
    check(response, 400)
    assert error_code(response) == "unknown_provider" and content_type(response) == "application/json"
    assert traffic_of(live_server.app).requests("sandbox.integrations_detailed") == []


# `?wait=` takes whole seconds from 0 to 25 (docs/openapi.json; tests/test_openapi.py checks that the
# document refuses these too).
# Digits other than ASCII's, and what int() forgives around them, too.
BAD_WAITS = [SQL, SCRIPT, "soon", "0x10", "1e1", "26", "-1", "2.5", "", "٣", " 5", "5 ", "+5", "1_0", "0026"]


@pytest.mark.parametrize("wait", BAD_WAITS)
def test_api_hostile_wait_is_400(app, client, world, wait):
    with unchanged(app):
        response = client.get(
            f"/api/v1/connect-attempts/{world.ada_attempt}",
            query_string={"wait": wait},
            headers=bearer(world.ada_token),
        )
    check(response, 400)
    assert error_code(response) == "invalid_wait"


@pytest.mark.parametrize("etag", [SQL, SCRIPT, '"1", *', "*" * 5000])
def test_api_hostile_if_none_match_changes_nothing(app, client, world, etag):
    with unchanged(app):
        response = client.get(
            f"/api/v1/connect-attempts/{world.ada_attempt}", headers={**bearer(world.ada_token), "If-None-Match": etag}
        )
    # '"1", *' names the current version (1), so that one is a 304; the rest match nothing.
    check(response, 304 if etag.startswith('"1"') else 200)


# Each: (world) -> (method, path). Ada's token; every one names nothing of hers.
API_IDS = [
    pytest.param(lambda w: ("GET", "/api/v1/connect-attempts/" + quote(SQL, safe="")), id="SQL attempt id"),
    pytest.param(lambda w: ("GET", "/api/v1/connect-attempts/" + quote(SCRIPT, safe="")), id="HTML attempt id"),
    pytest.param(lambda w: ("GET", "/api/v1/connect-attempts/%00"), id="NUL attempt id"),
    pytest.param(
        lambda w: ("POST", f"/api/v1/connect-attempts/{w.ada_attempt}%00/browser-closed"),
        id="Ada's attempt id with NUL appended",
    ),
    pytest.param(
        lambda w: ("GET", f"/api/v1/connect-attempts/{w.ada_attempt}%20OR%201%3D1"),
        id="Ada's attempt id with SQL appended",
    ),
    pytest.param(lambda w: ("GET", f"/api/v1/connect-attempts/{w.ada_attempt}x" + "y" * 40), id="attempt id too long"),
    pytest.param(lambda w: ("GET", "/api/v1/connect-attempts/..%2F..%2Fconnections"), id="path traversal"),
    pytest.param(lambda w: ("DELETE", "/api/v1/connections/2147483648"), id="connection id 2**31"),
    pytest.param(lambda w: ("DELETE", f"/api/v1/connections/{10**30}"), id="connection id 10**30"),
    pytest.param(lambda w: ("DELETE", "/api/v1/connections/-1"), id="negative connection id"),
    pytest.param(lambda w: ("DELETE", "/api/v1/connections/1%20OR%201=1"), id="SQL connection id"),
]


@pytest.mark.parametrize("make", API_IDS)
def test_api_ids_that_are_not_the_callers_are_404(app, client, world, make):
    method, path = make(world)
    with unchanged(app):
        response = client.open(path, method=method, headers=bearer(world.ada_token))
    check(response, 404)
    assert error_code(response) == "not_found" and content_type(response) == "application/json"
    assert response.get_json()["error"]["message"]  # a readable message, whichever check refused it


def revoked(app, token: str) -> str:
    with app.app_context():
        db.session.execute(update(ApiToken).values(revoked_at=utcnow()).where(ApiToken.token_hash == hash_token(token)))
        db.session.commit()
    return token


# Each: (app, world) -> request keyword arguments for GET /api/v1/connections.
API_CREDENTIALS = [
    pytest.param(lambda app, w: {"headers": bearer(changed_payload(w.ada_token))}, id="one character changed"),
    pytest.param(lambda app, w: {"headers": bearer(w.ada_token[:-1])}, id="last character cut"),
    pytest.param(lambda app, w: {"headers": bearer(w.ada_token + "x")}, id="one character added"),
    pytest.param(lambda app, w: {"query_string": {"access_token": w.ada_token}}, id="in the query string"),
    pytest.param(lambda app, w: {"data": {"access_token": w.ada_token}}, id="in a form body"),
    pytest.param(lambda app, w: {"headers": {"Authorization": f"Basic {w.ada_token}"}}, id="as Basic credentials"),
    pytest.param(lambda app, w: {"headers": bearer(f"{w.ada_token} {w.eve_token}")}, id="two tokens"),
    pytest.param(lambda app, w: {"headers": bearer(SQL)}, id="SQL"),
    pytest.param(lambda app, w: {"headers": bearer(w.ada_reference_id)}, id="another signed value"),
    pytest.param(
        lambda app, w: {"headers": bearer(db.session.scalars(select(ApiToken.token_hash)).first())},
        id="the stored hash of a token",
    ),
    pytest.param(lambda app, w: {"headers": bearer(revoked(app, w.eve_token))}, id="Eve's revoked token"),
]


@pytest.mark.parametrize("make", API_CREDENTIALS)
def test_api_tampered_bearer_tokens_are_401(app, client, world, make):
    with app.app_context():
        kwargs = make(app, world)
    with unchanged(app):
        response = client.open("/api/v1/connections", method="GET", **kwargs)
    check(response, 401)
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")


# == return pages =======================================================================================

RETURN_PAGES = [
    "/connect/return/success",
    "/connect/return/failure",
    "/connect/attempts/status",
    "/mobile/return/success",
    "/mobile/return/failure",
]


TINY_MAX_AGE = 60  # seconds; the default is two days


def with_token(page: str, token: str | None, **params) -> tuple[str, dict]:
    """(path, query) of `page` for `token`: in the path of the return pages, in the query of the
    status endpoint (None: no token at all)."""
    if page.startswith("/connect/attempts/"):
        return page, params if token is None else {"attempt": token, **params}
    return (page if token is None else f"{page}/{quote(token, safe='')}"), params


class _TwoMinutesAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 2 * TINY_MAX_AGE


def expired_token(app, world: World) -> str:
    app.config["ATTEMPT_TOKEN_MAX_AGE"] = TINY_MAX_AGE
    return URLSafeTimedSerializer(signing_keys(), salt=TOKEN_SALT, signer=_TwoMinutesAgo).dumps(world.ada_attempt)


def signed_attempt_id(attempt_id: str) -> str:
    return URLSafeTimedSerializer(signing_keys(), salt=TOKEN_SALT).dumps(attempt_id)


# Each: (app, world) -> the attempt token (None: absent).
ATTEMPT_TOKENS = [
    pytest.param(lambda app, w: None, id="absent"),
    pytest.param(lambda app, w: "", id="empty"),
    pytest.param(lambda app, w: "forged", id="forged"),
    pytest.param(lambda app, w: SQL, id="SQL"),
    pytest.param(lambda app, w: SCRIPT, id="HTML"),
    pytest.param(lambda app, w: changed_payload(w.ada_attempt_token), id="one payload character changed"),
    pytest.param(lambda app, w: w.ada_attempt_token.rsplit(".", 1)[0], id="signature removed"),
    pytest.param(lambda app, w: w.ada_attempt, id="the bare attempt id"),
    pytest.param(lambda app, w: w.ada_reference_id, id="another purpose's signed value: reference_id"),
    pytest.param(lambda app, w: session_cookie_value(app, w.ada_id), id="another purpose's signed value: session"),
    pytest.param(
        lambda app, w: URLSafeTimedSerializer("another-key", salt=TOKEN_SALT).dumps(w.ada_attempt),
        id="signed with another key",
    ),
    # The salt keeps purposes apart: the same key and payload under itsdangerous' default salt is not a token.
    pytest.param(
        lambda app, w: URLSafeTimedSerializer(signing_keys()).dumps(w.ada_attempt), id="the right key, without the salt"
    ),
    pytest.param(expired_token, id="expired (ATTEMPT_TOKEN_MAX_AGE=60, made 120 s ago)"),
    pytest.param(lambda app, w: signed_attempt_id("no-such-attempt"), id="signed, unknown attempt"),
    pytest.param(lambda app, w: signed_attempt_id(SQL), id="signed, SQL as the attempt id"),
]


@pytest.mark.parametrize("page", RETURN_PAGES)
@pytest.mark.parametrize("make_token", ATTEMPT_TOKENS)
def test_return_pages_refuse_tampered_attempt_tokens(app, client, world, page, make_token):
    token = in_request(app, lambda: make_token(app, world))
    with unchanged(app):
        path, query = with_token(page, token)
        response = client.get(path, query_string=query)
    check(response, 404)
    # A return page says so; without a token, or with a "/" in it, no return page's route matches.
    if "/return/" in page and token and "/" not in token:
        assert "This connection link is not valid" in body_text(response)


def test_a_fresh_token_under_the_same_tiny_max_age_is_accepted(app, client, world):
    """Control for the expired case: the limit is what refuses it, not something else."""
    app.config["ATTEMPT_TOKEN_MAX_AGE"] = TINY_MAX_AGE
    check(client.get("/connect/attempts/status", query_string={"attempt": world.ada_attempt_token}), 200)


@pytest.mark.parametrize("page", [page for page in RETURN_PAGES if "/return/" in page])
def test_return_pages_of_another_users_attempt_record_only_the_hint(app, client, world, page):
    """The token is the capability and the hint is advisory (blueprints/connect.py): Eve's visit to
    Ada's link may note the claim, and changes nothing else; the page tells Eve it is not hers."""
    log_in(client, world.eve_id)
    before = snapshot(app)
    path, query = with_token(page, world.ada_attempt_token, user_id="terra-claim")
    response = client.get(path, query_string=query)
    after = snapshot(app)
    check(response, 200)
    assert "not for your account" in body_text(response)
    assert {name: rows for name, rows in after.items() if name != "connect_attempts"} == {
        name: rows for name, rows in before.items() if name != "connect_attempts"
    }
    with app.app_context():
        attempts = db.metadata.tables["connect_attempts"].c
        row = db.session.execute(
            select(attempts.user_id, attempts.status, attempts.redirect_terra_user_id).where(
                attempts.id == world.ada_attempt
            )
        ).one()
    assert tuple(row) == (world.ada_id, "pending", "terra-claim")


def test_an_overlong_claimed_terra_user_id_is_stored_cut_to_its_column(app, client, world):
    claim = "u" * 500
    check(client.get(f"/connect/return/success/{world.ada_attempt_token}", query_string={"user_id": claim}), 200)
    with app.app_context():
        attempts = db.metadata.tables["connect_attempts"].c
        stored = db.session.scalar(select(attempts.redirect_terra_user_id).where(attempts.id == world.ada_attempt))
    assert stored == "u" * 64  # String(64)


# Extra query parameters, as Terra merges them into our return URL (or an attacker adds them).
RETURN_PARAMS = [
    pytest.param({"reason": SCRIPT}, id="HTML reason"),
    pytest.param({"reason": IMG}, id="attribute-breaking reason"),
    pytest.param({"reason": SQL_DROP}, id="SQL reason"),
    pytest.param({"resource": SCRIPT}, id="HTML resource"),
    pytest.param({"reference_id": SCRIPT}, id="HTML reference_id"),
    pytest.param({"tried": SCRIPT}, id="HTML tried"),
    pytest.param({"user_id": "null"}, id="user_id the literal null"),
    pytest.param({"user_id": "terra\x00"}, id="NUL user_id"),
]


@pytest.mark.parametrize(
    "page", ["/connect/return/success", "/connect/return/failure", "/mobile/return/success", "/mobile/return/failure"]
)
@pytest.mark.parametrize("params", RETURN_PARAMS)
def test_return_pages_show_no_query_parameter_and_store_nothing(app, client, world, page, params):
    # The attempt already carries the hint this page records, so a visit changes nothing.
    token = world.returned_success if page.endswith("success") else world.returned_failure
    with unchanged(app):
        response = client.get(f"{page}/{token}", query_string=params)
    check(response, 200)
    assert content_type(response) == "text/html"


ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Version/18.0 Mobile/15E148"

# Query parameters that try to choose where the mobile return page sends the browser.
REDIRECT_PARAMS = [
    pytest.param({"redirect_uri": "https://evil.example/"}, id="redirect_uri https"),
    pytest.param({"next": "//evil.example"}, id="next //evil"),
    pytest.param({"return_to": "javascript:alert(1)"}, id="return_to javascript:"),
    pytest.param({"app_link": "evil.example://connect/success"}, id="app_link other scheme"),
    pytest.param({"scheme": "javascript", "package": "evil.example"}, id="scheme and package"),
    pytest.param({"tried": "1", "fallback": "https://evil.example/"}, id="fallback https"),
]


@pytest.mark.parametrize("agent", [pytest.param(ANDROID, id="Android"), pytest.param(IPHONE, id="iPhone")])
@pytest.mark.parametrize("outcome", ["success", "failure"])
@pytest.mark.parametrize("params", REDIRECT_PARAMS)
def test_mobile_return_links_come_only_from_configuration(app, client, world, params, outcome, agent):
    token = world.returned_success if outcome == "success" else world.returned_failure
    with unchanged(app):
        response = client.get(f"/mobile/return/{outcome}/{token}", query_string=params, headers={"User-Agent": agent})
    check(response, 200)
    page = response.get_data(as_text=True)
    link = re.search(r'id="return-to-app" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    deep_link = f"connect/{outcome}?attempt_id={world.returned_ids[outcome]}"
    if agent == ANDROID:
        assert link.startswith(f"intent://{deep_link}#Intent;scheme=com.example.terraconnect;")
    else:
        assert link == f"com.example.terraconnect://{deep_link}"
    assert "evil" not in page and "javascript:" not in page


# Every query parameter the return pages read; no other name may change what they answer.
PAGE_PARAMETERS = {"attempt", "tried", "user_id", "resource", "reference_id"}  # reference_id: only handed back to
# the page itself, in Chrome's intent fallback, with Terra's other parameters
# Names a redirect target is often looked for under (REDIRECT_PARAMS has six more).
REDIRECT_NAMES = [
    "redirect",
    "redirect_url",
    "redirectUrl",
    "redirect_to",
    "url",
    "uri",
    "link",
    "deep_link",
    "deeplink",
    "app_url",
    "applink",
    "universal_link",
    "intent",
    "target",
    "dest",
    "destination",
    "continue",
    "goto",
    "go",
    "to",
    "out",
    "view",
    "callback",
    "cb",
    "return",
    "returnUrl",
    "return_url",
    "success_url",
    "failure_url",
    "auth_success_redirect_url",
    "auth_failure_redirect_url",
    "browser_fallback_url",
    "origin",
    "host",
    "path",
    "forward",
    "location",
    "state",
    "r",
    "u",
]
EVIL_TARGETS = [
    "https://evil.example/",
    "evil.example://connect/success",
    "javascript:alert(1)",
    "//evil.example",
    "intent://connect/success#Intent;scheme=evil.example;end",
]
HTML_RETURN_PAGES = [page for page in RETURN_PAGES if "/return/" in page]


def without_nonce(page: str) -> str:
    return re.sub(r'nonce="[^"]*"', 'nonce=""', page)


def returned_token(world: World, page: str) -> str:
    """The token of Ada's attempt that already carries the hint `page` records: a visit stores nothing."""
    return world.returned_success if page.endswith("success") else world.returned_failure


@pytest.mark.parametrize("page", HTML_RETURN_PAGES)
@given(
    extra=st.dictionaries(
        keys=st.one_of(st.sampled_from(REDIRECT_NAMES), st.text(min_size=1, max_size=12)).filter(
            lambda name: name not in PAGE_PARAMETERS
        ),
        values=st.sampled_from(EVIL_TARGETS),
        min_size=1,
        max_size=8,
    )
)
@example(extra=dict.fromkeys(REDIRECT_NAMES, EVIL_TARGETS[0]))
@settings(
    derandomize=True,
    database=None,
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_no_other_query_parameter_reaches_a_return_page(app, client, world, page, extra):
    """Any parameter name, not only the six of REDIRECT_PARAMS: the page, its "Return to app" link
    and its headers are exactly what they are without it."""
    (path, query), headers = with_token(page, returned_token(world, page)), {"User-Agent": ANDROID}
    plain = client.get(path, query_string=query, headers=headers)
    with unchanged(app):
        response = check(client.get(path, query_string={**query, **extra}, headers=headers), 200)
    assert "Location" not in response.headers
    assert without_nonce(response.get_data(as_text=True)) == without_nonce(plain.get_data(as_text=True))


@pytest.fixture
def parameters_read(app) -> set[str]:
    """The query parameter names the app reads during a request (`*` when it goes through all of them)."""
    names: set[str] = set()

    class RecordingArgs(ImmutableMultiDict):
        def __getitem__(self, key):  # get() reads through here too
            names.add(key)
            return super().__getitem__(key)

        def getlist(self, key, type=None):
            names.add(key)
            return super().getlist(key, type)

        def __contains__(self, key):
            names.add(key)
            return super().__contains__(key)

        def __iter__(self):
            names.add("*")
            return super().__iter__()

        def items(self, multi=False):
            names.add("*")
            return super().items(multi)

        def values(self):
            names.add("*")
            return super().values()

    app.request_class = type("RecordingRequest", (app.request_class,), {"parameter_storage_class": RecordingArgs})
    return names


@pytest.mark.parametrize("page", RETURN_PAGES)
def test_return_pages_read_no_query_parameter_but_their_own(app, client, world, page, parameters_read):
    """Whatever its name: a view that looked anything else up (a deep link from `?continue=`) would
    show here, even for a name that no table lists."""
    extra = {name: EVIL_TARGETS[0] for name in REDIRECT_NAMES + ["any-other-name"]}
    path, query = with_token(page, returned_token(world, page), tried="1", **extra)
    with unchanged(app):
        check(client.get(path, query_string=query, headers={"User-Agent": ANDROID}), 200)
    assert parameters_read <= PAGE_PARAMETERS
    assert ("attempt" in parameters_read) == page.startswith("/connect/attempts/")  # elsewhere it is in the path


def test_a_claimed_terra_user_id_is_stored_as_a_claim_and_never_shown(app, client, world):
    before = snapshot(app)
    response = check(
        client.get(f"/connect/return/success/{world.returned_success}", query_string={"user_id": SCRIPT}), 200
    )
    after = snapshot(app)
    assert {k: v for k, v in after.items() if k != "connect_attempts"} == {
        k: v for k, v in before.items() if k != "connect_attempts"
    }
    assert SCRIPT not in response.get_data(as_text=True)
    with app.app_context():
        claims = db.session.scalars(select(db.metadata.tables["connect_attempts"].c.redirect_terra_user_id)).all()
    assert SCRIPT in claims  # a hint only: the userInfo check decides, and it is never rendered


# == web forms ==========================================================================================


def csrf_token_of_another_session(app) -> str:
    other = app.test_client()
    page = other.get("/auth/login").get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)


# Each: (world) -> (path, form data, who is logged in).
WEB_FORMS = [
    pytest.param(
        lambda w: ("/auth/register", {"email": "mallory@example.com", "password": PASSWORD}, None), id="register"
    ),
    pytest.param(lambda w: ("/auth/login", {"email": "ada@example.com", "password": PASSWORD}, None), id="login"),
    pytest.param(lambda w: ("/auth/logout", {}, w.ada_id), id="logout"),
    pytest.param(lambda w: ("/connections/connect", {}, w.ada_id), id="connect"),
    pytest.param(lambda w: ("/connections/connect/GARMIN", {}, w.ada_id), id="connect GARMIN"),
    pytest.param(lambda w: (f"/connections/{w.ada_connection}/disconnect", {}, w.ada_id), id="disconnect"),
]
CSRF_TOKENS = [
    pytest.param(lambda app: {}, id="no token"),
    pytest.param(lambda app: {"csrf_token": "forged-token"}, id="forged token"),
    pytest.param(lambda app: {"csrf_token": csrf_token_of_another_session(app)}, id="another session's token"),
    pytest.param(
        lambda app: {"headers": {"X-CSRFToken": csrf_token_of_another_session(app)}},
        id="another session's token in X-CSRFToken",
    ),
]


@pytest.mark.parametrize("form", WEB_FORMS)
@pytest.mark.parametrize("make_token", CSRF_TOKENS)
def test_web_forms_without_a_valid_csrf_token_are_400(app, world, form, make_token):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    path, data, user_id = form(world)
    extra = make_token(app)
    headers = extra.pop("headers", {})
    if user_id is not None:
        log_in(client, user_id)
    with unchanged(app):
        response = client.post(path, data={**data, **extra}, headers=headers)
    check(response, 400)
    assert logged_in_as(client) == user_id  # neither logged in (login) nor out (logout)


def test_web_forms_with_a_valid_csrf_token_work(app, world):
    """Control for the table above."""
    app.config["WTF_CSRF_ENABLED"] = True
    browser = app.test_client()
    page = browser.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    response = browser.post("/auth/login", data={"email": "ada@example.com", "password": PASSWORD, "csrf_token": token})
    check(response, 303)
    assert logged_in_as(browser) == world.ada_id


# Each: (path, form data). All are refused with 400 and store nothing.
WEB_FIELDS = [
    pytest.param("/auth/register", {"email": f"{SCRIPT}@example.com", "password": PASSWORD}, id="register HTML email"),
    pytest.param("/auth/register", {"email": IMG, "password": PASSWORD}, id="register attribute-breaking email"),
    pytest.param("/auth/register", {"email": SQL, "password": PASSWORD}, id="register SQL email"),
    pytest.param(
        "/auth/register", {"email": f"x{SQL_DROP}@example.com", "password": PASSWORD}, id="register SQL DROP email"
    ),
    pytest.param("/auth/register", {"email": "ada@example.com", "password": SCRIPT}, id="register as Ada again"),
    pytest.param(
        "/auth/register", {"email": "not-an-email", "password": SCRIPT + IMG}, id="register HTML password, bad email"
    ),
    pytest.param(
        "/auth/register", {"email": "a" * 250 + "@example.com", "password": PASSWORD}, id="register email too long"
    ),
    pytest.param("/auth/register", {"email": "m@example.com", "password": "x" * 129}, id="register password too long"),
    pytest.param("/auth/register", {"email": "m\x00@example.com", "password": PASSWORD}, id="register NUL email"),
    pytest.param("/auth/login", {"email": SQL, "password": SQL}, id="login SQL"),
    pytest.param("/auth/login", {"email": "ada@example.com' --", "password": "x" * 8}, id="login SQL comment"),
    pytest.param("/auth/login", {"email": "ada@example.com", "password": SQL}, id="login SQL password"),
    pytest.param("/auth/login", {"email": "%@example.com", "password": PASSWORD}, id="login LIKE wildcard"),
    pytest.param("/auth/login", {"email": f"{SCRIPT}@example.com", "password": SCRIPT}, id="login HTML"),
    pytest.param("/auth/login", {"email": IMG, "password": IMG}, id="login attribute-breaking"),
    pytest.param("/auth/login", {"email": "ada@example.com\x00", "password": PASSWORD}, id="login NUL email"),
]


@pytest.mark.parametrize("path, data", WEB_FIELDS)
def test_web_forms_refuse_hostile_fields_and_show_them_escaped(app, client, world, path, data):
    with unchanged(app):
        response = client.post(path, data=data)
    check(response, 400)
    assert logged_in_as(client) is None
    page = response.get_data(as_text=True)
    assert 'type="password"' in page and data["password"] not in page  # a password is never echoed


def test_sql_in_a_valid_email_is_stored_verbatim_and_shown_escaped(app, client):
    email = "o'brien--@example.com"  # a valid address; quotes and dashes are allowed in the local part
    before = snapshot(app)
    check(client.post("/auth/register", data={"email": email, "password": PASSWORD}), 303)
    after = snapshot(app)
    assert [row[1] for row in after["users"]] == [email] and before["users"] == []
    page = check(client.get("/connections"), 200).get_data(as_text=True)
    assert "o&#39;brien--@example.com" in page and email not in page


def test_html_from_a_signed_webhook_is_shown_escaped(app, client, world):
    """Provider names and failure reasons come from Terra; pages must escape them like any input."""
    secret = app.config["TERRA_SIGNING_SECRET"]
    ada = SimpleNamespace(reference_id=world.ada_reference_id)
    connected = auth_event(ada, terra_user(ada, "terra-html", provider=SCRIPT, scopes=IMG), session_id="other")
    failed = {
        "type": "auth_cancelled",
        "reference_id": world.ada_reference_id,
        "reason": SCRIPT + IMG,
        "widget_session_id": world.ada_session_id,
    }
    for event in (connected, failed):
        body = json.dumps(event).encode()
        check(post_webhook(client, body, signed(body, secret)), 200)
    log_in(client, world.ada_id)
    dashboard = check(client.get("/connections"), 200).get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dashboard
    page = check(client.get(f"/connect/return/failure/{world.ada_attempt_token}"), 200)
    assert "&lt;script&gt;" in page.get_data(as_text=True)


# Provider codes in the URL of POST /connections/connect/<provider>: all 404 before Terra is asked.
PROVIDER_CODES = [
    pytest.param(quote(SCRIPT, safe=""), id="HTML"),
    pytest.param(quote(IMG, safe=""), id="attribute-breaking"),
    pytest.param(quote("GARMIN' OR '1'='1", safe=""), id="SQL"),
    pytest.param(quote(SQL_DROP, safe=""), id="SQL DROP TABLE"),
    pytest.param("GARMIN%0A", id="trailing newline"),
    pytest.param("GARMIN%00", id="NUL"),
    pytest.param("garmin", id="lower case"),
    pytest.param("G", id="too short"),
    pytest.param("G" * 41, id="too long"),
    pytest.param("..%2F..%2Fauth%2Flogout", id="path traversal"),
]


@pytest.mark.parametrize("code", PROVIDER_CODES)
def test_hostile_provider_codes_are_404(app, client, world, code):
    log_in(client, world.ada_id)
    with unchanged(app):
        response = client.post(f"/connections/connect/{code}")
    check(response, 404)


@pytest.mark.parametrize(
    "make_id",
    [
        pytest.param(lambda w: w.eve_connection, id="Eve's connection"),
        pytest.param(lambda w: 2**31, id="2**31"),
        pytest.param(lambda w: 10**30, id="10**30"),
        pytest.param(lambda w: -1, id="negative"),
        pytest.param(lambda w: "1%20OR%201=1", id="SQL"),
        pytest.param(lambda w: quote(SCRIPT, safe=""), id="HTML"),
    ],
)
def test_disconnecting_what_is_not_yours_is_404(app, client, world, make_id):
    log_in(client, world.ada_id)
    with unchanged(app):
        response = client.post(f"/connections/{make_id(world)}/disconnect")
    check(response, 404)


# == the login `next` redirect ==========================================================================

# (raw query value as an attacker writes it, the Location the app must answer with)
NEXT_TARGETS = [
    pytest.param("/connections/providers", "/connections/providers", id="a local path is kept"),
    pytest.param("/%252F%252Fevil.example", "/%2F%2Fevil.example", id="double-encoded stays a local path"),
    pytest.param("//evil.example", "/connections", id="//evil"),
    pytest.param("///evil.example", "/connections", id="///evil"),
    pytest.param("/\\evil.example", "/connections", id="/backslash evil"),
    pytest.param("\\\\evil.example", "/connections", id="two backslashes"),
    pytest.param("/\\/evil.example", "/connections", id="/ backslash /"),
    pytest.param("/x/..\\..\\\\evil.example", "/connections", id="backslashes later in the path"),
    pytest.param("https://evil.example", "/connections", id="https://evil"),
    pytest.param("http:evil.example", "/connections", id="http:evil"),
    pytest.param("HTTPS://evil.example", "/connections", id="upper-case scheme"),
    pytest.param("%2F%2Fevil.example", "/connections", id="%2F%2Fevil"),
    pytest.param("/%5Cevil.example", "/connections", id="/%5Cevil"),
    pytest.param("%5C%5Cevil.example", "/connections", id="%5C%5Cevil"),
    pytest.param("javascript:alert(1)", "/connections", id="javascript:"),
    pytest.param("data:text/html,%3Cscript%3Ealert(1)%3C/script%3E", "/connections", id="data:"),
    pytest.param("%09//evil.example", "/connections", id="tab then //evil"),
    pytest.param("/%09/evil.example", "/connections", id="/ tab /evil"),
    pytest.param("/%0A/evil.example", "/connections", id="/ LF /evil"),
    pytest.param("/%0D/evil.example", "/connections", id="/ CR /evil"),
    pytest.param("%20//evil.example", "/connections", id="space then //evil"),
    pytest.param("/%00/evil.example", "/connections", id="/ NUL /evil"),
    pytest.param("//evil.example%40good.example", "/connections", id="//evil@good"),
    pytest.param("/%2F/evil.example", "/connections", id="/%2F/evil (decodes to //)"),
    pytest.param("", "/connections", id="empty"),
]


@pytest.mark.parametrize("raw, location", NEXT_TARGETS)
def test_login_next_never_leaves_the_site(app, client, world, raw, location):
    with unchanged(app):
        response = client.post(f"/auth/login?next={raw}", data={"email": "ada@example.com", "password": PASSWORD})
    check(response, 303)
    assert response.headers["Location"] == location
    target = urlsplit(response.headers["Location"])
    assert not target.scheme and not target.netloc and location.startswith("/") and not location.startswith("//")
    assert logged_in_as(client) == world.ada_id


# == header injection ===================================================================================

# Each: the `next` value, and where the login sends the browser (a value with a control character is
# refused for the dashboard; the others are plain paths, kept percent-encoded).
HEADER_INJECTIONS = [
    pytest.param("/x%0d%0aSet-Cookie:%20injected=1", "/connections", id="CRLF Set-Cookie"),
    pytest.param("/x%0aSet-Cookie:%20injected=1", "/connections", id="LF Set-Cookie"),
    pytest.param("/x%0dSet-Cookie:%20injected=1", "/connections", id="CR Set-Cookie"),
    pytest.param("/x%0d%0a%0d%0a<script>alert(1)</script>", "/connections", id="CRLF CRLF body"),
    pytest.param("/x%0d%0aLocation:%20//evil.example", "/connections", id="CRLF second Location"),
    pytest.param(
        "/x%E5%98%8A%E5%98%8DSet-Cookie:%20injected=1",
        "/x%E5%98%8A%E5%98%8DSet-Cookie:%20injected=1",
        id="U+560A U+560D (CR/LF low bytes)",
    ),
]


def assert_single_clean_headers(response) -> None:
    for name, value in response.headers.items():
        assert "\r" not in value and "\n" not in value, f"{name}: {value!r}"
    assert "injected" not in response.headers.get("Set-Cookie", "")
    assert len(response.headers.getlist("Location")) == 1


@pytest.mark.parametrize("raw, location", HEADER_INJECTIONS)
def test_header_injection_through_next_is_not_possible(app, client, world, raw, location):
    with unchanged(app):
        response = client.post(f"/auth/login?next={raw}", data={"email": "ada@example.com", "password": PASSWORD})
    check(response, 303)
    assert_single_clean_headers(response)
    assert response.headers["Location"] == location
    assert client.get_cookie("injected") is None


def test_header_injection_over_real_http_gives_one_clean_header_block(live_server):
    """The raw bytes on the wire: one Location line, no injected header."""
    build_world(live_server.app)
    browser = Browser(live_server.url)
    page = browser.get("/auth/login").text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    body = f"email=ada%40example.com&password={quote(PASSWORD)}&csrf_token={quote(token)}"
    connection = http.client.HTTPConnection(urlsplit(live_server.url).netloc, timeout=10)
    connection.request(
        "POST",
        "/auth/login?next=/x%0d%0aSet-Cookie:%20injected=1",
        body=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": "; ".join(f"{name}={value}" for name, value in browser.http.cookies.items()),
        },
    )
    response = connection.getresponse()
    raw_headers = [f"{name}: {value}" for name, value in response.getheaders()]
    connection.close()
    assert response.status == 303
    assert [line for line in raw_headers if line.lower().startswith("location:")] == ["Location: /connections"]
    assert not any("injected" in line for line in raw_headers)


# == login brute force ==================================================================================


def test_login_brute_force_is_429_per_client_address(app, client, world):
    app.config["LOGIN_RATE_LIMIT"] = "3 per minute"
    attacker, bystander = {"REMOTE_ADDR": "203.0.113.7"}, {"REMOTE_ADDR": "198.51.100.20"}

    def login(password, address):
        return client.post("/auth/login", data={"email": "ada@example.com", "password": password}, environ_base=address)

    with unchanged(app):
        statuses = [login(f"guess number {n}", attacker).status_code for n in range(3)]
        over = check(login("guess number 4", attacker), 429)
        right = check(login(PASSWORD, attacker), 429)  # even the right password: the limit comes first
    assert statuses == [400, 400, 400]
    assert over.headers["Retry-After"] and right.status_code == 429
    assert logged_in_as(client) is None
    check(login(PASSWORD, bystander), 303)  # another address is not limited
    assert logged_in_as(client) == world.ada_id


def test_api_sign_in_brute_force_is_429_per_client_address(app, client, world):
    app.config["LOGIN_RATE_LIMIT"] = "3 per minute"

    def sign_in(password, address):
        return client.post(
            "/api/v1/tokens",
            json={"email": "ada@example.com", "password": password},
            environ_base={"REMOTE_ADDR": address},
        )

    with unchanged(app):
        assert [sign_in(f"guess {n}", "203.0.113.7").status_code for n in range(3)] == [401, 401, 401]
        limited = check(sign_in(PASSWORD, "203.0.113.7"), 429)
    assert error_code(limited) == "too_many_requests" and limited.headers["Cache-Control"] == "no-store"
    check(sign_in(PASSWORD, "198.51.100.20"), 201)


@pytest.fixture
def redis_db():
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    connection.ping()  # no Redis is a failure, not a skip: CI must exercise the shared storage
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def web_login(server_url: str, password: str) -> int:
    response = Browser(server_url).submit(
        "/auth/login", "/auth/login", {"email": "ada@example.com", "password": password}, allow_redirects=False
    )
    return response.status_code


@pytest.mark.parametrize(
    "storage, second_instance_first_try",
    [
        pytest.param("memory://", 400, id="memory: each instance counts alone"),
        pytest.param(REDIS_URL, 429, id="redis: instances share the count"),
    ],
)
def test_login_rate_limit_storage(request, start_live_server, storage, second_instance_first_try):
    """With RATELIMIT_STORAGE_URI=redis://..., a second instance (another process, in production) sees
    the failures counted by the first; with memory:// it does not."""
    redis_db = request.getfixturevalue("redis_db") if storage.startswith("redis") else None
    first = start_live_server(RATELIMIT_STORAGE_URI=storage, LOGIN_RATE_LIMIT="3 per minute")
    build_world(first.app)
    with unchanged(first.app):
        assert [web_login(first.url, f"guess {n}") for n in range(4)] == [400, 400, 400, 429]
        if redis_db is not None:
            assert any(key.startswith(b"LIMITS") for key in redis_db.keys("*"))
        second = start_live_server(RATELIMIT_STORAGE_URI=storage, LOGIN_RATE_LIMIT="3 per minute")
        assert web_login(second.url, "guess 5") == second_instance_first_try


# == .well-known files and health probes ================================================================

# (method, path, request keyword arguments, status)
OTHER_ENTRY_POINTS = [
    pytest.param(
        "GET",
        "/.well-known/apple-app-site-association?x=" + quote(SCRIPT),
        {},
        404,
        id="AASA, not configured, HTML query",
    ),
    pytest.param("GET", "/.well-known/assetlinks.json?x=" + quote(SQL), {}, 404, id="assetlinks, not configured, SQL"),
    pytest.param("POST", "/.well-known/assetlinks.json", {"data": b"{}"}, 405, id="assetlinks POST"),
    pytest.param("GET", "/.well-known/..%2F..%2Fconfig.py", {}, 404, id="well-known path traversal"),
    pytest.param("GET", "/.well-known/" + quote(SCRIPT, safe=""), {}, 404, id="well-known HTML name"),
    pytest.param("GET", "/healthz?check=" + quote(SQL_DROP), {}, 200, id="healthz SQL query"),
    pytest.param("POST", "/healthz", {"data": b"x" * (2 * 1024 * 1024)}, 405, id="healthz POST 2 MB"),
    pytest.param("GET", "/readyz?db=" + quote(SQL), {}, 200, id="readyz SQL query"),
    pytest.param("DELETE", "/readyz", {}, 405, id="readyz DELETE"),
    pytest.param("TRACE", "/readyz", {}, 405, id="readyz TRACE"),
    pytest.param("GET", "/" + quote(SCRIPT, safe=""), {}, 404, id="HTML path"),
]


@pytest.mark.parametrize("method, path, kwargs, status", OTHER_ENTRY_POINTS)
def test_well_known_files_and_health_probes(app, client, world, method, path, kwargs, status):
    with unchanged(app):
        response = client.open(path, method=method, **kwargs)
    check(response, status)


@pytest.mark.parametrize("path", ["/.well-known/apple-app-site-association", "/.well-known/assetlinks.json"])
def test_configured_association_files_ignore_hostile_queries(app, client, world, path):
    app.config.update(
        IOS_APP_IDS=["ABCDE12345.com.example.app"],
        ANDROID_PACKAGE_NAME="com.example.app",
        ANDROID_CERT_SHA256=[":".join(["AB"] * 32)],
    )
    plain = client.get(path).get_data()
    with unchanged(app):
        response = client.get(path, query_string={"x": SCRIPT, "callback": "alert"})
    check(response, 200)
    assert response.get_data() == plain and content_type(response) == "application/json"
