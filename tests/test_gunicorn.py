"""The shipped gunicorn configuration serves the app and its sandbox in one process without deadlock:
the app calls the sandbox over HTTP, and the sandbox calls the app's webhook over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT, Browser, free_port
from tests.helpers import finish_widget
from tests.test_config import PRODUCTION
from tests.test_connect_flow import start_connect, wait_for_terminal


def test_full_flow_under_gunicorn(gunicorn_server, app):  # `app` empties the tables afterwards
    browser = Browser(gunicorn_server)
    assert browser.register().status_code == 200
    state = wait_for_terminal(browser, finish_widget(start_connect(browser)))
    assert state["status"] == "connected"
    assert 'data-status="active"' in browser.get("/connections").text


def test_a_refusal_to_start_is_said_once_without_a_traceback_and_gunicorn_exits(tmp_path):
    """Production with one Terra credential missing: gunicorn checks the settings before it starts a
    worker, prints the refusal once, and exits non-zero instead of booting workers that fail."""
    env = {
        **os.environ,
        **PRODUCTION,  # a production environment that starts, but for the credential taken away
        "TERRA_API_KEY": "",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'refused.sqlite'}",
        "BIND": f"127.0.0.1:{free_port()}",
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
    # The timeout only ends a gunicorn that would keep restarting failing workers; it exits in about a second.
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert output.count("missing TERRA_API_KEY") == 1, output
    assert "Traceback" not in output and "Booting worker" not in output, output
    assert "embedded sandbox" not in output  # what production refuses is not offered as the way out
