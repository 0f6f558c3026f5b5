"""The first data arriving, end to end over real HTTP: a device connected through the sandbox, the
sandbox console's data buttons and its 30-day backfill (chunks under one terra-reference) delivered as
signed webhooks, and what the mobile API's summary and the dashboard then show."""

from __future__ import annotations

import json
import re

import pytest
import requests
from sqlalchemy import func, select

from extensions import db
from models import Activity, DailyData, SleepSession, WebhookEvent
from tests.conftest import Browser, wait_for
from tests.test_openapi import PASSWORD, connect_a_device, expect, register_and_sign_in

pytestmark = pytest.mark.sandbox


def applied_rows(server, trace_ids: list[str]) -> list[WebhookEvent]:
    """The inbox rows of `trace_ids`, in that order, once every one of them has been applied."""

    def rows():
        with server.app.app_context():
            found = db.session.scalars(select(WebhookEvent).where(WebhookEvent.trace_id.in_(trace_ids))).all()
            db.session.expunge_all()
        by_trace = {row.trace_id: row for row in found}
        done = len(by_trace) == len(trace_ids) and all(row.outcome != "received" for row in found)
        return done and [by_trace[trace] for trace in trace_ids]

    return wait_for(rows, timeout=20)


def count(server, model) -> int:
    with server.app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_each_data_button_sends_its_data_and_the_api_summary_shows_it(live_server):
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    summary_path = f"/connections/{connection['id']}/summary"
    before = expect(mobile.call("GET", summary_path), 200)
    assert (before["last_data_at"], before["latest_activity"], before["latest_sleep"]) == (None, None, None)
    assert [day["steps"] for day in before["daily_steps"]] == [None] * 14

    sent = {}
    for kind in ("daily", "activity", "sleep", "body", "athlete"):
        response = requests.post(
            f"{live_server.url}/sandbox/users/{connection['terra_user_id']}/events", json={"type": kind}, timeout=10
        )
        assert response.status_code == 202, response.text
        sent[kind] = response.json()["trace_id"]
    rows = applied_rows(live_server, list(sent.values()))
    outcomes = {row.event_type: row.outcome for row in rows}
    assert outcomes == {
        "daily": "applied",
        "activity": "applied",
        "sleep": "applied",
        "body": "recorded",
        "athlete": "recorded",
    }
    athlete_body = json.loads(rows[-1].body)
    assert isinstance(athlete_body["athlete"], dict) and "data" not in athlete_body

    summary = expect(mobile.call("GET", summary_path), 200)
    with live_server.app.app_context():
        day = db.session.scalars(select(DailyData)).one()
        activity = db.session.scalars(select(Activity)).one()
        sleep = db.session.scalars(select(SleepSession)).one()
    assert summary["last_data_at"] is not None
    assert summary["daily_steps"][-1] == {"date": day.day.isoformat(), "steps": day.steps}
    assert (summary["latest_activity"]["summary_id"], summary["latest_activity"]["type"]) == (
        activity.summary_id,
        activity.activity_type,
    )
    assert (summary["latest_sleep"]["summary_id"], summary["latest_sleep"]["asleep_seconds"]) == (
        sleep.summary_id,
        sleep.asleep_seconds,
    )


def test_the_summary_of_a_connection_that_is_not_the_callers_is_404(live_server):
    ada = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, ada)["connection"]
    eve = register_and_sign_in(live_server, "eve@example.com")
    for caller, connection_id in ((eve, connection["id"]), (ada, 987654)):
        assert expect(caller.call("GET", f"/connections/{connection_id}/summary"), 404)["error"]["code"] == "not_found"


def test_backfill_sends_30_days_in_chunks_under_one_terra_reference_and_the_dashboard_charts_them(live_server):
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    response = requests.post(
        f"{live_server.url}/sandbox/users/{connection['terra_user_id']}/backfill", json={}, timeout=10
    )
    assert response.status_code == 202, response.text
    sent = response.json()
    rows = applied_rows(live_server, sent["trace_ids"])

    # As Terra answers a large request: announced, then the data in chunks of at most 10 items.
    assert [row.event_type for row in rows[:2]] == ["large_request_processing", "large_request_sending"]
    chunks = rows[2:]
    assert {row.terra_reference for row in rows} == {sent["terra_reference"]}
    assert json.loads(rows[1].body)["expected_payloads"] == len(chunks)
    chunk_trace = chunks[0].trace_id.rsplit(":chunk:", 1)[0]
    assert [row.trace_id for row in chunks] == [f"{chunk_trace}:chunk:{n}" for n in range(1, len(chunks) + 1)]
    sizes = {
        kind: [len(json.loads(row.body)["data"]) for row in chunks if row.event_type == kind]
        for kind in ("daily", "sleep")
    }
    assert sizes == {"daily": [10, 10, 10], "sleep": [10, 10, 10]}
    assert all(len(json.loads(row.body)["data"]) <= 10 for row in chunks)
    assert {row.outcome for row in chunks if row.event_type != "body"} == {"applied"}
    assert (count(live_server, DailyData), count(live_server, SleepSession)) == (30, 30)
    assert count(live_server, Activity) == sum(
        len(json.loads(row.body)["data"]) for row in chunks if row.event_type == "activity"
    )

    summary = expect(mobile.call("GET", f"/connections/{connection['id']}/summary"), 200)
    assert all(day["steps"] is not None for day in summary["daily_steps"])

    browser = Browser(live_server.url)
    browser.login("ada@example.com", PASSWORD)
    page = browser.get("/connections").text
    assert len(re.findall(r'<g class="chart-bar"', page)) == 14 and "chart-missing" not in page
    assert "<code>large_request_sending</code>" in page and page.count("<code>daily</code>") == 3


def test_backfill_refuses_bad_lengths_and_inactive_users(live_server):
    mobile = register_and_sign_in(live_server)
    terra_id = connect_a_device(live_server, mobile)["connection"]["terra_user_id"]
    url = f"{live_server.url}/sandbox/users/{terra_id}/backfill"
    for days in (0, 91, "30", True):
        response = requests.post(url, json={"days": days}, timeout=10)
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request"), days
    requests.post(f"{live_server.url}/sandbox/users/{terra_id}/events", json={"type": "deauth"}, timeout=10)
    assert requests.post(url, json={}, timeout=10).status_code == 409
    assert requests.post(f"{live_server.url}/sandbox/users/nobody/backfill", json={}, timeout=10).status_code == 404


def test_the_console_has_a_backfill_button_that_sends_history(live_server):
    mobile = register_and_sign_in(live_server)
    terra_id = connect_a_device(live_server, mobile)["connection"]["terra_user_id"]
    console = requests.get(f"{live_server.url}/sandbox/", timeout=10).text
    action = f"/sandbox/users/{terra_id}/backfill"
    assert f'action="{action}"' in console and "Backfill 30 days" in console
    # The form as the button posts it (a shorter history here), then back to the console.
    pressed = requests.post(live_server.url + action, data={"days": "2"}, allow_redirects=False, timeout=10)
    assert pressed.status_code == 303 and "/sandbox/" in pressed.headers["Location"]

    def all_applied() -> bool:
        with live_server.app.app_context():
            announced = db.session.scalars(
                select(WebhookEvent).where(WebhookEvent.event_type == "large_request_sending")
            ).first()
            if announced is None:
                return False
            rows = db.session.scalars(
                select(WebhookEvent).where(WebhookEvent.terra_reference == announced.terra_reference)
            ).all()
            expected = 2 + json.loads(announced.body)["expected_payloads"]
            return len(rows) == expected and all(row.outcome != "received" for row in rows)

    wait_for(all_applied)
    assert (count(live_server, DailyData), count(live_server, SleepSession)) == (2, 2)
