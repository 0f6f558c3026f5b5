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
from tests.conftest import Browser, gunicorn
from tests.helpers import auth_event, post_event, redis_test_url, settle_inbox, terra_user
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
