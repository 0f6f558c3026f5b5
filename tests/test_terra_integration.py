"""terra_integration/ as a part of its own: its settings, its contract with the host app, copying it into
another app (docs/copy-into-your-app.md), and living next to Terra's official SDK."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from alembic.migration import MigrationContext
from alembic.operations import Operations
from flask import Blueprint, Flask
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from extensions import db
from services.event_handlers import HANDLERS, ConnectionEvents
from terra_integration.client import TerraClient
from terra_integration.events import ACCOUNT_EVENT_KINDS
from terra_integration.extension import SETTINGS, TerraIntegration, TerraSettingsError, check_settings
from terra_integration.reference_ids import is_authentic
from terra_integration.signature import sign
from terra_integration.webhooks import bp as webhooks_bp
from tests.conftest import DEAD_TERRA, ROOT, free_port, server_process, wait_for
from tests.helpers import doc_blocks, signed, terra_settings

GUIDE = "copy-into-your-app.md"

GOOD_SETTINGS = {"TERRA_DEV_ID": "dev", "TERRA_API_KEY": "key", "TERRA_SIGNING_SECRET": "whsec"}

# One bad value per setting, and the problem the message must name it with.
BAD_SETTINGS = [
    ("TERRA_DEV_ID", "", "must be set"),
    ("TERRA_API_KEY", None, "must be set"),
    ("TERRA_SIGNING_SECRET", "", "must be set"),
    ("TERRA_API_BASE_URL", "api.tryterra.co/v2", "must be an http(s) URL"),
    ("TERRA_WIDGET_SESSION_URL", "ftp://access.tryterra.co/api/widget/session", "must be an http(s) URL"),
    ("TERRA_LEGACY_WIDGET_URL", "https://", "must be an http(s) URL"),
    ("TERRA_WIDGET_API", "v3", "must be one of session, legacy"),
    ("TERRA_TIMEOUT_SECONDS", "ten", "must be a positive number"),
    ("TERRA_PAYLOAD_TIMEOUT_SECONDS", 0, "must be a positive number"),
    ("TERRA_PAYLOAD_MAX_BYTES", 1.5, "must be a positive whole number"),
    ("TERRA_PAYLOAD_TIMEOUT_SECONDS", 60, "must be shorter than WEBHOOK_CLAIM_LEASE_SECONDS"),
    ("TERRA_PAYLOAD_ALLOW_LOOPBACK", "yes", "must be true or false"),
    ("WEBHOOK_MAX_BYTES", True, "must be a positive whole number"),
    ("WEBHOOK_TOLERANCE_SECONDS", -1, "must be a positive whole number"),
    ("WEBHOOK_APPLY_IN_PROCESS", "yes", "must be true or false"),
    ("WEBHOOK_CLAIM_LEASE_SECONDS", 0, "must be a positive number"),
    ("WEBHOOK_SWEEP_SECONDS", None, "must be a positive number"),
]


@pytest.mark.parametrize("key, value, problem", BAD_SETTINGS)
def test_each_bad_setting_is_refused_with_a_message_naming_its_key(key, value, problem):
    with pytest.raises(TerraSettingsError, match="^" + re.escape(f"{key} {problem}")):
        check_settings({**GOOD_SETTINGS, key: value})


def test_every_setting_has_a_bad_value_tried():
    assert {key for key, _, _ in BAD_SETTINGS} == set(SETTINGS)


def test_a_missing_required_setting_is_named_and_the_others_have_defaults():
    with pytest.raises(TerraSettingsError, match="^TERRA_SIGNING_SECRET must be set"):
        check_settings({"TERRA_DEV_ID": "dev", "TERRA_API_KEY": "key"})
    config = dict(GOOD_SETTINGS)
    check_settings(config)
    assert (config["TERRA_WIDGET_SESSION_URL"], config["TERRA_TIMEOUT_SECONDS"], config["WEBHOOK_MAX_BYTES"]) == (
        "https://access.tryterra.co/api/widget/session",
        10.0,
        524288,
    )


def test_the_app_handles_every_account_event_the_integration_hands_it():
    assert set(HANDLERS) == ACCOUNT_EVENT_KINDS


def test_terra_sdk_and_the_integration_in_one_process(live_server):
    """terra-python installs a package named `terra`; from the app's folder (first on sys.path, as in
    any app) it must still be the SDK, next to the integration, both talking to the sandbox."""
    import terra

    import terra_integration

    assert Path(terra.__file__).parent.parent.name == "site-packages"
    assert Path(terra_integration.__file__).parent == ROOT / "terra_integration"
    config = live_server.app.config
    sdk = terra.Terra(
        dev_id=config["TERRA_DEV_ID"], api_key=config["TERRA_API_KEY"], base_url=config["TERRA_API_BASE_URL"]
    )
    ours = TerraClient.from_config(config)
    sdk_codes = {provider.provider for provider in sdk.integrations.detailedfetch().providers}
    assert "GARMIN" in sdk_codes
    assert sdk_codes == {provider.code for provider in ours.integrations_detailed()}


def files_the_doc_lists() -> list[str]:
    doc = (ROOT / "docs" / "copy-into-your-app.md").read_text()
    block = re.search(r"^## 1\. Copy these files\n.*?```text\n(.*?)```", doc, re.DOTALL | re.MULTILINE)
    assert block, "docs/copy-into-your-app.md has no file list under '## 1. Copy these files'"
    return block.group(1).split()


def test_the_doc_lists_every_file_of_the_integration():
    package = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "terra_integration").glob("*.py"))
    assert sorted(files_the_doc_lists()) == package


SANDBOX_SECTION = "## 10. Trying your copy against the sandbox"


def assert_written_in(snippet: str, source: str) -> None:
    """`snippet`'s lines appear in `source` one after the other, as written (indentation aside)."""
    wanted = [line.strip() for line in snippet.strip().splitlines()]
    lines = [line.strip() for line in source.splitlines()]
    assert any(lines[start : start + len(wanted)] == wanted for start in range(len(lines))), snippet


def test_the_listed_files_run_in_another_app_against_the_sandbox(tmp_path):
    """Exactly the files the doc lists, copied into an empty folder with a one-file app (its own user
    model and host interface), in a process that cannot import this app, against the sandbox the guide's
    command serves, with the settings it prints: a widget session, the sandbox's signed auth webhook
    applied, then a signed deauth, its duplicate and a forgery."""
    folder = tmp_path / "customer_app"
    for name in files_the_doc_lists():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, folder / name)
    shutil.copy(ROOT / "tests" / "copy_into_app" / "tiny_host.py", folder)
    [command] = doc_blocks(GUIDE, SANDBOX_SECTION, "sh")
    [printed] = doc_blocks(GUIDE, SANDBOX_SECTION, "text")
    [connect_snippet] = doc_blocks(GUIDE, SANDBOX_SECTION, "python")
    assert_written_in(connect_snippet, (folder / "tiny_host.py").read_text())

    # The page's ports (5001 the sandbox, 8000 the app) on free ones: several test runs share a machine.
    sandbox_port, port = free_port(), free_port()

    def on_free_ports(text: str) -> str:
        return text.replace("5001", str(sandbox_port)).replace("8000", str(port))

    sandbox_url, tiny_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{port}"
    sandbox_log = tmp_path / "sandbox.log"
    # The checkout's own .env, secret key file and database stay untouched.
    sandbox_env = {
        **os.environ,
        "SECRET_KEY": "sandbox-secret-key-0123456789abcdef",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'sandbox.sqlite'}",
    }
    with server_process(
        ["bash", "-c", on_free_ports(command)],
        health_url=sandbox_url + "/healthz",
        env=sandbox_env,
        log_path=sandbox_log,
    ):
        settings = re.findall(r"^FLASK_\w+=.*$", sandbox_log.read_text(), re.MULTILINE)
        assert settings == on_free_ports(printed).splitlines()
        secret = dict(setting.split("=", 1) for setting in settings)["FLASK_TERRA_SIGNING_SECRET"]
        # No PYTHONPATH: only the copied folder (the script's own) and the installed packages are importable.
        env = {
            "PATH": str(Path(sys.executable).parent),
            "FLASK_SKIP_DOTENV": "1",
            "FLASK_SECRET_KEY": "tiny-host-secret-key-0123456789abcdef",
            "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'tiny.sqlite'}",
            **dict(setting.split("=", 1) for setting in settings),
        }
        with server_process(
            [sys.executable, "tiny_host.py", str(port)],
            health_url=tiny_url + "/healthz",
            env=env,
            log_path=tmp_path / "tiny_host.log",
            cwd=folder,
        ):
            run_the_copy(tiny_url, sandbox_url, port, secret)


def run_the_copy(tiny_url: str, sandbox_url: str, port: int, secret: str) -> None:
    """The copy, served at tiny_url, against the sandbox at sandbox_url that signs with `secret`."""
    member = requests.post(tiny_url + "/members", timeout=10).json()
    connect = requests.post(f"{tiny_url}/members/{member['id']}/connect", allow_redirects=False, timeout=10)
    assert connect.status_code == 302, connect.text
    widget_url = connect.headers["Location"]
    assert widget_url.startswith(sandbox_url + "/sandbox/")

    done = requests.post(
        widget_url + "/complete",
        json={"provider": "GARMIN", "account": "tiny-garmin", "outcome": "success"},
        timeout=10,
    )
    assert done.status_code == 200, done.text
    redirect = urlsplit(done.json()["redirect_url"])
    assert redirect.netloc == f"127.0.0.1:{port}" and redirect.path == "/connected"
    terra_user_id = parse_qs(redirect.query)["user_id"][0]

    def linked_user():
        return requests.get(f"{tiny_url}/members/{member['id']}", timeout=10).json()["terra_user_id"]

    assert wait_for(linked_user) == terra_user_id  # the sandbox's signed auth webhook, applied

    deauth = json.dumps(
        {
            "type": "deauth",
            "status": "success",
            "reference_id": member["reference_id"],
            "user": {"user_id": terra_user_id, "provider": "GARMIN", "reference_id": member["reference_id"]},
        }
    ).encode()
    trace_id = str(uuid.uuid4())

    def post(signature: str) -> requests.Response:
        return requests.post(
            tiny_url + "/webhooks/terra",
            data=deauth,
            timeout=10,
            headers={
                "terra-signature": signature,
                "X-Terra-Trace-Id": trace_id,
                "Content-Type": "application/json",
            },
        )

    assert post(sign(deauth, "not-the-secret")).status_code == 401
    assert linked_user() == terra_user_id
    assert post(sign(deauth, secret)).json() == {"status": "received", "trace_id": trace_id}
    assert wait_for(lambda: linked_user() is None)  # applied by the tiny app's applier thread
    assert post(sign(deauth, secret)).json() == {"status": "duplicate", "trace_id": trace_id}


def test_a_host_with_its_own_webhooks_blueprint_renames_the_integrations_as_the_guide_shows(app, database_uri):
    """The guide's step 5 snippet, as written, in a host that has a `webhooks` blueprint (and Flask-WTF's
    CSRF protection): Terra's webhook is received under the new prefix, the host's own keeps its CSRF check.
    `app` empties the tables afterwards."""
    [snippet] = [block for block in doc_blocks(GUIDE, "## 5.", "python") if "webhook_blueprint_name" in block]
    host_app = Flask("host_with_webhooks")
    host_app.config.update(
        SECRET_KEY="host-secret-key-0123456789abcdef",
        SQLALCHEMY_DATABASE_URI=database_uri,
        WEBHOOK_APPLY_IN_PROCESS=False,
        **terra_settings(DEAD_TERRA),
    )
    stripe = Blueprint("webhooks", __name__, url_prefix="/webhooks")
    stripe.add_url_rule("/stripe", "stripe_event", lambda: {"status": "ok"}, methods=["POST"])
    host_app.register_blueprint(stripe)
    csrf = CSRFProtect(host_app)
    db.init_app(host_app)
    names = {"app": host_app, "terra": TerraIntegration(), "MyTerraHost": ConnectionEvents, "csrf": csrf}
    exec(snippet, {**names, "terra_webhooks": webhooks_bp})  # noqa: S102 (the page's own code)

    client = host_app.test_client()
    body, headers = signed({"type": "activity", "user": {"user_id": "u-1"}, "data": []}, secret="test-secret")
    received = client.post("/terra/terra", data=body, headers=headers)
    assert received.status_code == 200 and received.json["status"] == "received", received.text
    assert client.post("/webhooks/stripe").status_code == 400  # the CSRF token is missing
    with host_app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_guides_reference_id_migration_runs_on_a_table_that_has_users(request, tmp_path, dialect):
    """Step 2's migration, as the page writes it, on a table that already has users (PostgreSQL, where a
    required column added in one step fails; SQLite, through the batch mode the page uses): each user
    gets a signed id of its own, the column ends required and unique, and downgrade removes it."""
    [migration] = [block for block in doc_blocks(GUIDE, "## 2.", "python") if "def upgrade" in block]
    uri = (
        request.getfixturevalue("postgres_database") if dialect == "postgresql" else f"sqlite:///{tmp_path}/host.sqlite"
    )
    engine = create_engine(uri)
    users = Table("users", MetaData(), Column("id", Integer, primary_key=True), Column("email", String(255)))
    with engine.begin() as connection:
        users.create(connection)
        connection.execute(users.insert(), [{"email": "ada@example.com"}, {"email": "bob@example.com"}])
    host_app = Flask("host_with_users")
    host_app.config["SECRET_KEY"] = "host-secret-key-0123456789abcdef"
    revision: dict = {}
    exec(migration, revision)  # noqa: S102 (the page's own code)

    def run(step: str) -> None:
        with (
            host_app.app_context(),
            engine.begin() as connection,
            Operations.context(MigrationContext.configure(connection)),
        ):
            revision[step]()

    run("upgrade")
    with engine.connect() as connection:
        reference_ids = connection.execute(text("SELECT reference_id FROM users")).scalars().all()
        add_user = text("INSERT INTO users (email, reference_id) VALUES ('cy@example.com', :reference_id)")
        for reference_id, problem in [(None, "(?i)null"), (reference_ids[0], "(?i)unique")]:
            with pytest.raises(IntegrityError, match=problem):
                connection.execute(add_user, {"reference_id": reference_id})
            connection.rollback()
    assert len(set(reference_ids)) == 2
    with host_app.app_context():
        assert all(is_authentic(reference_id) for reference_id in reference_ids)
    run("downgrade")
    assert "reference_id" not in {column["name"] for column in inspect(engine).get_columns("users")}
    engine.dispose()
