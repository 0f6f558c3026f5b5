"""History asked of Terra for a connection (the API's `POST /connections/<id>/data-requests` and the
dashboard's button), end to end over real HTTP against the sandbox's data endpoints, with Terra's
limits: one request's span (rule r1), the hourly budget of requested days (rule r2, 429 with
Retry-After, which the app waits out and shows), and no duplicated data when asked twice."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from extensions import db
from models import Activity, DailyData, SleepSession, WebhookEvent
from models.time import utcnow
from sandbox.settings import SANDBOX_API_KEY, SANDBOX_DEV_ID
from terra_integration.client import TerraClient
from terra_integration.data_requests import DataRequestThrottled, SpanTooLong, request_history
from tests.conftest import Browser, wait_for
from tests.helpers import settle_inbox
from tests.test_openapi import PASSWORD, connect_a_device, expect, register_and_sign_in

pytestmark = pytest.mark.sandbox

TERRA_HEADERS = {"dev-id": SANDBOX_DEV_ID, "x-api-key": SANDBOX_API_KEY}


def counts(server) -> tuple[int, int, int]:
    """(daily rows, sleep rows, activity rows) stored by the app."""
    with server.app.app_context():
        return tuple(
            db.session.scalar(select(func.count()).select_from(model)) for model in (DailyData, SleepSession, Activity)
        )


def received(server, *event_types: str) -> int:
    """How many webhooks of `event_types` the app has received."""
    with server.app.app_context():
        return db.session.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.event_type.in_(event_types))
        )


def ask(api, connection_id, body: dict, status: int = 202, *, valid_request: bool = True) -> dict:
    path = f"/connections/{connection_id}/data-requests"
    return expect(api.call("POST", path, json=body, valid_request=valid_request), status)


def test_asking_for_30_days_fills_the_summary_and_asking_again_duplicates_nothing(live_server):
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    asked = ask(mobile, connection["id"], {"days": 30})
    assert (asked["status"], asked["sent_types"], asked["days"]) == ("sent", ["daily", "activity", "sleep", "body"], 30)
    assert date.fromisoformat(asked["end_date"]) - date.fromisoformat(asked["start_date"]) == timedelta(days=30)

    wait_for(lambda: counts(live_server)[:2] == (30, 30), timeout=20)
    settle_inbox(live_server.app)
    first = counts(live_server)
    sessions_sent = received(live_server, "sleep", "activity")
    summary = expect(mobile.call("GET", f"/connections/{connection['id']}/summary"), 200)
    assert all(day["steps"] is not None for day in summary["daily_steps"])
    assert summary["latest_data_request"]["id"] == asked["id"]

    # The same days again: Terra sends the same workouts and nights again, which the app stores once.
    again = ask(mobile, connection["id"], {"days": 30, "types": ["sleep", "activity", "sleep"]})
    assert again["types"] == ["activity", "sleep"]
    wait_for(lambda: received(live_server, "sleep", "activity") == 2 * sessions_sent, timeout=20)
    settle_inbox(live_server.app)
    assert counts(live_server) == first


def test_the_dashboards_history_button_fills_the_chart(live_server):
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    browser = Browser(live_server.url)
    browser.login("ada@example.com", PASSWORD)
    action = f"/connections/{connection['id']}/data-requests"
    page = browser.get("/connections").text
    assert f'action="{action}"' in page and "Get the last 30 days" in page and "chart-bar" not in page
    assert browser.http.post(live_server.url + action, timeout=10).status_code == 400  # no CSRF token

    pressed = browser.submit("/connections", action)
    assert pressed.status_code == 200 and "Asked Terra for 30 days of Garmin history" in pressed.text
    wait_for(lambda: counts(live_server)[:2] == (30, 30), timeout=20)
    page = browser.get("/connections").text
    assert page.count('class="chart-bar"') == 14 and "chart-missing" not in page
    assert 'data-status="sent"' in page and "Asked Terra for 30 days of history" in page


def test_only_the_owner_may_ask_for_a_connections_history(live_server):
    ada = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, ada)["connection"]
    eve = register_and_sign_in(live_server, "eve@example.com")
    for caller, connection_id in ((eve, connection["id"]), (ada, 987654)):
        assert ask(caller, connection_id, {"days": 30}, 404)["error"]["code"] == "not_found"
    eves_browser = Browser(live_server.url)
    eves_browser.login("eve@example.com", PASSWORD)
    assert eves_browser.submit("/connections", f"/connections/{connection['id']}/data-requests").status_code == 404
    assert counts(live_server) == (0, 0, 0)

    expect(ada.call("DELETE", f"/connections/{connection['id']}"), 200)
    assert ask(ada, connection["id"], {"days": 30}, 409)["error"]["code"] == "connection_revoked"


def test_asking_for_history_is_rate_limited_per_user_before_terra_is_asked(live_server):
    live_server.app.config["DATA_REQUEST_RATE_LIMIT"] = "1 per minute"
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    ask(mobile, connection["id"], {"days": 1, "types": ["daily"]})
    refused = mobile.call("POST", f"/connections/{connection['id']}/data-requests", json={"days": 1})
    assert expect(refused, 429)["error"]["code"] == "too_many_requests" and int(refused.headers["Retry-After"]) > 0
    summary = expect(mobile.call("GET", f"/connections/{connection['id']}/summary"), 200)
    assert summary["latest_data_request"]["types"] == ["daily"]  # the refused one was never recorded


def test_terras_span_and_hourly_budget_a_throttled_request_waits_visibly_then_is_sent(live_server, advance_clock):
    live_server.app.config["SANDBOX_HISTORY_DAYS"] = 2  # a short history: few webhooks to wait for
    live_server.app.config["DATA_REQUEST_RATE_LIMIT"] = "100 per minute"  # the refusals below count too
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    for body in (
        {},
        {"days": 0},
        {"days": "30"},
        {"days": True},
        {"days": 30, "types": []},
        {"days": 30, "types": ["steps"]},
    ):
        refused = ask(mobile, connection["id"], body, 400, valid_request=False)
        assert refused["error"]["code"] == "invalid_request", body
    over = ask(mobile, connection["id"], {"days": 1826}, 400, valid_request=False)["error"]
    assert over["code"] == "span_too_long" and "1825 days" in over["message"]

    # 4 types of 1,825 days are more than Terra's 6,000 requested days an hour: the fourth waits.
    asked = ask(mobile, connection["id"], {"days": 1825})
    assert (asked["status"], asked["sent_types"]) == ("throttled", ["daily", "activity", "sleep"])
    waits = datetime.fromisoformat(asked["retry_at"]).replace(tzinfo=None) - utcnow()
    # Terra's Retry-After: the rest of the hour since the first accepted request, less than a second ago
    # on any machine that runs this test at all (the lower bound only rules out "no wait").
    assert timedelta(minutes=50) < waits <= timedelta(hours=1, seconds=1)
    summary = expect(mobile.call("GET", f"/connections/{connection['id']}/summary"), 200)
    assert summary["latest_data_request"]["status"] == "throttled"
    browser = Browser(live_server.url)
    browser.login("ada@example.com", PASSWORD)
    assert "Waiting for Terra: its hourly limit is reached" in browser.get("/connections").text

    runner = live_server.app.test_cli_runner()
    assert "Asked again for 0 throttled" in runner.invoke(args=["terra", "send-data-requests"]).output
    advance_clock(3601)
    result = runner.invoke(args=["terra", "send-data-requests"])
    assert result.exit_code == 0 and f"data request {asked['id']}: sent" in result.output, result.output
    summary = expect(mobile.call("GET", f"/connections/{connection['id']}/summary"), 200)
    assert summary["latest_data_request"]["sent_types"] == ["daily", "activity", "sleep", "body"]


def test_the_sandboxs_data_endpoints_answer_with_terras_limits(live_server):
    live_server.app.config["SANDBOX_HISTORY_DAYS"] = 2
    mobile = register_and_sign_in(live_server)
    terra_id = connect_a_device(live_server, mobile)["connection"]["terra_user_id"]
    today = datetime.now(UTC).date()

    def data_request(days: int, prefix: str = "/sandbox/v2", **params) -> requests.Response:
        query = {"user_id": terra_id, "start_date": str(today - timedelta(days=days)), "end_date": str(today)}
        return requests.get(
            f"{live_server.url}{prefix}/sleep", params=query | params, headers=TERRA_HEADERS, timeout=10
        )

    accepted = data_request(40)
    assert accepted.status_code == 200 and accepted.json()["status"] == "success"
    assert accepted.json()["reference"] and "chunks" in accepted.json()["message"]  # over a month: large
    assert (accepted.headers["X-Terra-RateLimit-Limit"], accepted.headers["X-Terra-RateLimit-Remaining"]) == (
        "6000",
        "5960",
    )
    span = data_request(1826)
    assert (span.status_code, span.headers["X-Terra-RateLimit-Rule"]) == (429, "r1")
    assert "Retry-After" not in span.headers and span.json() == {"detail": "rate limit exceeded"}
    assert data_request(1825).status_code == 200  # exactly the span is allowed

    live_server.app.config["SANDBOX_DATA_HOURLY_DAYS"] = 1900  # 40 + 1,825 spent: 40 more do not fit
    budget = data_request(40, prefix="/sandbox/api/v2")
    assert (budget.status_code, budget.headers["X-Terra-RateLimit-Rule"]) == (429, "r2")
    assert 0 < int(budget.headers["Retry-After"]) <= 3600
    assert budget.headers["Content-Type"] == "application/problem+json"
    live_server.app.config["SANDBOX_DATA_HOURLY_DAYS"] = 0  # switched off: no budget tracked
    assert "X-Terra-RateLimit-Limit" not in data_request(40).headers

    assert data_request(30, to_webhook="false").status_code == 400
    assert data_request(30, start_date="yesterday").status_code == 400
    assert data_request(30, user_id="nobody").status_code == 404
    assert (
        requests.get(f"{live_server.url}/sandbox/v2/sleep", params={"user_id": terra_id}, timeout=10).status_code == 401
    )


def test_the_client_says_which_of_terras_limits_refused_a_request(live_server):
    mobile = register_and_sign_in(live_server)
    terra_id = connect_a_device(live_server, mobile)["connection"]["terra_user_id"]
    client = TerraClient.from_config(live_server.app.config)
    today = datetime.now(UTC).date()
    asked = {"user_id": terra_id, "data_type": "daily", "start_date": today - timedelta(days=3), "end_date": today}
    assert request_history(client, **asked).reference

    live_server.app.config["SANDBOX_DATA_MAX_SPAN_DAYS"] = 2
    with pytest.raises(SpanTooLong, match="rule r1"):
        request_history(client, **asked)
    live_server.app.config.update(SANDBOX_DATA_MAX_SPAN_DAYS=1825, SANDBOX_DATA_HOURLY_DAYS=4)
    with pytest.raises(DataRequestThrottled) as throttled:
        request_history(client, **asked)
    assert throttled.value.rate_limit_rule == "r2" and 0 < throttled.value.retry_after <= 3600
    with pytest.raises(ValueError, match="1825"):
        request_history(client, **asked | {"start_date": today - timedelta(days=1826)})


@pytest.mark.parametrize("fault", ["malformed", "5xx"])
def test_an_answer_terra_did_not_give_as_documented_is_a_failed_request_and_nothing_is_sent(live_server, fault):
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    live_server.app.config["SANDBOX_FAULTS"] = [fault]
    failed = ask(mobile, connection["id"], {"days": 30}, 502)["error"]
    assert failed["code"] == "data_request_failed" and "daily" in failed["message"]
    live_server.app.config["SANDBOX_FAULTS"] = []
    stored = expect(mobile.call("GET", f"/connections/{connection['id']}/summary"), 200)["latest_data_request"]
    assert (stored["status"], stored["sent_types"]) == ("failed", [])
    assert "Asked again for 0" in live_server.app.test_cli_runner().invoke(args=["terra", "send-data-requests"]).output


def test_a_throttled_request_of_a_connection_that_ended_meanwhile_is_not_asked_again(live_server, advance_clock):
    mobile = register_and_sign_in(live_server)
    connection = connect_a_device(live_server, mobile)["connection"]
    live_server.app.config["SANDBOX_FAULTS"] = ["429"]  # Terra's 429 with Retry-After: 1, for every call
    asked = ask(mobile, connection["id"], {"days": 30})
    assert (asked["status"], asked["sent_types"]) == ("throttled", [])
    live_server.app.config["SANDBOX_FAULTS"] = []
    expect(mobile.call("DELETE", f"/connections/{connection['id']}"), 200)
    advance_clock(2)
    result = live_server.app.test_cli_runner().invoke(args=["terra", "send-data-requests"])
    assert result.exit_code == 1 and "failed (the connection ended before Terra was asked)" in result.output
    assert counts(live_server) == (0, 0, 0)
