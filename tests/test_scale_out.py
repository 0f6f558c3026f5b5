"""Two app instances (each several gunicorn workers) on one database behave as one app.

CI runs the suite on PostgreSQL too, where this is the deployment the design promises: no state in a
process that correctness depends on, long-polls woken by commits from another instance, duplicate
deliveries split across instances, and rate limits shared through Redis.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from sqlalchemy import func, select

from extensions import db
from models import ConnectAttempt, Connection, User, WebhookEvent
from services import api_tokens, long_poll
from tests.conftest import Browser, gunicorn, wait_for
from tests.helpers import (
    auth_event,
    create_attempt,
    create_user,
    post_event,
    redis_test_url,
    settle_inbox,
    terra_user,
)
from tests.test_concurrency import at_once

PASSWORD = "correct horse battery"
REDIS_URL = redis_test_url(0)


@pytest.fixture(scope="module")
def instances(database_uri, tmp_path_factory):
    """Started once for the module: each instance boots several workers, each importing the app."""
    settings = {"RATELIMIT_STORAGE_URI": REDIS_URL, "LOGIN_RATE_LIMIT": "4 per minute"}
    logs = tmp_path_factory.mktemp("instances")
    with gunicorn(database_uri, logs, **settings) as first, gunicorn(database_uri, logs, **settings) as second:
        yield first, second


@pytest.fixture
def two_instances(instances, app):  # `app` empties the tables afterwards
    redis.Redis.from_url(REDIS_URL).flushdb()
    yield instances
    redis.Redis.from_url(REDIS_URL).flushdb()


def token_for(base_url: str, email: str) -> dict:
    Browser(base_url).register(email=email, password=PASSWORD)
    response = requests.post(base_url + "/api/v1/tokens", json={"email": email, "password": PASSWORD}, timeout=10)
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_an_attempt_made_on_one_instance_is_served_and_woken_on_the_other(two_instances, app):
    first, second = two_instances
    headers = token_for(first, "ada@example.com")
    attempt = requests.post(first + "/api/v1/connect-attempts", json={}, headers=headers, timeout=10).json()

    status_on_second = requests.get(second + attempt["status_url"], headers=headers, timeout=10)
    assert status_on_second.status_code == 200 and status_on_second.json()["status"] == "pending"
    etag = status_on_second.headers["ETag"]

    with app.app_context():
        row = db.session.get(ConnectAttempt, attempt["attempt_id"])
        owner = db.session.get(User, row.user_id)
        event = auth_event(owner, terra_user(owner, "tu-scale"), session_id=row.terra_session_id)

    def deliver_to_first() -> int:
        time.sleep(1)  # by then the long-poll below waits on the second instance
        return post_event(first, app.config["TERRA_SIGNING_SECRET"], event, "trace-scale")

    with ThreadPoolExecutor(max_workers=1) as pool:
        delivery = pool.submit(deliver_to_first)
        woken = requests.get(
            second + attempt["status_url"], params={"wait": 20}, headers={**headers, "If-None-Match": etag}, timeout=30
        )
    assert delivery.result() == 200
    # A long-poll that ran out of time answers 304: the new state means the first instance's commit ended it.
    assert woken.status_code == 200 and woken.json()["status"] == "connected"


def test_duplicate_deliveries_split_across_instances_leave_one_connection(two_instances, app):
    first, second = two_instances
    secret = app.config["TERRA_SIGNING_SECRET"]
    token_for(first, "ada@example.com")
    with app.app_context():
        owner = db.session.scalars(select(User)).one()
        old, new = terra_user(owner, "old-split"), terra_user(owner, "new-split")
        first_auth = auth_event(owner, old)
        swap = {"type": "user_reauth", "status": "warning", "message": "reauth", "old_user": old, "new_user": new}
        second_auth = auth_event(owner, new)
    assert post_event(first, secret, first_auth, "trace-old") == 200
    calls = [
        lambda base=base, event=event, trace=trace: post_event(base, secret, event, trace)
        for base in (first, second)
        for event, trace in ((swap, "trace-swap"), (second_auth, "trace-new"))
    ]
    assert set(at_once(calls * 4)) == {200}
    settle_inbox(app)  # four workers' applier threads on two instances, claiming from one inbox
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 3
        assert [(row.terra_user_id, row.status) for row in db.session.scalars(select(Connection))] == [
            ("new-split", "active")
        ]


def test_login_rate_limit_is_shared_through_redis(two_instances):
    first, second = two_instances
    statuses = []
    for base in (first, second, first, second, first, second):
        browser = Browser(base)
        response = browser.submit(
            "/auth/login", "/auth/login", {"email": f"{uuid.uuid4()}@example.com", "password": "wrong password"}
        )
        statuses.append(response.status_code)
    # Four tries a minute in all, whichever instance answers: the fifth and sixth are refused.
    assert statuses == [400, 400, 400, 400, 429, 429]


def test_a_caller_holds_at_most_four_long_polls_across_every_worker_and_instance(two_instances, app):
    """Counted in Redis (RATELIMIT_STORAGE_URI), not per process: four long-polls held by the first
    instance's workers leave none for the same caller on the second; each slot comes back when its
    poll ends."""
    first, second = two_instances
    headers = token_for(first, "ada@example.com")
    with app.app_context():
        owner = db.session.scalars(select(User)).one()
        attempt_ids = [create_attempt(owner).id for _ in range(5)]
        _, user_key = long_poll.caller_keys(0, owner.id)

    def slots_held() -> int:
        return redis.Redis.from_url(REDIS_URL).zcard(f"{long_poll.SLOT_KEY_PREFIX}:{user_key}")

    def long_poll_on(base: str, attempt_id: str, wait: int) -> requests.Response:
        url = f"{base}/api/v1/connect-attempts/{attempt_id}"
        return requests.get(url, params={"wait": wait}, headers={**headers, "If-None-Match": '"1"'}, timeout=30)

    with ThreadPoolExecutor(max_workers=4) as pool:
        held = [pool.submit(long_poll_on, first, attempt_id, 3) for attempt_id in attempt_ids[:4]]
        wait_for(lambda: slots_held() == 4)
        refused = long_poll_on(second, attempt_ids[4], 20)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_long_polls"
        assert refused.headers["Retry-After"] == "2"
        assert [poll.result().status_code for poll in held] == [304] * 4  # held to the end of their wait
    assert slots_held() == 0
    assert long_poll_on(second, attempt_ids[4], 1).status_code == 304  # held, not refused


STRESS_ROUNDS = 12
STRESS_POLLERS = 8


def test_long_polls_in_one_process_see_changes_made_moments_apart_through_another(start_gunicorn, app):
    """Issue 19: on SQLite a long-poll sometimes slept to its deadline when two changes landed moments
    apart. Two single-worker servers on one database: in each round a fresh attempt, STRESS_POLLERS
    apps long-polling it on the first as docs/mobile.md says (`?wait=20` with the last ETag, again
    at once after each answer), and at the same moment, through the second, the browser-closed report
    and then the `auth` webhook. Every app must see `connected`, each answer long before an unwoken
    20 s wait could end (a missed change answers 304 at 20 s: that is what fails here)."""
    settings = {
        "WEB_CONCURRENCY": "1",
        "STATUS_MAX_WAITERS_PER_TOKEN": str(STRESS_POLLERS),
        "STATUS_MAX_WAITERS_PER_USER": str(STRESS_POLLERS),
    }
    polled, changed = start_gunicorn(**settings), start_gunicorn(**settings)
    secret = app.config["TERRA_SIGNING_SECRET"]
    with app.app_context():
        owner = create_user()
        headers = {"Authorization": f"Bearer {api_tokens.issue_token(owner)[0]}"}
        rounds = []
        for number in range(STRESS_ROUNDS):
            attempt = create_attempt(owner)
            event = auth_event(owner, terra_user(owner, f"tu-stress-{number}"), session_id=attempt.terra_session_id)
            rounds.append((f"/api/v1/connect-attempts/{attempt.id}", event))

    def follow(status_url: str) -> str:
        etag = '"1"'
        for _ in range(5):  # two changes: at most three answers before `connected`
            asked = time.monotonic()
            answer = requests.get(
                polled + status_url, params={"wait": 20}, headers={**headers, "If-None-Match": etag}, timeout=40
            )
            if answer.status_code != 200:
                return f"{answer.status_code} after {time.monotonic() - asked:.1f} s holding {etag}"
            if answer.json()["status"] == "connected":
                return "connected"
            etag = answer.headers["ETag"]
        return f"still {answer.json()['status']}"

    def change_through_the_other(status_url: str, event: dict) -> str:
        closed = requests.post(changed + status_url + "/browser-closed", headers=headers, timeout=30)
        return f"{closed.status_code} {post_event(changed, secret, event)}"

    for status_url, event in rounds:
        calls = [lambda url=status_url: follow(url)] * STRESS_POLLERS + [
            lambda url=status_url, event=event: change_through_the_other(url, event)
        ]
        *seen, changes = at_once(calls)
        assert changes == "202 200"
        assert seen == ["connected"] * STRESS_POLLERS, seen
