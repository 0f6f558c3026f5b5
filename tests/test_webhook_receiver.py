"""POST /webhooks/terra: raw body, verify, record, apply, acknowledge."""

import json
import logging
import time
import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from extensions import db
from models import Connection, WebhookEvent
from terra.signature import sign
from tests.helpers import auth_event, create_user, deliver, terra_user


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


def test_signed_auth_event_creates_connection(client, app, secret, user):
    response = deliver(client, auth_event(user, terra_user(user, "tu-1")), secret=secret)
    assert response.status_code == 200
    assert response.json["status"] == "applied"
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
def test_malformed_bodies_are_400_with_reason(client, app, secret, body, message):
    response = deliver(client, body, secret=secret)
    assert response.status_code == 400
    assert message in response.json["error"]["message"]
    assert count(app, WebhookEvent) == 0


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


def test_data_events_are_recorded_one_row_per_trace_id(client, app, secret, user):
    deliver(client, auth_event(user, terra_user(user, "tu-data")), secret=secret)
    activity = {"type": "activity", "user": terra_user(user, "tu-data"), "data": [{"metadata": {"summary_id": "s1"}}]}
    for trace in ("big:chunk:1", "big:chunk:2", "big:chunk:2"):
        response = deliver(client, activity, secret=secret, trace_id=trace)
        assert response.status_code == 200
    with app.app_context():
        rows = db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "activity")).all()
        assert sorted(row.trace_id for row in rows) == ["big:chunk:1", "big:chunk:2"]
        assert {row.outcome for row in rows} == {"recorded"}


@pytest.mark.parametrize("event_type", ["large_request_processing", "large_request_sending", "brand_new_event"])
def test_informational_and_unknown_types_are_recorded_and_acknowledged(client, app, secret, event_type):
    response = deliver(client, {"type": event_type, "reference": str(uuid.uuid4())}, secret=secret)
    assert response.status_code == 200
    with app.app_context():
        row = db.session.scalars(select(WebhookEvent)).one()
        assert row.event_type == event_type
        assert row.outcome in ("recorded", "ignored")


def test_webhook_needs_no_csrf_token(app, secret, user):
    app.config["WTF_CSRF_ENABLED"] = True
    response = deliver(app.test_client(), auth_event(user, terra_user(user)), secret=secret)
    assert response.status_code == 200
