"""terra_integration/ as a part of its own: its settings, its contract with the host app, copying it into
another app (docs/copy-into-your-app.md), and living next to Terra's official SDK."""

from __future__ import annotations

import json
import re
import shutil
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from services.event_handlers import HANDLERS
from terra_integration.client import TerraClient
from terra_integration.events import ACCOUNT_EVENT_KINDS
from terra_integration.extension import SETTINGS, TerraSettingsError, check_settings
from terra_integration.signature import sign
from tests.conftest import ROOT, free_port, server_process, wait_for

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


def test_the_listed_files_run_in_another_app_against_the_sandbox(start_live_server, tmp_path):
    """Exactly the files the doc lists, copied into an empty folder with a one-file app (its own user
    model and host interface), in a process that cannot import this app: a widget session, the
    sandbox's signed auth webhook applied, then a signed deauth, its duplicate and a forgery."""
    folder = tmp_path / "customer_app"
    for name in files_the_doc_lists():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, folder / name)
    shutil.copy(ROOT / "tests" / "copy_into_app" / "tiny_host.py", folder)

    port = free_port()
    tiny_url = f"http://127.0.0.1:{port}"
    sandbox = start_live_server(SANDBOX_WEBHOOK_URL=tiny_url + "/webhooks/terra")
    secret = sandbox.app.config["TERRA_SIGNING_SECRET"]
    settings = {
        "FLASK_SECRET_KEY": "tiny-host-secret-key-0123456789abcdef",
        "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'tiny.sqlite'}",
        "FLASK_TERRA_DEV_ID": sandbox.app.config["TERRA_DEV_ID"],
        "FLASK_TERRA_API_KEY": sandbox.app.config["TERRA_API_KEY"],
        "FLASK_TERRA_SIGNING_SECRET": secret,
        "FLASK_TERRA_API_BASE_URL": sandbox.app.config["TERRA_API_BASE_URL"],
        "FLASK_TERRA_WIDGET_SESSION_URL": sandbox.app.config["TERRA_WIDGET_SESSION_URL"],
    }
    # No PYTHONPATH: only the copied folder (the script's own) and the installed packages are importable.
    env = {"PATH": str(Path(sys.executable).parent), "FLASK_SKIP_DOTENV": "1", **settings}
    with server_process(
        [sys.executable, "tiny_host.py", str(port)],
        health_url=tiny_url + "/healthz",
        env=env,
        log_path=tmp_path / "tiny_host.log",
        cwd=folder,
    ):
        member = requests.post(tiny_url + "/members", timeout=10).json()
        widget_url = requests.post(f"{tiny_url}/members/{member['id']}/connect", timeout=10).json()["url"]
        assert widget_url.startswith(sandbox.url + "/sandbox/")

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
