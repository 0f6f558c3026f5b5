"""Clients generated from docs/openapi.json, as mobile teams generate them (docs/mobile.md, "Generated
clients").

- The Python client (openapi-python-client, pinned in requirements-dev.in) is generated and the whole
  flow runs through it against the app and its Terra sandbox over real HTTP: sign in, start an
  attempt, long-poll without handling 304, finish the widget, see `connected`, list and disconnect,
  the error bodies, sign out.
- The Kotlin and Swift clients are generated with openapi-generator's jar (inside the pinned
  `openapi-generator-cli` package; Java from Debian, `make test` installs it). Generation must give no
  warning but the 3.1 beta notice, and must produce the named types with a case for unknown enum values.
- The TypeScript sample (tests/typescript_client/flow.ts) gets its types from openapi-typescript and
  calls through openapi-fetch (the packages pinned in its package-lock.json, installed with `npm ci`;
  Node and npm from Debian, `make test` installs them): it is type-checked with `tsc --strict` and runs
  the flow against the app, 304 included; a field renamed in the document fails the check.
- The 304 and ETag snippets of docs/mobile.md: the TypeScript one is the sample's, the Python one runs,
  the Kotlin and Swift ones call what the generator makes.

Generating is slow, so each generator (and `npm ci`) runs once per test session (module-scoped
fixtures), into a temporary directory.
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

from tests.conftest import ROOT, Browser
from tests.helpers import doc_blocks
from tools import openapi_30

VENV_BIN = Path(sys.executable).parent
DOCUMENT = openapi_30.SOURCE
PASSWORD = "correct horse battery"
PACKAGE = "terra_connect_client"
GUIDE, GENERATED_CLIENTS = "mobile.md", "### Generated clients"
# The one warning openapi-generator 7 gives for every OpenAPI 3.1 document.
BETA_NOTICE = "OpenAPI 3.1 support is still in beta"
UNKNOWN_CASES = {"kotlin": "unknown_default_open_api", "swift6": "unknownDefaultOpenApi"}


def run(command: list[str], *, cwd: Path | None = None, succeeds: bool = True, **environ: str) -> str:
    """Run a generator or a tool; its combined output, once it succeeded (or failed, with
    `succeeds=False`). PATH leads with the venv's bin: openapi-python-client formats its output with
    the venv's ruff."""
    environment = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **environ}
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == succeeds, f"{' '.join(command)} exited {result.returncode}:\n{output}"
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


def documented_python_poll():
    """The poll of docs/mobile.md's "Generated clients", as a reader copies it (the generated package
    must be importable)."""
    [snippet] = doc_blocks(GUIDE, GENERATED_CLIENTS, "python")
    namespace: dict = {}
    exec(compile(snippet, "docs/mobile.md", "exec"), namespace)  # noqa: S102 (the page's own code)
    return namespace["poll"]


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
    # The guide's poll does the same, and hands back the state and the ETag of a 200.
    poll = documented_python_poll()
    assert poll(client, attempt_id, etag, 1) is None
    current, seen = poll(client, attempt_id, None, 0)
    assert (current.version, seen) == (pending.version, etag)

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

    newer, newer_etag = poll(client, attempt_id, etag, 0)  # an older ETag is answered at once
    assert (newer.version, newer_etag) == (state.version, f'"{state.version}"')

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


def sources(directory: Path) -> str:
    return "\n".join(
        path.read_text(encoding="utf-8") for path in directory.rglob("*") if path.suffix in (".kt", ".swift")
    )


# What the guide's Kotlin and Swift polls rely on besides the calls: a 304 is no success (Kotlin's
# falls to ServerError, as OkHttp's isRedirect leaves it out; Swift's is thrown with its status), and
# where the ETag is (OkHttp's toMultimap lowercases header names, hence the guide's headers["etag"]).
GENERATED_FOR_THE_POLL = {
    "kotlin": (
        r"class Success<T>\(\s*val data: T",
        r"abstract val statusCode: Int\s+abstract val headers: Map<String,\s*List<String>>",
        r"it\.isClientError -> ClientError\((?:[^()]|\(\))*\)\s*else -> ServerError\(",
        r"it\.headers\.toMultimap\(\)",
    ),
    "swift6": (
        r"case error\(Int, Data\?, URLResponse\?, Error\)",
        r"public let header: \[String: String\]\s+public let body: T",
        r"func execute\(\) async throws\(ErrorResponse\) -> Response<T>",
    ),
}


@pytest.mark.parametrize(("language", "fence"), [("kotlin", "kotlin"), ("swift6", "swift")])
def test_the_guides_poll_calls_what_openapi_generator_makes(openapi_generator, language, fence):
    directory, _ = openapi_generator(language)
    generated_code = sources(directory)
    [snippet] = doc_blocks(GUIDE, GENERATED_CLIENTS, fence)
    calls = re.findall(r"\b(getConnectAttempt\w*)\(([^()]*)\)", snippet)
    assert calls, snippet
    for method, arguments in calls:
        declaration = re.search(rf"\bfunc? {method}\(([^)]*)\)", generated_code)
        assert declaration, f"the generated {language} client has no {method}"
        parameters = re.findall(r"(\w+)\s*:", declaration.group(1))
        named = re.findall(r"(\w+)\s*[=:]\s", arguments)  # Kotlin's `name = value`, Swift's `name: value`
        assert named and set(named) <= set(parameters), (method, named, parameters)
    for pattern in GENERATED_FOR_THE_POLL[language]:
        assert re.search(pattern, generated_code), pattern


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


# -- TypeScript (openapi-typescript + openapi-fetch, the React Native path) ---------------------------

TYPESCRIPT_SAMPLE = ROOT / "tests" / "typescript_client"
TYPESCRIPT_FILES = ("package.json", "package-lock.json", "tsconfig.json", "flow.ts")
# The part of flow.ts that docs/mobile.md shows, between these two comment lines.
SNIPPET_START, SNIPPET_END = "// docs/mobile.md: poll\n", "// docs/mobile.md: end\n"


@pytest.fixture(scope="module")
def typescript_project(tmp_path_factory) -> Path:
    """The sample's folder, copied to a temporary directory with its pinned packages installed (once)."""
    assert shutil.which("npm"), "the TypeScript check needs Node and npm: `make test` installs Debian's"
    directory = tmp_path_factory.mktemp("typescript-client")
    for name in TYPESCRIPT_FILES:
        shutil.copy(TYPESCRIPT_SAMPLE / name, directory / name)
    # Exactly the lock's versions; no package's install script runs.
    run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=directory)
    return directory


def type_check(project: Path, document: Path, *, succeeds: bool = True) -> str:
    """Generate the types from `document` into the project (api.ts), compile flow.ts with `tsc --strict`;
    tsc's output."""
    tools = project / "node_modules" / ".bin"
    generating = run(
        [str(tools / "openapi-typescript"), str(document), "--output", str(project / "api.ts")], cwd=project
    )
    assert not re.search(r"(?i)warn|error", generating.replace(str(document), "").replace(str(project), "")), generating
    return run([str(tools / "tsc"), "--project", str(project), "--strict"], cwd=project, succeeds=succeeds)


def test_the_typescript_sample_runs_the_whole_flow(live_server, typescript_project):
    type_check(typescript_project, DOCUMENT)
    Browser(live_server.url).register(email="ada@example.com", password=PASSWORD)
    output = run(
        ["node", str(typescript_project / "build" / "flow.js")],
        cwd=typescript_project,
        TERRA_CONNECT_URL=live_server.url,
        TERRA_CONNECT_EMAIL="ada@example.com",
        TERRA_CONNECT_PASSWORD=PASSWORD,
    )
    assert output.splitlines() == [
        "signed in",
        "attempt pending, version 1",
        "not modified",  # the 304 after If-None-Match, told apart from an error
        "connected GARMIN, hint returned_success",
    ], output


def test_the_typescript_sample_fails_its_type_check_when_the_api_document_renames_a_field(typescript_project, tmp_path):
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    attempt = document["components"]["schemas"]["Attempt"]
    attempt["properties"]["finished"] = attempt["properties"].pop("terminal")
    attempt["required"] = ["finished" if name == "terminal" else name for name in attempt["required"]]
    renamed = tmp_path / "openapi.json"
    renamed.write_text(json.dumps(document), encoding="utf-8")
    output = type_check(typescript_project, renamed, succeeds=False)
    assert re.search(r"flow\.ts\(\d+,\d+\): error TS\d+: Property 'terminal' does not exist", output), output


def test_the_typescript_poll_in_the_mobile_guide_is_the_samples():
    sample = (TYPESCRIPT_SAMPLE / "flow.ts").read_text(encoding="utf-8")
    assert sample.count(SNIPPET_START) == sample.count(SNIPPET_END) == 1
    shown = sample.partition(SNIPPET_START)[2].partition(SNIPPET_END)[0]
    assert doc_blocks(GUIDE, GENERATED_CLIENTS, "ts") == [shown]
