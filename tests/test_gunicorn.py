"""The shipped gunicorn configuration serves the app and its sandbox in one process without deadlock:
the app calls the sandbox over HTTP, and the sandbox calls the app's webhook over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import TEST_SECRET_KEY, Browser, wait_for
from tests.test_connect_flow import finish_widget, start_connect, wait_for_terminal

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gunicorn_server(database_uri, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "APP_ENV": "testing",
        "SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": database_uri,
        "PUBLIC_BASE_URL": url,
        "BIND": f"127.0.0.1:{port}",
        "SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    }
    log = open(tmp_path / "gunicorn.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )

    def healthy():
        assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
        try:
            return requests.get(url + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, timeout=20, interval=0.2)
    yield url
    process.terminate()
    process.wait(timeout=10)
    log.close()


def test_full_flow_under_gunicorn(gunicorn_server, app):  # `app` empties the tables afterwards
    browser = Browser(gunicorn_server)
    assert browser.register().status_code == 200
    state = wait_for_terminal(browser, finish_widget(start_connect(browser)))
    assert state["status"] == "connected"
    assert 'data-status="active"' in browser.get("/connections").text
