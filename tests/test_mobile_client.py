"""The command that plays the mobile app, run end to end against the live server and Chromium."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from flask.cli import FlaskGroup

from app import create_app
from tests.conftest import ROOT
from tests.test_browser import CHROMIUM, WALKTHROUGH
from tests.test_config import PRODUCTION
from tests.test_mobile_devices import POLL_AFTER_MS
from tools.mobile_client import Backoff, MobileClient, deep_link_attempt_id, link_prefix, mobile_client_command

LINKS = "https://links.example.com/terra"


@pytest.mark.browser
@pytest.mark.parametrize(
    "return_mode, callback, outcome, final, caught",
    [
        ("page", "scheme", "success", "connected", "com.example.terraconnect://connect/success?attempt_id="),
        ("app", "scheme", "denied", "failed", "com.example.terraconnect://connect/failure?"),
        ("page", "https", "success", "connected", f"{LINKS}/connect/success?attempt_id="),  # tapped
        ("app", "https", "success", "connected", f"{LINKS}/connect/success?"),
    ],
)
def test_client_walks_the_whole_mobile_flow(start_live_server, return_mode, callback, outcome, final, caught):
    server = start_live_server(
        MOBILE_APP_SCHEME="com.example.terraconnect",
        MOBILE_UNIVERSAL_LINK_BASE=LINKS,
        STATUS_POLL_AFTER_MS=POLL_AFTER_MS,
    )
    steps: list[str] = []
    client = MobileClient(server.url, say=steps.append)
    client.register("mobile@example.com", "correct horse battery")
    client.sign_in("mobile@example.com", "correct horse battery")
    attempt = client.start_attempt(return_mode, ["OURA"], callback)
    prefix = link_prefix(callback, "com.example.terraconnect", LINKS)
    link = client.run_browser(attempt["url"], prefix, "OURA", "phone-user", outcome, CHROMIUM)
    assert link.startswith(caught)
    assert deep_link_attempt_id(link) == (attempt["attempt_id"] if return_mode == "page" else None)
    state = client.poll_until_final(attempt["attempt_id"], deadline_seconds=30)
    assert state["status"] == final
    assert [step.split(" ", 1)[0] for step in steps[:5]] == ["register", "1.", "2.", "3.", "4."]
    assert steps[-1].startswith(f"5. status {final}")


@pytest.mark.browser
def test_command_prints_each_step(live_server):
    live_server.app.config["STATUS_POLL_AFTER_MS"] = int(POLL_AFTER_MS)
    runner = live_server.app.test_cli_runner()
    result = runner.invoke(
        mobile_client_command,
        [
            "--base-url",
            live_server.url,
            "--email",
            "cli@example.com",
            "--password",
            "correct horse battery",
            "--register",
            "--chromium",
            CHROMIUM,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "deep link caught: com.example.terraconnect://connect/success" in result.output
    assert result.output.strip().endswith("done: connected")
    # docs/walkthrough.md quotes the start of each numbered line the client prints.
    quoted = {number: start for start, number in re.findall(r"`((\d)\. [^`]+)`", WALKTHROUGH.read_text())}
    numbered = [line for line in result.output.splitlines() if re.match(r"\d\. ", line)]
    assert sorted(quoted) == ["1", "2", "3", "4", "5"] and len(numbered) >= 5
    assert [line for line in numbered if not line.startswith(quoted[line[0]])] == []


def test_runs_as_a_module_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, "-m", "tools.mobile_client", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Play the mobile app against a running server" in result.stdout


def test_production_cli_does_not_carry_it(tmp_path):
    """`flask --help` under production settings: the app's own commands, not this developer tool."""
    environ = {**PRODUCTION, "DATABASE_URL": f"sqlite:///{tmp_path}/p.sqlite"}
    flask_command = FlaskGroup(create_app=lambda: create_app(environ=environ))
    result = CliRunner().invoke(flask_command, ["--help"])
    assert result.exit_code == 0, result.output
    assert "webhooks" in result.output and "terra" in result.output
    assert "mobile-client" not in result.output


def test_backoff_has_full_jitter_and_respects_the_server():
    random.seed(7)
    backoff = Backoff(base=1, cap=8)
    delays = [backoff.next_delay(0) for _ in range(8)]
    ceilings = [min(8, 2**n) for n in range(8)]
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(delays, ceilings))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    assert Backoff(base=1, cap=8).next_delay(server_minimum=2.5) >= 2.5
