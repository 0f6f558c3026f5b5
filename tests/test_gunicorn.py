"""The shipped gunicorn configuration serves the app and its sandbox in one process without deadlock:
the app calls the sandbox over HTTP, and the sandbox calls the app's webhook over HTTP."""

from __future__ import annotations

from tests.conftest import Browser
from tests.helpers import finish_widget
from tests.test_connect_flow import start_connect, wait_for_terminal


def test_full_flow_under_gunicorn(gunicorn_server, app):  # `app` empties the tables afterwards
    browser = Browser(gunicorn_server)
    assert browser.register().status_code == 200
    state = wait_for_terminal(browser, finish_widget(start_connect(browser)))
    assert state["status"] == "connected"
    assert 'data-status="active"' in browser.get("/connections").text
