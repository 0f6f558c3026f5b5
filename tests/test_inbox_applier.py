"""The inbox's applier (terra_integration/applier.py): claims with a lease, one user's events in order,
abandoned claims taken again, `flask terra work`, the thread in each server process, and a gunicorn
killed with SIGKILL in the middle of applying."""

from __future__ import annotations

import json
import os
import signal
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import ClassVar

import pytest
import requests
from sqlalchemy import create_engine, select, text, update
from sqlalchemy import event as sqlalchemy_event

from app import create_app
from extensions import db
from models import Connection, User, WebhookEvent
from models.time import utcnow
from services import event_handlers
from terra_integration import applier
from terra_integration.signature import sign
from tests.conftest import _environ, wait_for
from tests.helpers import apply_inbox, auth_event, create_attempt, create_user, deliver, outcome_of, terra_user


@pytest.fixture
def secret(app):
    return app.config["TERRA_SIGNING_SECRET"]


def make_user(app, email="ada@example.com"):
    with app.app_context():
        user = create_user(email)
        return SimpleNamespace(id=user.id, reference_id=user.reference_id)


def deauth(user, terra_user_id):
    return {
        "type": "deauth",
        "status": "success",
        "reference_id": user.reference_id,
        "user": terra_user(user, terra_user_id),
    }


def row(app, trace_id) -> WebhookEvent:
    with app.app_context():
        return db.session.scalars(select(WebhookEvent).where(WebhookEvent.trace_id == trace_id)).one()


def claim(app) -> list[str]:
    """Claim as a taker would; returns the trace ids claimed."""
    with app.app_context():
        ids = applier.claim()
        return db.session.scalars(select(WebhookEvent.trace_id).where(WebhookEvent.id.in_(ids))).all()


def lapse_leases(app) -> None:
    """As if the takers holding claims had died long ago."""
    with app.app_context():
        db.session.execute(update(WebhookEvent).values(claimed_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()


def test_one_users_events_are_claimed_one_at_a_time_in_the_order_received(app, client, secret):
    ada, bob = make_user(app), make_user(app, "bob@example.com")
    for trace_id, event in [
        ("ada-auth", auth_event(ada, terra_user(ada, "tu-ada"))),
        ("ada-deauth", deauth(ada, "tu-ada")),
        ("bob-auth", auth_event(bob, terra_user(bob, "tu-bob"))),
    ]:
        assert deliver(client, event, secret=secret, trace_id=trace_id, apply=False).json["status"] == "received"

    assert sorted(claim(app)) == ["ada-auth", "bob-auth"]  # Ada's deauth waits for her auth
    assert claim(app) == []  # claimed rows are not taken twice while their lease runs
    with app.app_context():
        applier.apply_claimed(db.session.scalars(select(WebhookEvent.id).where(WebhookEvent.attempts == 1)).all())
    assert claim(app) == ["ada-deauth"]
    with app.app_context():
        applier.drain()  # the claimed deauth stays claimed: draining finds nothing else to take
        assert db.session.scalars(select(Connection.status).where(Connection.user_id == ada.id)).one() == "active"
    lapse_leases(app)
    with app.app_context():
        assert applier.drain() == 1
        assert db.session.scalars(select(Connection.status).where(Connection.user_id == ada.id)).one() == "revoked"


def test_events_applied_together_commit_once_and_one_that_fails_fails_alone(app, client, secret, monkeypatch):
    users = [make_user(app, f"user{number}@example.com") for number in range(3)]
    for number, user in enumerate(users):
        deliver(
            client,
            auth_event(user, terra_user(user, f"tu-{number}")),
            secret=secret,
            trace_id=f"t{number}",
            apply=False,
        )
    real = event_handlers.attempts.find_attempt_for_event

    def breaks_for_the_second_user(owner, session_ids):
        if owner.id == users[1].id:
            raise RuntimeError("the attempt lookup broke")
        return real(owner, session_ids)

    monkeypatch.setattr(event_handlers.attempts, "find_attempt_for_event", breaks_for_the_second_user)
    commits = []

    def count_commit(_connection):
        commits.append(1)

    with app.app_context():
        engine = db.engine
    sqlalchemy_event.listen(engine, "commit", count_commit)
    try:
        assert applier.APPLY_TOGETHER >= 3 and apply_inbox(app) == 3
    finally:
        sqlalchemy_event.remove(engine, "commit", count_commit)
    assert len(commits) == 2  # the claim, then the three applied in one transaction
    assert [outcome_of(app, f"t{number}") for number in range(3)] == ["applied", "failed", "applied"]
    with app.app_context():
        owners = db.session.scalars(select(Connection.user_id).order_by(Connection.user_id)).all()
    assert owners == [users[0].id, users[2].id]  # the failed one's connection was rolled back alone


def test_a_claim_whose_taker_died_is_taken_again_and_given_up_after_max_attempts(app, client, secret):
    user = make_user(app)
    deliver(client, auth_event(user, terra_user(user, "tu-1")), secret=secret, trace_id="t-dies", apply=False)
    for attempt in range(1, applier.MAX_ATTEMPTS + 1):
        assert claim(app) == ["t-dies"]
        assert (row(app, "t-dies").attempts, row(app, "t-dies").outcome) == (attempt, "received")
        lapse_leases(app)  # the taker was killed mid-apply
    assert claim(app) == []
    abandoned = row(app, "t-dies")
    assert abandoned.outcome == "failed" and "stopped mid-way 5 times" in abandoned.detail

    runner = app.test_cli_runner()
    assert "t-dies" in runner.invoke(args=["webhooks", "list", "--failed"]).output
    assert "t-dies: applied" in runner.invoke(args=["webhooks", "replay", "--failed"]).output


def test_the_applier_applies_while_the_apps_own_requests_write(app, client, secret):
    """The applying transaction writes first (`inbox._hold`): on SQLite, one that read first could not
    write once another connection had committed since, and failed at once with "database is locked".
    Here the app's own writes (connect attempts started, as its requests do) commit all along, on
    connections of their own, while the applier applies 40 `auth` events. On PostgreSQL rows are
    locked, not the database: this holds there too."""
    users = [make_user(app, f"user{number}@example.com") for number in range(40)]
    for number, user in enumerate(users):
        event = auth_event(user, terra_user(user, f"tu-busy-{number}"))
        assert deliver(client, event, secret=secret, apply=False, trace_id=f"busy-{number}").status_code == 200
    writing = threading.Event()
    stop = threading.Event()

    def the_apps_writes() -> None:
        with app.app_context():
            owner = db.session.get(User, users[0].id)
            while not stop.is_set():
                create_attempt(owner)  # a commit of its own
                writing.set()

    writer = threading.Thread(target=the_apps_writes)
    writer.start()
    try:
        writing.wait(10)
        apply_inbox(app)
    finally:
        stop.set()
        writer.join(timeout=10)
    outcomes = [outcome_of(app, f"busy-{number}") for number in range(40)]
    assert outcomes == ["applied"] * 40, [row(app, f"busy-{n}").detail for n in range(40) if outcomes[n] != "applied"][
        :3
    ]


def test_flask_terra_work_applies_what_is_recorded(app, client, secret):
    user = make_user(app)
    deliver(client, auth_event(user, terra_user(user, "tu-work")), secret=secret, trace_id="t-work", apply=False)
    result = app.test_cli_runner().invoke(args=["terra", "work", "--until-empty"])
    assert result.exit_code == 0 and "applied 1 event(s)" in result.output
    assert outcome_of(app, "t-work") == "applied"


def test_no_applier_thread_starts_at_import_or_in_flask_commands(database_uri):
    app = create_app(environ=_environ(database_uri))  # WEBHOOK_APPLY_IN_PROCESS is on by default
    assert app.config["WEBHOOK_APPLY_IN_PROCESS"] is True
    assert app.test_cli_runner().invoke(args=["webhooks", "list"]).exit_code == 0
    assert "terra-inbox-applier" not in {thread.name for thread in threading.enumerate()}


def test_the_servers_thread_applies_at_once_and_sweeps_up_rows_no_wake_up_announced(start_live_server):
    server = start_live_server(WEBHOOK_SWEEP_SECONDS="0.2")
    app, secret = server.app, server.app.config["TERRA_SIGNING_SECRET"]
    user = make_user(app)
    body = json.dumps(auth_event(user, terra_user(user, "tu-woken"))).encode()
    headers = {"X-Terra-Signature": sign(body, secret), "X-Terra-Trace-Id": "t-woken"}
    assert requests.post(server.url + "/webhooks/terra", data=body, headers=headers, timeout=10).status_code == 200
    wait_for(lambda: outcome_of(app, "t-woken") == "applied")  # the receiver woke the server's thread

    with app.app_context():  # recorded by another process (or left by one that died): no wake-up here
        db.session.add(
            WebhookEvent(
                trace_id="t-swept",
                event_type="deauth",
                reference_id=user.reference_id,
                body=json.dumps(deauth(user, "tu-woken")),
            )
        )
        db.session.commit()
    wait_for(lambda: outcome_of(app, "t-swept") == "applied")
    with app.app_context():
        assert db.session.scalars(select(Connection.status)).one() == "revoked"


class HangingStorage(BaseHTTPRequestHandler):
    """An s3_payload's storage host that holds the first download open (the applier is then in the
    middle of applying), and answers every later one at once."""

    asked: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()
    payload: ClassVar[bytes] = b""

    def do_GET(self):
        if not HangingStorage.asked.is_set():
            HangingStorage.asked.set()
            HangingStorage.release.wait(30)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(HangingStorage.payload)

    def log_message(self, *args):
        pass


def kill_hard(process_id: int) -> None:
    """SIGKILL gunicorn's workers (its children, by pid) and then gunicorn itself."""
    with open(f"/proc/{process_id}/task/{process_id}/children") as children:
        workers = [int(pid) for pid in children.read().split()]
    for pid in [*workers, process_id]:
        os.kill(pid, signal.SIGKILL)


def test_an_event_being_applied_when_gunicorn_is_killed_is_applied_after_a_restart(start_gunicorn, app, tmp_path):
    user = make_user(app)
    with app.app_context():
        db.session.add(Connection(user_id=user.id, terra_user_id="tu-killed", provider="GARMIN", scopes=""))
        db.session.commit()
    HangingStorage.payload = json.dumps(
        {"type": "activity", "user": terra_user(user, "tu-killed"), "data": []}
    ).encode()
    storage = ThreadingHTTPServer(("127.0.0.1", 0), HangingStorage)
    threading.Thread(target=storage.serve_forever, daemon=True).start()
    # The download's deadline is shorter than the lease (start-up insists); whether it passes before
    # the kill or not, the row is left pending with one try counted.
    settings = {
        "WEBHOOK_CLAIM_LEASE_SECONDS": "2",
        "TERRA_PAYLOAD_TIMEOUT_SECONDS": "1.5",
        "WEBHOOK_SWEEP_SECONDS": "0.5",
    }
    pid_file = tmp_path / "gunicorn.pid"
    try:
        url = start_gunicorn(**settings, GUNICORN_CMD_ARGS=f"--pid {pid_file}")
        ping = {
            "type": "s3_payload",
            "status": "success",
            "url": f"http://127.0.0.1:{storage.server_port}/payload",
            "expires_in": 300,
        }
        body = json.dumps(ping).encode()
        headers = {"X-Terra-Signature": sign(body, app.config["TERRA_SIGNING_SECRET"]), "X-Terra-Trace-Id": "t-killed"}
        assert (
            requests.post(url + "/webhooks/terra", data=body, headers=headers, timeout=10).json()["status"]
            == "received"
        )
        assert HangingStorage.asked.wait(20)  # a worker's applier claimed the row and is applying it
        kill_hard(int(pid_file.read_text()))
        HangingStorage.release.set()
        assert (row(app, "t-killed").outcome, row(app, "t-killed").attempts) == ("received", 1)

        # A new server, which nothing wakes: its workers' appliers (started by post_worker_init) find
        # the row in their sweep and take it again once the lease ran out.
        start_gunicorn(**settings)
        wait_for(lambda: outcome_of(app, "t-killed") != "received", timeout=30)
        done = row(app, "t-killed")
        assert (done.outcome, done.attempts) == ("recorded", 2)
        with app.app_context():
            assert db.session.scalars(select(Connection.last_event_at)).one() is not None
    finally:
        HangingStorage.release.set()
        storage.shutdown()


class FakeClock:
    """time.monotonic for the applier, moved on by its waits instead of by the machine."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(round(seconds, 6))
        self.now += seconds
        return False


@pytest.mark.parametrize(
    "last_arrival, keeps_arriving, backlog, waits",
    [
        (None, False, False, []),  # nothing received lately: apply at once
        (-0.005, False, False, [applier.QUIET_SECONDS - 0.005]),  # the rest of the quiet period after the last
        (0.0, True, False, [applier.QUIET_SECONDS] * 12 + [0.01]),  # a steady stream: no longer than the longest wait
        (0.0, True, True, []),  # BACKLOG_LIMIT rows waiting already: keep up instead
    ],
    ids=["quiet", "pause after the last delivery", "steady stream", "backlog"],
)
def test_the_applier_lets_a_burst_of_deliveries_pass_before_it_claims(
    app, monkeypatch, last_arrival, keeps_arriving, backlog, waits
):
    clock = FakeClock()
    monkeypatch.setattr(applier.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(applier, "waiting_at_least", lambda count: count == applier.BACKLOG_LIMIT and backlog)
    worker = applier.InboxWorker(app)
    monkeypatch.setattr(worker._stop, "wait", clock.wait)
    recorder = app.extensions["terra_integration"].recorder
    arrived = float("-inf") if last_arrival is None else clock.now + last_arrival
    monkeypatch.setattr(recorder, "last_arrival", lambda: clock.now if keeps_arriving else arrived)
    worker._let_deliveries_pass()
    assert clock.waits == waits
    assert sum(waits) <= applier.LONGEST_WAIT_SECONDS + 1e-9


def test_the_backlog_is_counted_up_to_the_limit_asked(app, client, secret):
    user = make_user(app)
    for number in range(3):
        deliver(client, deauth(user, f"tu-{number}"), secret=secret, trace_id=f"t{number}", apply=False)
    with app.app_context():
        assert (applier.waiting_at_least(3), applier.waiting_at_least(4)) == (True, False)
        apply_inbox(app)
        assert applier.waiting_at_least(1) is False


def test_the_claim_finds_each_users_oldest_row_through_the_index_however_stale_postgresqls_statistics(
    postgres_database,
):
    """Statistics taken while the queue was empty (its usual state) say that almost no row is pending.
    Asked as "no older pending row of the same user exists", PostgreSQL then planned the claim as a scan
    of every pending row for each pending row (0.4 s with 2,000 waiting, growing with their square).
    The claim must look each row's user up in a subquery of its own instead, which an index answers."""
    engine = create_engine(postgres_database)
    WebhookEvent.__table__.create(engine)
    rows = [
        {
            "trace_id": f"t{number}",
            "signed_payload_sha256": f"{number:064x}",
            "event_type": "activity",
            "reference_id": f"user-{number % 200}",
            "outcome": "applied" if number < 2000 else "received",
            "body": "{}",
            "received_at": utcnow(),
            "attempts": 0,
        }
        for number in range(4000)
    ]
    with engine.begin() as connection:
        connection.execute(WebhookEvent.__table__.insert(), rows[:2000])
        connection.execute(text("ANALYZE webhook_events"))
        connection.execute(WebhookEvent.__table__.insert(), rows[2000:])
    claim = applier.claimable(WebhookEvent, utcnow(), applier.EVENTS).limit(applier.BATCH_SIZE)
    sql = str(claim.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        plan = "\n".join(connection.execute(text(f"EXPLAIN {sql}")).scalars())
        claimed = connection.execute(claim).scalars().all()
    engine.dispose()
    assert "SubPlan" in plan and "Join" not in plan, plan
    assert claimed == list(range(2001, 2201))[: applier.BATCH_SIZE]  # each user's oldest pending row, in order
