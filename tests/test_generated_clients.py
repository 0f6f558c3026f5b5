"""Clients generated from docs/openapi.json, as mobile teams generate them (docs/mobile.md, "Generated
clients").

- The Python client (openapi-python-client, pinned in requirements-dev.in) is generated and the whole
  flow runs through it against the app and its Terra sandbox over real HTTP: sign in, start an
  attempt, long-poll without handling 304, finish the widget, see `connected`, list and disconnect,
  the error bodies, sign out.
- The Kotlin and Swift clients are generated with openapi-generator's jar (inside the pinned
  `openapi-generator-cli` package; Java from Debian, `make test` installs it). Generation must give no
  warning but the 3.1 beta notice, and must produce the named types with a case for unknown enum values.

Generating is slow, so each generator runs once per test session (module-scoped fixtures), into a
temporary directory.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import requests

from tests.conftest import Browser
from tools import openapi_30

VENV_BIN = Path(sys.executable).parent
DOCUMENT = openapi_30.SOURCE
PASSWORD = "correct horse battery"
PACKAGE = "terra_connect_client"
# The one warning openapi-generator 7 gives for every OpenAPI 3.1 document.
BETA_NOTICE = "OpenAPI 3.1 support is still in beta"
UNKNOWN_CASES = {"kotlin": "unknown_default_open_api", "swift6": "unknownDefaultOpenApi"}


def run(command: list[str]) -> str:
    """Run a generator; its combined output. PATH leads with the venv's bin: openapi-python-client
    formats its output with the venv's ruff."""
    environment = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return output


# -- Python ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def python_client(tmp_path_factory) -> ModuleType:
    root = tmp_path_factory.mktemp("python-client")
    output = run(
        [
            str(VENV_BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(DOCUMENT),
            "--output-path",
            str(root / PACKAGE),
            "--meta",
            "none",
        ]
    )
    assert "Warning" not in output and "Error" not in output, output
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def generated(package: ModuleType, module: str) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.{module}")


def test_the_python_client_has_the_named_types(python_client):
    models = generated(python_client, "models")
    for name in ("ApiError", "ErrorDetail", "AttemptStatus", "AttemptHint", "ConnectionStatus", "ReturnMode"):
        assert hasattr(models, name), f"the generated client has no {name}"
    assert not hasattr(models, "Error")
    schemas = json.loads(DOCUMENT.read_text(encoding="utf-8"))["components"]["schemas"]
    for enum in ("AttemptStatus", "AttemptHint", "ConnectionStatus"):
        assert {member.value for member in getattr(models, enum)} == set(schemas[enum]["enum"]), enum


def test_the_whole_flow_through_the_generated_python_client(live_server, python_client):
    import httpx  # the generated client's HTTP library

    models = generated(python_client, "models")
    api = {
        name: generated(python_client, f"api.{group}.{name}")
        for group, names in {
            "tokens": ("create_token", "revoke_current_token"),
            "connect_attempts": ("create_connect_attempt", "get_connect_attempt", "report_browser_closed"),
            "connections": ("list_connections", "disconnect_connection"),
        }.items()
        for name in names
    }
    base_url = live_server.url + "/api/v1"
    timeout = httpx.Timeout(40.0)  # above the longest ?wait=
    Browser(live_server.url).register(email="ada@example.com", password=PASSWORD)

    anonymous = python_client.Client(base_url=base_url, timeout=timeout)
    refused = api["create_token"].sync(
        client=anonymous, body=models.TokenRequest(email="ada@example.com", password="no")
    )
    assert isinstance(refused, models.ApiError) and refused.error.code == "invalid_credentials"
    token = api["create_token"].sync(client=anonymous, body=models.TokenRequest("ada@example.com", PASSWORD))
    assert isinstance(token, models.Token) and token.expires_in > 0
    client = python_client.AuthenticatedClient(base_url=base_url, token=token.access_token, timeout=timeout)

    created = api["create_connect_attempt"].sync_detailed(
        client=client, body=models.AttemptRequest(providers=["GARMIN"], language="en")
    )
    assert created.status_code == 201 and created.headers["Location"] == created.parsed.status_url
    attempt_id = created.parsed.attempt_id

    pending = api["get_connect_attempt"].sync(attempt_id, client=client)
    assert pending.status == models.AttemptStatus.PENDING and pending.hint is None and pending.terminal is False
    # A long poll without If-None-Match that sees no change: 200 with the unchanged state, so a
    # generated client long-polls without handling 304.
    unchanged = api["get_connect_attempt"].sync_detailed(attempt_id, client=client, wait=1)
    assert unchanged.status_code == 200 and unchanged.parsed.version == pending.version
    # With If-None-Match the same wait ends in 304; `sync` has no model for it (None), `sync_detailed`
    # says so with the status (docs/mobile.md: how each generated client handles 304).
    etag = unchanged.headers["ETag"]
    not_modified = api["get_connect_attempt"].sync_detailed(attempt_id, client=client, wait=1, if_none_match=etag)
    assert (not_modified.status_code, not_modified.parsed) == (304, None)

    widget = requests.post(
        created.parsed.url + "/complete",
        json={"provider": "GARMIN", "account": "ada", "outcome": "success"},
        timeout=10,
    )
    assert widget.status_code == 200, widget.text
    assert requests.get(widget.json()["redirect_url"], timeout=10).status_code == 200  # the return page

    state = pending
    for _ in range(20):  # each long poll ends with news, or after 5 s with the state unchanged
        state = api["get_connect_attempt"].sync(attempt_id, client=client, wait=5)
        if state.terminal:
            break
    assert (state.status, state.hint) == (models.AttemptStatus.CONNECTED, models.AttemptHint.RETURNED_SUCCESS)
    assert state.connection.status == models.ConnectionStatus.ACTIVE and state.error is None
    assert state.updated_at >= pending.updated_at and state.version > pending.version

    closed = api["report_browser_closed"].sync_detailed(attempt_id, client=client)
    assert closed.status_code == 202 and closed.parsed.version == state.version  # a finished attempt stays

    listed = api["list_connections"].sync(client=client)
    assert [(row.id, row.status) for row in listed.connections] == [
        (state.connection.id, models.ConnectionStatus.ACTIVE)
    ]
    disconnected = api["disconnect_connection"].sync(state.connection.id, client=client)
    assert (disconnected.status, disconnected.status_reason) == (models.ConnectionStatus.REVOKED, "disconnected")

    missing = api["get_connect_attempt"].sync("no-such-attempt", client=client)
    assert isinstance(missing, models.ApiError) and missing.error.code == "not_found"
    bad_wait = api["get_connect_attempt"].sync(attempt_id, client=client, wait=99)
    assert isinstance(bad_wait, models.ApiError) and bad_wait.error.code == "invalid_wait"

    assert api["revoke_current_token"].sync_detailed(client=client).status_code == 204
    signed_out = api["list_connections"].sync(client=client)
    assert isinstance(signed_out, models.ApiError) and signed_out.error.code == "invalid_token"


# -- Kotlin and Swift (openapi-generator) -------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi_generator(tmp_path_factory):
    """Generate one language's client, once: (its output directory, the generator's warnings)."""
    assert shutil.which("java"), "openapi-generator needs Java: `make test` installs Debian's default-jre-headless"
    made: dict[str, tuple[Path, list[str]]] = {}

    def generate(language: str) -> tuple[Path, list[str]]:
        if language not in made:
            directory = tmp_path_factory.mktemp(f"{language}-client")
            output = run(
                [
                    str(VENV_BIN / "openapi-generator-cli"),
                    "generate",
                    "--generator-name",
                    language,
                    "--input-spec",
                    str(DOCUMENT),
                    "--output",
                    str(directory),
                    "--additional-properties",
                    "enumUnknownDefaultCase=true",
                ]
            )
            warnings = [line for line in output.splitlines() if re.search(r"\b(WARN|ERROR)\b", line)]
            made[language] = directory, warnings
        return made[language]

    return generate


@pytest.mark.parametrize("language", ["kotlin", "swift6"])
def test_openapi_generator_gives_no_warning_but_the_3_1_notice(openapi_generator, language):
    _, warnings = openapi_generator(language)
    assert [line for line in warnings if BETA_NOTICE not in line] == []
    assert any(BETA_NOTICE in line for line in warnings)  # what is filtered out is really there


def model_source(directory: Path, name: str) -> str:
    [path] = [path for path in directory.rglob(f"{name}.*") if path.suffix in (".kt", ".swift")]
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("language", ["kotlin", "swift6"])
def test_openapi_generator_makes_the_named_types_and_an_unknown_enum_case(openapi_generator, language):
    directory, _ = openapi_generator(language)
    models = {
        path.stem
        for path in directory.rglob("*")
        if path.suffix in (".kt", ".swift") and path.parent.name.lower() == "models"
    }
    assert {"ApiError", "ErrorDetail", "Attempt", "AttemptStatus", "AttemptHint", "ConnectionStatus"} <= models
    assert "ModelError" not in models and not any(name.endswith("_error") for name in models), models
    for enum in ("AttemptStatus", "AttemptHint", "ConnectionStatus"):
        assert UNKNOWN_CASES[language] in model_source(directory, enum), f"{enum} has no case for unknown values"
    attempt = model_source(directory, "Attempt")
    # One shared type per field, and no `Any` where a 3.1-only construct was not understood.
    assert re.search(r"\bhint: AttemptHint\?", attempt) and re.search(r"\berror: ErrorDetail\?", attempt), attempt
    assert "Any" not in re.sub(r"(?s)/\*.*?\*/|//[^\n]*", "", attempt)
