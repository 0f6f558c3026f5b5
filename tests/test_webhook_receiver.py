"""POST /webhooks/terra: raw body, verify, record, acknowledge; then the applier applies what was recorded."""

import json
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace
from typing import ClassVar

import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from extensions import db
from models import Activity, ConnectAttempt, Connection, ReplacedTerraUser, User, WebhookEvent
from services import event_handlers
from terra_integration import inbox, recorder, write_turns
from terra_integration.events import EventParseError, parse_event
from terra_integration.inbox import apply_recorded
from terra_integration.models import USER_ID_LENGTH
from terra_integration.signature import sign
from tests.conftest import wait_for
from tests.helpers import apply_inbox, auth_event, create_attempt, create_user, deliver, outcome_of, terra_user


@pytest.fixture
def secret(app):
    return app.config["TERRA_SIGNING_SECRET"]


@pytest.fixture
def user(app):
    with app.app_context():
        user = create_user()
        return SimpleNamespace(id=user.id, reference_id=user.reference_id)


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_signed_auth_event_is_recorded_and_then_applied(client, app, secret, user):
    response = deliver(client, auth_event(user, terra_user(user, "tu-1")), secret=secret, trace_id="t-1", apply=False)
    assert (response.status_code, response.json) == (200, {"status": "received", "trace_id": "t-1"})
    assert (outcome_of(app, "t-1"), count(app, Connection)) == ("received", 0)  # recorded, not yet applied
    assert apply_inbox(app) == 1
    assert outcome_of(app, "t-1") == "applied"
    with app.app_context():
        connection = db.session.scalars(select(Connection)).one()
        assert (connection.terra_user_id, connection.status, connection.user_id) == ("tu-1", "active", user.id)


@pytest.mark.parametrize("header", ["X-Terra-Signature", "terra-signature", "x-terra-signature", "Terra-Signature"])
def test_both_header_names_in_any_casing(client, secret, user, header):
    response = deliver(client, auth_event(user, terra_user(user)), secret=secret, header=header)
    assert response.status_code == 200


def test_missing_signature_is_401_and_stores_nothing(client, app, user):
    body = json.dumps(auth_event(user, terra_user(user))).encode()
    response = client.post("/webhooks/terra", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "invalid_signature"
    assert count(app, WebhookEvent) == 0 and count(app, Connection) == 0


def test_wrong_secret_is_401(client, app, user):
    response = deliver(client, auth_event(user, terra_user(user)), secret="not-the-secret")
    assert response.status_code == 401
    assert count(app, WebhookEvent) == 0


def test_tampered_body_is_401(client, app, secret, user):
    body = json.dumps(auth_event(user, terra_user(user))).encode()
    headers = {"X-Terra-Signature": sign(body, secret), "Content-Type": "application/json"}
    response = client.post("/webhooks/terra", data=body.replace(b"GARMIN", b"FITBIT"), headers=headers)
    assert response.status_code == 401
    assert count(app, Connection) == 0


def test_stale_signature_is_401(client, app, secret, user):
    response = deliver(client, auth_event(user, terra_user(user)), secret=secret, timestamp=int(time.time()) - 301)
    assert response.status_code == 401
    assert "window" in response.json["error"]["message"]


def test_no_configured_secret_fails_closed_with_logged_reason(client, app, user, caplog):
    app.config["TERRA_SIGNING_SECRET"] = ""
    with caplog.at_level(logging.ERROR):
        response = deliver(client, auth_event(user, terra_user(user)), secret="anything")
    assert response.status_code == 500
    assert "no TERRA_SIGNING_SECRET" in caplog.text
    assert count(app, WebhookEvent) == 0


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"status": "success"}', "no type"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100 + b"]" * 100, "JSON object"),
        (b'{"type": "auth", "a": ' + b"[" * 100 + b"]" * 100 + b"}", "nested too deeply"),
    ],
)
def test_malformed_verified_bodies_are_acknowledged_and_kept_as_failed_for_replay(client, app, secret, body, message):
    response = deliver(client, body, secret=secret, trace_id="trace-malformed")
    assert (response.status_code, response.json["status"]) == (200, "failed")
    again = deliver(client, body, secret=secret, trace_id="trace-malformed")  # Terra's retry: kept once
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    with app.app_context():
        [row] = db.session.scalars(select(WebhookEvent)).all()
        assert (row.trace_id, row.outcome) == ("trace-malformed", "failed") and message in row.detail
        assert apply_recorded(row) == "failed"


def test_oversized_body_is_413(client, app, secret):
    body = b'{"type": "activity", "pad": "' + b"x" * app.config["WEBHOOK_MAX_BYTES"] + b'"}'
    response = deliver(client, body, secret=secret)
    assert response.status_code == 413
    assert "limited" in response.json["error"]["message"]
    assert count(app, WebhookEvent) == 0


def test_redelivery_with_same_trace_id_is_acknowledged_once(client, app, secret, user):
    event = auth_event(user, terra_user(user, "tu-dup"))
    first = deliver(client, event, secret=secret, trace_id="trace-1")
    second = deliver(client, event, secret=secret, trace_id="trace-1")
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json["status"] == "duplicate"
    assert count(app, WebhookEvent) == 1 and count(app, Connection) == 1


def test_without_trace_id_the_body_hash_deduplicates(client, app, secret, user):
    event = auth_event(user, terra_user(user))
    deliver(client, event, secret=secret, trace_id=None)
    second = deliver(client, event, secret=secret, trace_id=None)
    assert second.json["status"] == "duplicate"
    with app.app_context():
        assert db.session.scalars(select(WebhookEvent.trace_id)).one().startswith("sha256:")


def test_an_auth_naming_no_known_session_ends_no_attempt(client, app, secret, user):
    with app.app_context():
        owner = db.session.get(User, user.id)
        older, newest = create_attempt(owner).id, create_attempt(owner).id
        create_attempt(owner, status="failed")  # newer still, but settled
    event = auth_event(user, terra_user(user, "tu-fallback"), session_id="a-session-we-never-stored")
    assert deliver(client, event, secret=secret, trace_id="trace-fallback").json["status"] == "received"
    assert outcome_of(app, "trace-fallback") == "applied"
    with app.app_context():
        statuses = dict(db.session.execute(select(ConnectAttempt.id, ConnectAttempt.status)).all())
    assert (statuses[newest], statuses[older]) == ("pending", "pending")  # the connection is made all the same


def test_a_signed_delivery_replayed_under_a_fresh_trace_id_is_a_duplicate(client, app, secret, user):
    event, now = auth_event(user, terra_user(user, "tu-replay")), int(time.time())
    first = deliver(client, event, secret=secret, timestamp=now, trace_id="trace-first")
    replayed = deliver(client, event, secret=secret, timestamp=now, trace_id="trace-fresh")
    assert (first.json["status"], replayed.json["status"]) == ("received", "duplicate")
    # Signed at another time, the same body is another delivery (Terra signs each one it sends).
    assert deliver(client, event, secret=secret, timestamp=now - 1, trace_id="trace-later").json["status"] == "received"
    with app.app_context():
        assert db.session.scalars(select(WebhookEvent.trace_id).order_by(WebhookEvent.id)).all() == [
            "trace-first",
            "trace-later",
        ]


def test_data_events_are_kept_one_row_per_trace_id(client, app, secret, user):
    deliver(client, auth_event(user, terra_user(user, "tu-data")), secret=secret)
    user_json = terra_user(user, "tu-data")
    for trace in ("big:chunk:1", "big:chunk:2", "big:chunk:2"):
        # Each chunk of a large request carries its own data.
        activity = {"type": "activity", "user": user_json, "data": [{"metadata": {"summary_id": trace}}]}
        response = deliver(client, activity, secret=secret, trace_id=trace)
        assert response.status_code == 200
    with app.app_context():
        rows = db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "activity")).all()
        assert sorted(row.trace_id for row in rows) == ["big:chunk:1", "big:chunk:2"]
        assert {row.outcome for row in rows} == {"applied"}
        assert sorted(db.session.scalars(select(Activity.summary_id))) == ["big:chunk:1", "big:chunk:2"]


@pytest.mark.parametrize("event_type", ["large_request_processing", "large_request_sending", "brand_new_event"])
def test_informational_and_unknown_types_are_recorded_and_acknowledged(client, app, secret, user, event_type):
    body = {
        "type": event_type,
        "status": "processing",
        "reference": str(uuid.uuid4()),
        "message": "m",
        "expected_payloads": 3,
        "user": terra_user(user, "tu-1"),
    }
    response = deliver(client, body, secret=secret)
    assert (response.status_code, response.json["status"]) == (200, "received")
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent)).one()
        assert (row.event_type, row.outcome) == (event_type, "recorded")
    assert count(app, Connection) == 0


def test_webhook_needs_no_csrf_token(app, secret, user):
    app.config["WTF_CSRF_ENABLED"] = True
    response = deliver(app.test_client(), auth_event(user, terra_user(user)), secret=secret)
    assert response.status_code == 200


class DatabaseWork:
    """Commits and pool checkouts on the app's engine while the block runs."""

    def __init__(self, app):
        self.commits = self.checkouts = 0
        with app.app_context():
            self._engine = db.engine

    def __enter__(self):
        sqlalchemy_event.listen(self._engine, "commit", self._commit)
        sqlalchemy_event.listen(self._engine.pool, "checkout", self._checkout)
        return self

    def __exit__(self, *exc):
        sqlalchemy_event.remove(self._engine, "commit", self._commit)
        sqlalchemy_event.remove(self._engine.pool, "checkout", self._checkout)

    def _commit(self, *args):
        self.commits += 1

    def _checkout(self, *args):
        self.checkouts += 1


@pytest.mark.parametrize("kind", ["activity", "auth"])
def test_the_receiver_commits_the_row_alone_and_the_applier_applies_it_in_one_more(client, app, secret, user, kind):
    """The receiver's whole work is one commit, of the inbox row (a duplicate's inserts nothing);
    applying is the applier's: one commit to claim, one to apply and note the outcome (the look that
    finds nothing left commits nothing)."""
    deliver(client, auth_event(user, terra_user(user, "tu-once")), secret=secret)
    events = {
        "activity": {"type": "activity", "user": terra_user(user, "tu-once"), "data": []},
        "auth": auth_event(user, terra_user(user, "tu-other")),
    }
    with DatabaseWork(app) as work:
        response = deliver(client, events[kind], secret=secret, trace_id=f"trace-{kind}", apply=False)
    assert response.json == {"status": "received", "trace_id": f"trace-{kind}"}
    assert (work.commits, work.checkouts) == (1, 1)
    with DatabaseWork(app) as work:
        duplicate = deliver(client, events[kind], secret=secret, trace_id=f"trace-{kind}", apply=False)
    assert duplicate.json == {"status": "duplicate", "trace_id": f"trace-{kind}"}
    assert (work.commits, work.checkouts) == (1, 1)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 2
    with DatabaseWork(app) as work:
        assert apply_inbox(app) == 1
    assert work.commits == 2
    assert outcome_of(app, f"trace-{kind}") == ("recorded" if kind == "activity" else "applied")


def test_a_failing_apply_keeps_the_event_for_replay_and_undoes_only_the_apply(
    client, app, secret, user, monkeypatch, caplog
):
    # Fails after the connection was written (flushed), the way a bug or a lost database would.
    def broken(*args):
        raise RuntimeError("the attempt lookup broke")

    monkeypatch.setattr(event_handlers.attempts, "find_attempt_for_event", broken)
    response = deliver(
        client, auth_event(user, terra_user(user, "tu-failed")), secret=secret, trace_id="trace-failed", apply=False
    )
    assert (response.status_code, response.json["status"]) == (200, "received")
    with DatabaseWork(app) as work, caplog.at_level(logging.ERROR):
        apply_inbox(app)
    assert work.commits == 2  # the claim, and the failure noted on the row
    assert "applying webhook event" in caplog.text and "the attempt lookup broke" in caplog.text
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent)).one()
        assert (row.trace_id, row.outcome, row.detail) == (
            "trace-failed",
            "failed",
            "RuntimeError: the attempt lookup broke",
        )
        assert row.applied_at is not None
    assert count(app, Connection) == 0

    assert (
        deliver(client, auth_event(user, terra_user(user, "tu-failed")), secret=secret, trace_id="trace-failed").json[
            "status"
        ]
        == "duplicate"
    )
    monkeypatch.undo()
    with app.app_context():
        assert inbox.apply_recorded(db.session.scalars(select(WebhookEvent)).one()) == "applied"
    assert count(app, Connection) == 1


def test_a_lost_race_is_tried_again_in_a_new_savepoint(client, app, secret, user, monkeypatch):
    real, tries = inbox.apply_event, []

    def loses_once(parsed):
        tries.append(parsed.type)
        outcome = real(parsed)
        if len(tries) == 1:  # after writing, as a deadlock would
            db.session.flush()
            raise OperationalError("UPDATE connections", {}, Exception("deadlock detected"))
        return outcome

    monkeypatch.setattr(inbox, "apply_event", loses_once)
    deliver(client, auth_event(user, terra_user(user, "tu-race")), secret=secret, apply=False)
    with DatabaseWork(app) as work:
        apply_inbox(app)
    assert (tries, work.commits) == (["auth", "auth"], 2)  # the claim, then one commit for both tries
    with app.app_context():
        assert db.session.scalars(select(Connection.terra_user_id)).all() == ["tu-race"]
        assert db.session.scalars(select(WebhookEvent.outcome)).one() == "applied"


def test_a_race_lost_on_every_try_is_stored_as_failed(client, app, secret, user, monkeypatch):
    deliver(client, auth_event(user, terra_user(user, "tu-taken")), secret=secret)
    tries = []

    def always_conflicts(parsed):  # a second row for a Terra user that already has one: the unique constraint
        tries.append(parsed.type)
        db.session.add(
            Connection(user_id=user.id, terra_user_id="tu-taken", provider="GARMIN", scopes="", status="active")
        )
        return "applied", None

    monkeypatch.setattr(inbox, "apply_event", always_conflicts)
    deliver(
        client,
        {"type": "activity", "user": terra_user(user, "tu-taken")},
        secret=secret,
        trace_id="trace-lost",
        apply=False,
    )
    with DatabaseWork(app) as work:
        apply_inbox(app)
    # The transaction's try, rolled back, then APPLY_TRIES in a savepoint each; one commit after the claim's.
    assert (outcome_of(app, "trace-lost"), len(tries), work.commits) == ("failed", 1 + inbox.APPLY_TRIES, 2)
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent).where(WebhookEvent.trace_id == "trace-lost")).one()
        assert row.outcome == "failed" and row.detail.startswith("IntegrityError")
    assert count(app, Connection) == 1


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"type": "auth\\u0000"}', "NUL characters or lone surrogates"),
        (b'{"type": "auth", "user": {"user_id": "u\\ud800"}}', "NUL characters or lone surrogates"),
        (b'{"type": "auth", "user": {"user_id": "u1", "reference_id": {}}}', "reference_id must be a string"),
        (
            b'{"type": "user_reauth", "old_user": {"user_id": "' + b"u" * (USER_ID_LENGTH + 1) + b'"}}',
            f"at most {USER_ID_LENGTH} characters",
        ),
    ],
)
def test_events_that_could_not_be_stored_do_not_parse(body, message):
    with pytest.raises(EventParseError, match=message):
        parse_event(body)


def test_the_terra_user_id_limit_is_the_columns_length():
    columns = (WebhookEvent.terra_user_id, Connection.terra_user_id, ReplacedTerraUser.old_terra_user_id)
    assert {column.type.length for column in columns} == {USER_ID_LENGTH}


@pytest.mark.parametrize(
    "body",
    [
        {"type": "deauth", "status": "success", "message": "User has deauthenticated"},
        {"type": "auth", "status": "success", "reference_id": None},
        {"type": "user_reauth", "status": "warning", "old_user": None},
        {"type": "activity", "data": []},
    ],
)
def test_verified_events_without_a_user_are_kept_as_failed_and_acknowledged(client, app, secret, body):
    response = deliver(client, body, secret=secret)
    assert (response.status_code, response.json["status"]) == (200, "received")
    with app.app_context():
        [row] = db.session.scalars(select(WebhookEvent)).all()
        assert row.outcome == "failed" and "without a user" in row.detail


class SlowStorage(BaseHTTPRequestHandler):
    """A storage host that answers after a second and notes the headers it was sent."""

    seen: ClassVar[list[dict]] = []

    def do_GET(self):
        SlowStorage.seen.append(dict(self.headers))
        time.sleep(1)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"type": "activity", "data": []}')

    def log_message(self, *args):
        pass


def test_an_s3_payload_download_that_takes_too_long_is_kept_as_failed_without_our_credentials(
    client, app, secret, stub_server
):
    server = stub_server(SlowStorage)
    app.config["TERRA_PAYLOAD_TIMEOUT_SECONDS"] = 0.3
    url = f"http://127.0.0.1:{server.server_port}/payloads/p1?X-Amz-Signature=abc"
    response = deliver(
        client, {"type": "s3_payload", "status": "success", "url": url, "expires_in": 300}, secret=secret
    )
    assert (response.status_code, response.json["status"]) == (200, "received")
    with app.app_context():
        [row] = db.session.scalars(select(WebhookEvent)).all()
        assert "did not finish within 0.3 s" in row.detail
    assert [{name.lower() for name in headers} & {"x-api-key", "dev-id"} for headers in SlowStorage.seen] == [set()]


@pytest.mark.parametrize(
    "make_event, outcome",
    [
        pytest.param(lambda u: {"type": "t" * 300}, "recorded", id="unknown type, quoted in the detail"),
        pytest.param(
            lambda u: {"type": "auth_cancelled", "reference_id": u.reference_id, "reason": "r" * 300},
            "applied",
            id="failure reason, quoted in the detail",
        ),
        pytest.param(
            lambda u: {"type": "auth", "status": "success", "user": {"user_id": "tu-long", "reference_id": "r" * 300}},
            "ignored",
            id="reference_id of the user",
        ),
        pytest.param(
            lambda u: {"type": "user_reauth", "new_user": {"user_id": "tu-long", "reference_id": "r" * 300}},
            "ignored",
            id="reference_id of the new user",
        ),
    ],
)
def test_signed_fields_longer_than_their_columns_are_cut_not_a_500(client, app, secret, user, make_event, outcome):
    """PostgreSQL refuses a value longer than its column (SQLite stores it): what the inbox row quotes
    from an event is cut to fit."""
    with app.app_context():
        create_attempt(db.session.get(User, user.id))
    response = deliver(client, make_event(user), secret=secret)
    assert response.status_code == 200
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent)).one()
    assert row.outcome == outcome
    assert len(row.detail) <= 255 and len(row.reference_id or "") <= 255


# -- the recorder: deliveries that arrive together are committed together ------------------------------


def _inbox_row(trace_id: str, **columns) -> dict:
    """A row as the receiver records it; each trace id with a body (and signed payload) of its own."""
    body = json.dumps({"type": "activity", "for": trace_id})
    delivery = inbox.Delivery(body.encode(), 1, trace_id=trace_id, terra_reference=None, event=None)
    return inbox._row(delivery, **{"event_type": "activity", "body": body, **columns})


def _record_while_the_first_write_waits(app, monkeypatch, rows: dict[str, dict]) -> dict:
    """Record `rows` from a thread each while the recorder's first write waits (as a write turn held
    by another process would make it): the first row is written alone, every other row queues
    meanwhile and is written in the next batch. Returns each row's result (True, False or the error)."""
    gate, waited = threading.Event(), []
    real_turn = recorder.write_turn

    @contextmanager
    def held_turn():
        if not waited:
            waited.append(True)
            gate.wait(10)
        with real_turn():
            yield

    monkeypatch.setattr(recorder, "write_turn", held_turn)
    with app.app_context():
        integration = inbox.bound()
    results: dict = {}

    def record(name: str) -> None:
        try:
            results[name] = integration.recorder.record(rows[name])
        except Exception as error:  # noqa: BLE001 (the test looks at it)
            results[name] = error

    first, *others = rows
    threads = [threading.Thread(target=record, args=(first,))]
    threads[0].start()
    wait_for(lambda: waited)
    threads += [threading.Thread(target=record, args=(name,)) for name in others]
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: integration.recorder._queue.qsize() == len(others))
    gate.set()
    for thread in threads:
        thread.join(10)
    return results


def test_deliveries_arriving_together_are_committed_in_one_transaction(app, monkeypatch):
    rows = {name: _inbox_row(f"trace-{name}") for name in ("first", "a", "b", "c")}
    rows["a-again"] = _inbox_row("trace-a")  # a redelivery, in the same batch
    with DatabaseWork(app) as work:
        results = _record_while_the_first_write_waits(app, monkeypatch, rows)
    assert results == {"first": True, "a": True, "b": True, "c": True, "a-again": False}
    assert work.commits == 2  # the first row alone, then the other four together
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 4


def test_a_row_the_database_refuses_fails_alone_and_its_batch_is_still_recorded(app, monkeypatch):
    rows = {name: _inbox_row(f"trace-{name}") for name in ("first", "a", "b")}
    rows["refused"] = _inbox_row("trace-refused", body=None)  # NOT NULL: no ON CONFLICT covers it
    results = _record_while_the_first_write_waits(app, monkeypatch, rows)
    assert isinstance(results.pop("refused"), IntegrityError)
    assert results == {"first": True, "a": True, "b": True}
    with app.app_context():
        stored = db.session.scalars(select(WebhookEvent.trace_id).order_by(WebhookEvent.trace_id)).all()
    assert stored == ["trace-a", "trace-b", "trace-first"]


def test_on_sqlite_the_inbox_writers_take_turns_on_a_file_lock(app):
    """A writer of the inbox waits, without polling SQLite, while another holds the turn (in any
    process); PostgreSQL locks rows, so there nobody waits."""
    results: list = []
    with app.app_context():
        integration = inbox.bound()
        on_sqlite = db.engine.dialect.name == "sqlite"
        with write_turns.write_turn():
            writer = threading.Thread(target=lambda: results.append(integration.recorder.record(_inbox_row("t"))))
            writer.start()
            writer.join(0.2)
            assert writer.is_alive() is on_sqlite
        writer.join(10)
    assert results == [True]
