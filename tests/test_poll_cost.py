"""What keeps a status poll cheap (docs/performance.md), each held to its behaviour: the worker's
token cache, its copy of the attempts' poll state and the change feed that keeps it current, the fast
path in front of Flask, the per-worker poll limit, the long-polls that sleep until a change, and the
database settings."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
from sqlalchemy import create_engine, event, text, update

from app import create_app
from config import ConfigError, ServerSettings, load_config, read_settings
from extensions import db
from models import ApiToken, ConnectAttempt, User
from models.time import utcnow
from services import api_tokens, attempt_states, attempts, long_poll
from services.request_windows import RequestWindows
from tests.conftest import TEST_SECRET_KEY, wait_for
from tests.helpers import create_attempt, create_user


@pytest.fixture
def ada(app):
    with app.app_context():
        user = create_user()
        attempt = create_attempt(user)
        token, _ = api_tokens.issue_token(user)
        return {
            "token": token,
            "attempt_id": attempt.id,
            "path": f"/api/v1/connect-attempts/{attempt.id}",
            "headers": {"Authorization": f"Bearer {token}"},
        }


@contextmanager
def statements(app):
    """The SQL statements the app sends while the block runs, but for the change feed's own reads:
    those are not a poll's."""
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        if threading.current_thread().name != attempt_states.FEED_THREAD:
            sent.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def live_states(app) -> attempt_states.AttemptStates:
    """The worker's copy of attempt states, once its change feed runs."""
    states = attempt_states.states(app)
    wait_for(lambda: states.live)
    return states


def bump_version_elsewhere(app, attempt_id: str) -> None:
    """Change the attempt on a connection of its own, outside the app's session: as another process would."""
    with app.app_context():
        engine = create_engine(db.engine.url)
    try:
        with engine.begin() as connection:
            connection.execute(
                update(ConnectAttempt).where(ConnectAttempt.id == attempt_id).values(version=ConnectAttempt.version + 1)
            )
    finally:
        engine.dispose()


def expire_token_in_database(app, token: str, **values) -> None:
    with app.app_context():
        db.session.execute(update(ApiToken).where(ApiToken.token_hash == api_tokens.hash_token(token)).values(**values))
        db.session.commit()


# -- the token cache -------------------------------------------------------------------------------


def test_a_pollers_token_is_looked_up_once_per_cache_period(app, client, ada):
    with statements(app) as sent:
        for _ in range(5):
            assert client.get(ada["path"], headers=ada["headers"]).status_code == 200
    token_reads = [statement for statement in sent if "FROM api_tokens" in statement]
    assert len(token_reads) == 1


def test_a_conditional_poll_with_nothing_new_is_one_read_of_a_few_columns_then_none(app, client, ada):
    states = live_states(app)
    etag = client.get(ada["path"], headers=ada["headers"]).headers["ETag"]
    states.changed([ada["attempt_id"]])  # as if it had changed since: this worker has no state for it
    conditional = {**ada["headers"], "If-None-Match": etag}
    with statements(app) as sent:
        response = client.get(ada["path"], headers=conditional)
    assert response.status_code == 304 and response.headers["ETag"] == etag
    assert len(sent) == 1 and "connect_attempts.version" in sent[0] and "widget_url" not in sent[0]

    def three_polls_read_nothing():
        # On SQLite the feed may notice a fixture's commit late and re-read, which drops a state read
        # meanwhile: then the next poll reads once more. A worker that keeps no state never passes.
        with statements(app) as sent:
            for _ in range(3):
                assert client.get(ada["path"], headers=conditional).status_code == 304
        return sent == []

    wait_for(three_polls_read_nothing, timeout=5)


def test_without_its_change_feed_a_worker_reads_every_poll(app, client, ada):
    states = live_states(app)
    etag = client.get(ada["path"], headers=ada["headers"]).headers["ETag"]
    states.set_live(False)  # the feed's connection was lost; it reconnects by itself
    try:
        with statements(app) as sent:
            for _ in range(2):
                assert client.get(ada["path"], headers={**ada["headers"], "If-None-Match": etag}).status_code == 304
        assert len(sent) == 2
    finally:
        states.set_live(True)


def test_a_change_made_by_another_process_reaches_the_worker(app, client, ada):
    """Written on a connection of its own, as another worker or instance would: the worker hears of
    it through PostgreSQL's NOTIFY, or SQLite's data_version, and stops answering 304."""
    live_states(app)
    conditional = {**ada["headers"], "If-None-Match": client.get(ada["path"], headers=ada["headers"]).headers["ETag"]}
    assert client.get(ada["path"], headers=conditional).status_code == 304
    assert client.get(ada["path"], headers=conditional).status_code == 304  # from the worker's copy
    bump_version_elsewhere(app, ada["attempt_id"])
    changed = wait_for(lambda: (answer := client.get(ada["path"], headers=conditional)).status_code == 200 and answer)
    assert changed.json["version"] == 2 and changed.headers["ETag"] == '"2"'


def test_time_still_changes_an_attempt_whose_state_the_worker_keeps(app, client, ada):
    live_states(app)
    with app.app_context():
        attempts.record_browser_closed(db.session.get(ConnectAttempt, ada["attempt_id"]))
        db.session.commit()
    conditional = {**ada["headers"], "If-None-Match": client.get(ada["path"], headers=ada["headers"]).headers["ETag"]}
    assert client.get(ada["path"], headers=conditional).status_code == 304
    assert client.get(ada["path"], headers=conditional).status_code == 304  # the state is kept now
    app.config["BROWSER_CLOSED_GRACE_SECONDS"] = 0  # the grace period is over
    cancelled = client.get(ada["path"], headers=conditional)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"


def test_the_fast_path_answers_with_the_views_bytes_and_headers(app, client, ada):
    states = live_states(app)

    def by_flask(**headers):
        app.extensions["api_token_cache"].evict(api_tokens.hash_token(ada["token"]))  # not checked yet: Flask
        return client.get(ada["path"], headers={**ada["headers"], **headers})

    flask_200 = by_flask()
    flask_304 = by_flask(**{"If-None-Match": flask_200.headers["ETag"]})

    def read_once_then_kept():
        states.changed([ada["attempt_id"]])  # this worker keeps no state for it: the fast path reads it once
        with statements(app) as sent:
            answers = [client.get(ada["path"], headers=ada["headers"])]
            etag = answers[0].headers["ETag"]
            answers.append(client.get(ada["path"], headers={**ada["headers"], "If-None-Match": etag}))
            answers.append(client.get(ada["path"], headers=ada["headers"]))
        # As above: a late re-read by SQLite's feed can drop the state once; try again then.
        return len(sent) == 1 and "FROM connect_attempts" in sent[0] and answers

    fast_200, fast_304, again_200 = wait_for(read_once_then_kept, timeout=5)
    assert fast_200.status_code == again_200.status_code == 200 and fast_200.data == again_200.data == flask_200.data
    assert (fast_304.status_code, fast_304.data) == (304, b"")
    for answer, flask_answer in ((fast_200, flask_200), (fast_304, flask_304)):
        # Flask adds `Vary: Cookie` when a hook looked at the session; the fast path reads no cookie.
        assert set(answer.headers.items()) == set(flask_answer.headers.items()) - {("Vary", "Cookie")}


def test_the_fast_path_never_answers_for_someone_elses_attempt(app, client, ada):
    live_states(app)
    with app.app_context():
        eve_token, _ = api_tokens.issue_token(create_user("eve@example.com"))
    etag = client.get(ada["path"], headers=ada["headers"]).headers["ETag"]
    assert client.get(ada["path"], headers={**ada["headers"], "If-None-Match": etag}).status_code == 304
    eve = {"Authorization": f"Bearer {eve_token}"}
    for headers in (eve, eve, {**eve, "If-None-Match": etag}):  # her token is cached after the first
        refused = client.get(ada["path"], headers=headers)
        assert refused.status_code == 404 and "ETag" not in refused.headers


def test_a_long_poll_sleeps_without_reading_and_wakes_when_another_process_changes_it(app, ada):
    live_states(app)
    client = app.test_client()
    etag = client.get(ada["path"], headers=ada["headers"]).headers["ETag"]
    answered: dict = {}

    def long_poll():
        answered["response"] = app.test_client().get(
            ada["path"] + "?wait=20", headers={**ada["headers"], "If-None-Match": etag}
        )

    poller = threading.Thread(target=long_poll)
    poller.start()
    wait_for(lambda: ada["attempt_id"] in live_states(app).waited_on())
    with statements(app) as sent:
        time.sleep(0.3)  # asleep: the long-poll reads nothing meanwhile
    assert [statement for statement in sent if "connect_attempts.id = " in statement] == []
    bump_version_elsewhere(app, ada["attempt_id"])
    poller.join(timeout=15)
    assert answered["response"].status_code == 200 and answered["response"].json["version"] == 2


def long_poll_in_thread(app, ada, wait: int = 20) -> tuple[threading.Thread, dict]:
    """A long-poll holding version 1 of Ada's attempt, from a thread; its answer lands in the dict."""
    answered: dict = {}

    def poll():
        answered["response"] = app.test_client().get(
            ada["path"] + f"?wait={wait}", headers={**ada["headers"], "If-None-Match": '"1"'}
        )

    poller = threading.Thread(target=poll)
    poller.start()
    wait_for(lambda: ada["attempt_id"] in attempt_states.states(app).waited_on())
    return poller, answered


def test_a_long_poll_wakes_when_the_version_differs_from_its_own_though_the_kept_copy_had_it(app, ada, monkeypatch):
    """Issue 19: another poll's read can put the new version in the worker's copy before the change
    feed sees the commit; the feed then finds its copy unchanged, yet this long-poll still holds 1."""
    states = live_states(app)
    monkeypatch.setattr(attempt_states, "SQLITE_CHECK_SECONDS", 0.5)  # room to read before the feed does
    poller, answered = long_poll_in_thread(app, ada)
    bump_version_elsewhere(app, ada["attempt_id"])
    with app.app_context():  # a plain poll in this worker reads version 2 and keeps it
        generation = states.generation()
        states.put(db.session.execute(attempt_states.POLL_STATE, {"attempt_id": ada["attempt_id"]}).one(), generation)
    poller.join(timeout=10)  # far below the 20 s it would sleep unwoken
    assert answered["response"].status_code == 200 and answered["response"].json["version"] == 2


def test_a_change_seen_while_this_worker_commits_is_read_again(app, ada, monkeypatch):
    """The SQLite feed's read of what changed can cross this worker's own commit of another attempt;
    what it read may then predate that commit and is not kept. It must read again rather than wait
    for the next commit (PostgreSQL is told which attempt changed, and never comes here)."""
    states = live_states(app)
    poller, answered = long_poll_in_thread(app, ada)
    crossed: list[bool] = []
    replace = states.replace

    def replace_crossed_by_an_own_commit(fresh, generation):
        if not crossed:
            crossed.append(True)
            states.changed(["another-attempt"])  # as the after-commit hook does for this worker's write
        return replace(fresh, generation)

    monkeypatch.setattr(states, "replace", replace_crossed_by_an_own_commit)
    bump_version_elsewhere(app, ada["attempt_id"])
    poller.join(timeout=10)  # far below the 20 s it would sleep unwoken
    assert answered["response"].status_code == 200 and answered["response"].json["version"] == 2


def test_revoking_through_the_api_takes_effect_at_once_in_the_same_worker(client, ada):
    assert client.get(ada["path"], headers=ada["headers"]).status_code == 200  # now cached
    assert client.delete("/api/v1/tokens/current", headers=ada["headers"]).status_code == 204
    refused = client.get(ada["path"], headers=ada["headers"])
    assert refused.status_code == 401 and refused.json["error"]["code"] == "invalid_token"


def test_a_revocation_made_elsewhere_is_honoured_within_the_cache_period(app, client, ada, advance_clock):
    app.extensions["api_token_cache"] = api_tokens.TokenCache(seconds=30)
    assert client.get(ada["path"], headers=ada["headers"]).status_code == 200
    expire_token_in_database(app, ada["token"], revoked_at=utcnow())  # another worker, or an operator
    advance_clock(30)
    assert client.get(ada["path"], headers=ada["headers"]).status_code == 401


def test_a_cached_token_still_expires_on_time(app, client, ada, advance_clock):
    expire_token_in_database(app, ada["token"], expires_at=utcnow() + timedelta(seconds=1))
    assert client.get(ada["path"], headers=ada["headers"]).status_code == 200  # cached for 5 s
    advance_clock(1)
    assert client.get(ada["path"], headers=ada["headers"]).status_code == 401


def test_an_unknown_token_is_never_cached(app, client, ada):
    assert client.get(ada["path"], headers={"Authorization": "Bearer not-issued-yet"}).status_code == 401
    assert len(app.extensions["api_token_cache"].tokens) == 0


def test_the_cache_can_be_switched_off(database_uri, ada):
    strict = create_app(
        {"API_TOKEN_CACHE_SECONDS": 0},
        environ={"APP_ENV": "testing", "SECRET_KEY": TEST_SECRET_KEY, "DATABASE_URL": database_uri},
    )
    client = strict.test_client()
    with statements(strict) as sent:
        for _ in range(3):
            assert client.get(ada["path"], headers=ada["headers"]).status_code == 200
    assert len([statement for statement in sent if "FROM api_tokens" in statement]) == 3


# -- the poll limit --------------------------------------------------------------------------------


def test_request_windows_count_per_key_and_say_how_long_to_wait():
    windows = RequestWindows()
    assert [windows.hit("ada:1", "2 per minute") for _ in range(2)] == [None, None]
    retry_after = windows.hit("ada:1", "2 per minute")
    assert retry_after is not None and 1 <= retry_after <= 60
    assert windows.hit("ada:2", "2 per minute") is None  # another key has its own budget


def test_request_windows_start_again_when_the_window_ends(advance_clock):
    windows = RequestWindows()
    assert windows.hit("key", "1 per second") is None
    assert windows.hit("key", "1 per second") == 1
    advance_clock(1)
    assert windows.hit("key", "1 per second") is None


def test_request_windows_forget_finished_windows_without_a_thread(monkeypatch, advance_clock):
    monkeypatch.setattr("services.request_windows.SWEEP_SECONDS", 0.0)
    threads_before = threading.active_count()
    windows = RequestWindows()
    for n in range(100):
        windows.hit(f"poller:{n}", "5 per second")
    advance_clock(1)
    windows.hit("one more", "5 per second")
    assert list(windows._windows) == ["one more"] and threading.active_count() == threads_before


# -- the cap on sleeping long-polls ----------------------------------------------------------------


def test_a_long_poll_beyond_the_workers_cap_answers_at_once(database_uri, ada):
    capped = create_app(
        {"STATUS_MAX_WAITERS": 1},
        environ={"APP_ENV": "testing", "SECRET_KEY": TEST_SECRET_KEY, "DATABASE_URL": database_uri},
    )
    headers = {**ada["headers"], "If-None-Match": '"1"'}
    held: dict = {}

    def hold():
        started = time.monotonic()
        held["status"] = capped.test_client().get(ada["path"] + "?wait=2", headers=headers).status_code
        held["seconds"] = time.monotonic() - started

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)  # the holder has the only slot
    started = time.monotonic()
    second = capped.test_client().get(ada["path"] + "?wait=2", headers=headers)
    answered_in = time.monotonic() - started
    holder.join()
    assert second.status_code == 304 and answered_in < 1.5  # not held for its 2 s
    assert held["status"] == 304 and held["seconds"] >= 1.9
    third = capped.test_client().get(ada["path"] + "?wait=1", headers=headers)  # the slot is free again
    assert third.status_code == 304


# -- the cap on long-polls per caller ------------------------------------------------------------


def hold_long_polls(app, headers: dict, attempt_ids: list[str], wait: int = 20) -> list[threading.Thread]:
    """One long-poll holding version 1 of each attempt, each from a thread, until every one waits."""
    pollers = [
        threading.Thread(
            target=lambda attempt_id=attempt_id: app.test_client().get(
                f"/api/v1/connect-attempts/{attempt_id}?wait={wait}", headers={**headers, "If-None-Match": '"1"'}
            )
        )
        for attempt_id in attempt_ids
    ]
    for poller in pollers:
        poller.start()
    states = attempt_states.states(app)
    wait_for(lambda: set(attempt_ids) <= set(states.waited_on()))
    return pollers


def one_more_long_poll(client, headers: dict, attempt_id: str):
    started = time.monotonic()
    response = client.get(f"/api/v1/connect-attempts/{attempt_id}?wait=20", headers={**headers, "If-None-Match": '"1"'})
    return response, time.monotonic() - started


def assert_refused_at_once(client, headers: dict, attempt_id: str) -> None:
    response, seconds = one_more_long_poll(client, headers, attempt_id)
    assert response.status_code == 429 and response.json["error"]["code"] == "too_many_long_polls"
    assert response.headers["Retry-After"] == "2" and response.headers["Cache-Control"] == "no-store"
    assert seconds < 10  # not held for its 20 s


def test_a_token_and_a_user_hold_at_most_four_long_polls_and_every_ending_gives_the_slot_back(app, monkeypatch):
    """Issue 19: one user's 766 long-polls filled nginx's connections. Four per token and per user; the
    fifth is answered at once. A slot comes back however a poll ends: answered, timed out, failed."""
    live_states(app)
    with app.app_context():
        ada = create_user()
        ada_id = ada.id
        held = [create_attempt(ada).id for _ in range(4)]
        spare = create_attempt(ada).id
        phone, tablet = (api_tokens.issue_token(ada)[0] for _ in range(2))
        bob = create_user("bob@example.com")
        bobs = create_attempt(bob).id
        bob_token, _ = api_tokens.issue_token(bob)
    phone, tablet, bob_token = ({"Authorization": f"Bearer {token}"} for token in (phone, tablet, bob_token))
    client = app.test_client()

    def fill_then_refuse(wait: int = 20) -> list[threading.Thread]:
        pollers = hold_long_polls(app, phone, held, wait)
        assert_refused_at_once(client, phone, spare)  # the token's fifth
        assert_refused_at_once(client, tablet, spare)  # the user's fifth, through another token
        return pollers

    # Answered: each attempt changes. Meanwhile another user is not limited by Ada's polls.
    pollers = fill_then_refuse()
    response = client.get(f"/api/v1/connect-attempts/{bobs}?wait=1", headers={**bob_token, "If-None-Match": '"1"'})
    assert response.status_code == 304
    for attempt_id in held:
        bump_version_elsewhere(app, attempt_id)
    for poller in pollers:
        poller.join(timeout=15)
    # Timed out: a wait of 1 s each (they hold version 1, the attempts are at 2: a fresh attempt each).
    with app.app_context():
        held[:] = [create_attempt(db.session.get(User, ada_id)).id for _ in range(4)]
    for poller in fill_then_refuse(wait=1):
        poller.join(timeout=15)
    # Failed: the wait itself raises.
    monkeypatch.setattr(long_poll, "wait_for_change", lambda *args: 1 / 0)
    failed = client.get(f"/api/v1/connect-attempts/{spare}?wait=20", headers={**phone, "If-None-Match": '"1"'})
    assert failed.status_code == 500
    monkeypatch.undo()
    # Every slot is free again.
    for poller in fill_then_refuse(wait=1):
        poller.join(timeout=15)


def test_long_polls_whose_clients_went_away_give_their_slots_back(live_server):
    """Over real HTTP: four apps send a long-poll and hang up while it is held. The server notices
    only when the wait ends; then the four slots are free again for the same token."""
    app = live_server.app
    states = live_states(app)
    with app.app_context():
        ada = create_user()
        attempt_ids = [create_attempt(ada).id for _ in range(4)]
        spare = create_attempt(ada).id
        token, _ = api_tokens.issue_token(ada)
    for attempt_id in attempt_ids:
        with socket.create_connection(("127.0.0.1", live_server.http.server_port)) as hung_up:
            hung_up.sendall(
                f"GET /api/v1/connect-attempts/{attempt_id}?wait=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f'Authorization: Bearer {token}\r\nIf-None-Match: "1"\r\n\r\n'.encode()
            )
            wait_for(lambda attempt_id=attempt_id: attempt_id in states.waited_on())
    wait_for(lambda: not set(attempt_ids) & set(states.waited_on()))  # each ended with its 1 s wait
    headers = {"Authorization": f"Bearer {token}", "If-None-Match": '"1"'}

    def long_poll(attempt_id: str) -> int:
        url = f"{live_server.url}/api/v1/connect-attempts/{attempt_id}?wait=2"
        return requests.get(url, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        held = pool.map(long_poll, attempt_ids)
        wait_for(lambda: set(attempt_ids) <= set(states.waited_on()))
        assert long_poll(spare) == 429  # the four are all the token may hold
        assert list(held) == [304] * 4  # held again, none refused


def test_a_long_poll_is_answered_at_once_when_redis_cannot_count_its_slot(database_uri, ada):
    """The shared count is down (nothing listens on port 9): the poll is served, without waiting,
    rather than failing or holding a slot nobody counts."""
    unreachable = create_app(
        environ={
            "APP_ENV": "testing",
            "SECRET_KEY": TEST_SECRET_KEY,
            "DATABASE_URL": database_uri,
            "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:9/0",
        }
    )
    started = time.monotonic()
    response = unreachable.test_client().get(
        ada["path"] + "?wait=20", headers={**ada["headers"], "If-None-Match": '"1"'}
    )
    assert response.status_code == 304 and time.monotonic() - started < 10  # not held for its 20 s


# -- database settings -----------------------------------------------------------------------------


def test_sqlite_runs_with_a_write_ahead_log(tmp_path):
    from flask_migrate import upgrade

    app = create_app(
        environ={
            "APP_ENV": "testing",
            "SECRET_KEY": TEST_SECRET_KEY,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'wal.sqlite'}",
        }
    )
    with app.app_context():
        upgrade(directory=app.root_path + "/migrations", revision="heads")
        with db.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        db.engine.dispose()


@pytest.mark.parametrize(
    "environ, waiters, threads",
    [({}, 1000, 1032), ({"GUNICORN_THREADS": "8"}, 1000, 1008), ({"STATUS_MAX_WAITERS": "3"}, 3, 35)],
)
def test_long_polls_sleep_in_threads_of_their_own(environ, waiters, threads):
    assert load_config({"APP_ENV": "testing", **environ})["STATUS_MAX_WAITERS"] == waiters
    assert read_settings(ServerSettings, environ).worker_threads == threads


def test_pool_pre_ping_is_off_unless_asked_for():
    assert load_config({"APP_ENV": "testing"})["SQLALCHEMY_ENGINE_OPTIONS"]["pool_pre_ping"] is False
    asked = load_config({"APP_ENV": "testing", "DATABASE_POOL_PRE_PING": "1"})
    assert asked["SQLALCHEMY_ENGINE_OPTIONS"]["pool_pre_ping"] is True


@pytest.mark.parametrize("name", ["STATUS_RATE_LIMIT", "LOGIN_RATE_LIMIT", "REGISTER_RATE_LIMIT", "CONNECT_RATE_LIMIT"])
def test_a_rate_that_cannot_be_read_stops_start_up(name):
    with pytest.raises(ConfigError, match=name):
        load_config({"APP_ENV": "testing", name: "plenty"})


def test_the_fast_path_answers_only_for_a_trusted_host(app, client, ada):
    live_states(app)
    etag = client.get(ada["path"], headers=ada["headers"]).headers["ETag"]
    conditional = {**ada["headers"], "If-None-Match": etag}
    assert client.get(ada["path"], headers=conditional).status_code == 304  # token and state now kept
    app.config["TRUSTED_HOSTS"] = ["connect.example.com"]  # as production sets it from PUBLIC_BASE_URL
    assert client.get(ada["path"], headers=conditional).status_code == 400  # Flask's answer to a stranger
    trusted = client.get(ada["path"], headers=conditional, base_url="https://connect.example.com")
    assert trusted.status_code == 304
