"""The dashboard's view of each connection's data: last data received, the 14-day steps chart (SVG drawn
on the server), and the webhook timeline with failure reasons and the operators' replay button. The data
arrives as real signed webhooks through POST /webhooks/terra."""

from __future__ import annotations

import re
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from sqlalchemy import select

from extensions import db
from models import Connection, DailyData, User, WebhookEvent
from models.time import utcnow
from services import data_events
from terra_integration.models import EventOutcome
from tests.helpers import auth_event, create_user, deliver, delivered_outcome, terra_user

TERRA_ID = "tu-dashboard"


@pytest.fixture
def secret(app):
    return app.config["TERRA_SIGNING_SECRET"]


@pytest.fixture
def owner(app, client, auth, secret):
    """Ada, signed in, with one connection made by a signed `auth` event."""
    auth.register()
    with app.app_context():
        user = db.session.scalars(select(User)).one()
    assert delivered_outcome(client, auth_event(user, terra_user(user, TERRA_ID)), secret=secret) == "applied"
    return user


def daily_event(user: User, days_ago_and_steps: list[tuple[int, int]], terra_id: str = TERRA_ID) -> dict:
    today = utcnow().date()
    items = [
        {
            "metadata": {"start_time": f"{today - timedelta(days=ago)}T00:00:00.000000+02:00", "upload_type": 0},
            "distance_data": {"steps": steps},
        }
        for ago, steps in days_ago_and_steps
    ]
    return {"type": "daily", "user": terra_user(user, terra_id), "data": items}


def chart(page: str) -> ElementTree.Element:
    [svg] = re.findall(r"<svg class=\"steps-chart\".*?</svg>", page, re.DOTALL)
    return ElementTree.fromstring(svg)


def test_the_chart_shows_the_last_14_days_of_steps_with_a_text_alternative(client, owner, secret):
    # Twenty days of history, minus two days inside the window; the chart shows the last fourteen.
    history = [(ago, 1000 + ago) for ago in range(20) if ago not in (3, 4)]
    assert delivered_outcome(client, daily_event(owner, history), secret=secret) == "applied"
    response = client.get("/connections")
    page = response.get_data(as_text=True)
    svg = chart(page)
    bars = svg.findall("g")
    assert len(bars) == 14
    today = utcnow().date()
    expected = [
        f"{day.day} {day:%b}: " + ("no data" if ago in (3, 4) else f"{1000 + ago:,} steps")
        for ago, day in ((ago, today - timedelta(days=ago)) for ago in range(13, -1, -1))
    ]
    assert [bar.findtext("title") for bar in bars] == expected
    assert [bar.get("class") for bar in bars].count("chart-missing") == 2
    # Heights follow the steps: the tallest bar is the biggest day (13 days ago, 1,013 steps).
    heights = [float(bar.find("rect").get("height")) for bar in bars if bar.get("class") == "chart-bar"]
    assert heights[0] == max(heights) and heights[-1] == min(heights)
    # Accessible: a group named by the visible caption and described day by day, each day an image
    # named by its value, which focus shows on the chart's top line in place of the peak.
    assert svg.get("role") == "group"
    assert re.search(rf'<figcaption id="{svg.get("aria-labelledby")}">Steps per day, ', page)
    assert svg.find("desc").get("id") == svg.get("aria-describedby")
    assert svg.findtext("desc").startswith(expected[0]) and "no data" in svg.findtext("desc")
    assert [bar.get("aria-label") for bar in bars] == expected and {bar.get("role") for bar in bars} == {"img"}
    assert [bar.findtext("text[@class='chart-readout']") for bar in bars] == expected
    assert svg.findtext("text[@class='chart-peak']") == f"Peak: 1,013 steps, {expected[0].split(':')[0]}"
    # The scale: round steps from 0 to the first line at or above the peak.
    assert [text.text for text in svg.findall("text[@class='chart-scale']")] == ["0", "500", "1,000", "1,500"]
    # Drawn on the server: no script, nothing from elsewhere, and the strict policy stands.
    assert "<script" not in page and "cdn" not in page.lower()
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]


def test_last_data_received_is_shown_per_connection(client, owner, secret):
    assert "No data received yet" in client.get("/connections").get_data(as_text=True)
    deliver(client, daily_event(owner, [(0, 500)]), secret=secret)
    page = client.get("/connections").get_data(as_text=True)
    assert re.search(r"Last data received \d{4}-\d\d-\d\d \d\d:\d\d UTC", page)


def timeline_rows(page: str) -> list[str]:
    return re.findall(r"<tr data-event-id=.*?</tr>", page, re.DOTALL)


def fail_storage_once(monkeypatch):
    """The next data event fails to apply, on each try of it, as a lost database would make it; a
    replay (the event read again from its row) stores it."""
    real, failing = data_events.store, []

    def broken(connection, event):
        if not failing or failing[0] is event:
            failing[:] = [event]
            raise RuntimeError("the database went away")
        return real(connection, event)

    monkeypatch.setattr(data_events, "store", broken)


def failed_event_id(app) -> int:
    with app.app_context():
        return db.session.scalars(select(WebhookEvent.id).where(WebhookEvent.outcome == "failed")).one()


def test_the_timeline_lists_each_webhook_with_its_outcome_and_a_failure_reason(app, client, owner, secret, monkeypatch):
    fail_storage_once(monkeypatch)
    assert delivered_outcome(client, daily_event(owner, [(0, 700)]), secret=secret) == "failed"
    page = client.get("/connections").get_data(as_text=True)
    rows = timeline_rows(page)
    # Newest first: the failed daily event, then the auth that made the connection.
    assert ["<code>daily</code>" in rows[0], "<code>auth</code>" in rows[1]] == [True, True]
    assert 'data-outcome="failed"' in rows[0] and "RuntimeError: the database went away" in rows[0]
    assert 'data-outcome="applied"' in rows[1]
    # In words: the failed one first, then the applied one.
    assert [re.search(r'class="outcome outcome-\w+">([^<]+)<', row).group(1) for row in rows] == ["Failed", "Applied"]
    assert "Replay" not in page  # Ada is not an operator


def test_every_outcome_has_its_words_in_the_timeline(app):
    with app.app_context():
        words = app.jinja_env.get_template("macros.html").module.EVENT_OUTCOMES
    assert set(words) == set(EventOutcome)


def test_an_operator_replays_a_failed_event_from_the_timeline(app, client, owner, secret, monkeypatch):
    app.config["OPERATOR_EMAILS"] = ["ada@example.com"]
    fail_storage_once(monkeypatch)
    deliver(client, daily_event(owner, [(0, 700)]), secret=secret)
    event_id = failed_event_id(app)
    with app.app_context():
        connection_id = db.session.scalars(select(Connection.id)).one()
    page = client.get("/connections").get_data(as_text=True)
    replay_url = f"/connections/{connection_id}/events/{event_id}/replay"
    assert f'action="{replay_url}"' in page
    response = client.post(replay_url)
    assert response.status_code == 303
    with app.app_context():
        assert db.session.get(WebhookEvent, event_id).outcome == "applied"
        assert db.session.scalars(select(DailyData.steps)).all() == [700]
    page = client.get("/connections").get_data(as_text=True)
    assert "Replayed the daily event: applied." in page and "Replay</button>" not in page


def test_replay_is_refused_to_others(app, client, auth, owner, secret, monkeypatch):
    fail_storage_once(monkeypatch)
    deliver(client, daily_event(owner, [(0, 700)]), secret=secret)
    event_id = failed_event_id(app)
    with app.app_context():
        connection_id = db.session.scalars(select(Connection.id)).one()
    # Ada owns the connection but is not an operator.
    assert client.post(f"/connections/{connection_id}/events/{event_id}/replay").status_code == 403
    # An operator, but the connection is Ada's: as if it did not exist.
    with app.app_context():
        create_user("ops@example.com")
    app.config["OPERATOR_EMAILS"] = ["ops@example.com"]
    auth.logout()
    auth.login("ops@example.com")
    assert client.post(f"/connections/{connection_id}/events/{event_id}/replay").status_code == 404
    with app.app_context():
        assert db.session.get(WebhookEvent, event_id).outcome == "failed"
    # Signed out: to the login page.
    auth.logout()
    response = client.post(f"/connections/{connection_id}/events/{event_id}/replay")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_an_operator_cannot_replay_an_event_of_another_connection_through_their_own(app, client, auth, owner, secret):
    """The event id must belong to the connection in the URL, even for an operator who owns that connection."""
    app.config["OPERATOR_EMAILS"] = ["ada@example.com"]
    with app.app_context():
        bob = create_user("bob@example.com")
        bobs_auth = auth_event(bob, terra_user(bob, "tu-bob"))
    deliver(client, bobs_auth, secret=secret)
    with app.app_context():
        bobs_event = db.session.scalars(select(WebhookEvent.id).where(WebhookEvent.terra_user_id == "tu-bob")).one()
        adas_connection = db.session.scalars(select(Connection.id).where(Connection.terra_user_id == TERRA_ID)).one()
    assert client.post(f"/connections/{adas_connection}/events/{bobs_event}/replay").status_code == 404


def test_the_chart_ends_on_the_users_today_when_their_data_is_already_dated_tomorrow(client, owner, secret):
    """East of UTC the user's day starts before UTC's: their newest day is still charted. A day further
    ahead than any time zone is not taken for today."""
    deliver(client, daily_event(owner, [(-2, 9999), (-1, 321), (0, 500), (14, 70)]), secret=secret)
    bars = chart(client.get("/connections").get_data(as_text=True)).findall("g")
    tomorrow = utcnow().date() + timedelta(days=1)
    assert len(bars) == 14
    assert bars[-1].findtext("title") == f"{tomorrow.day} {tomorrow:%b}: 321 steps"
    assert bars[0].findtext("title").endswith("no data")  # 14 days ago left the window
