"""The sandbox against Terra's own OpenAPI files: every REST answer and every webhook body it sends
must validate against the schema Terra publishes for it, with the content type the spec declares.
Where the sandbox knowingly differs (a newer spec, an older host, a switch position), the table
"Where the sandbox still differs from Terra" in docs/sandbox.md must list it: the tests read that
table, check that each row still holds, and fail on a difference it does not list.

The files are Terra's (tryterra/openapi `dist/core/v2-bundled.yaml` and `widget-bundled.yaml`), copied
unchanged into tests/terra_openapi/ (its README: their source commit, versions and licences).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.exceptions import HTTPException

from sandbox.faults import ALL_FAULTS
from sandbox.settings import SandboxSettings
from tests.conftest import ROOT
from tests.test_sandbox import WebhookReceiver, complete, connect, deliveries_finished, new_session, query_of

SPECS = Path(__file__).resolve().parent / "terra_openapi"
V2, WIDGET = "urn:terra:v2", "urn:terra:widget"


@cache
def registry() -> Registry:
    documents = {V2: "v2-bundled.yaml", WIDGET: "widget-bundled.yaml"}
    return Registry().with_resources(
        (uri, Resource.from_contents(yaml.safe_load((SPECS / name).read_text()), default_specification=DRAFT202012))
        for uri, name in documents.items()
    )


def pointer(*parts: str) -> str:
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def assert_matches(instance, uri: str, *parts: str) -> None:
    validator = Draft202012Validator({"$ref": uri + "#" + pointer(*parts)}, registry=registry())
    problems = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(instance)
    ]
    assert not problems, problems
    # The schemas leave extra keys open; a key the spec does not name is a difference all the same.
    declared = declared_keys(uri, {"$ref": "#" + pointer(*parts)})
    if isinstance(instance, dict) and declared:
        for key in sorted(set(instance) - declared):
            known_difference(UNDECLARED_KEYS.get(key, f"the key {key!r} (not in the spec)"))


def declared_keys(uri: str, schema: dict) -> set[str]:
    """The top-level keys `schema` names, through $ref, allOf, oneOf and anyOf."""
    if "$ref" in schema:
        return declared_keys(uri, registry().resolver(base_uri=uri).lookup(schema["$ref"]).contents)
    names = set(schema.get("properties", {}))
    for combined in ("allOf", "oneOf", "anyOf"):
        for branch in schema.get(combined, []):
            names |= declared_keys(uri, branch)
    return names


def spec_part(uri: str, *parts: str):
    part = registry()[uri].contents
    for name in parts:
        part = part[name]
    return part


def assert_response(response, uri: str, path: str, method: str, status: int) -> None:
    """The answer has the status, a content type the spec declares for it, and that content's schema."""
    assert response.status_code == status, response.get_data(as_text=True)
    operation: tuple[str, ...] = ("paths", path, method, "responses", str(status))
    reference = spec_part(uri, *operation).get("$ref")
    if reference:  # a shared answer, e.g. #/components/responses/NotFound
        operation = tuple(reference.removeprefix("#/").split("/"))
    declared = spec_part(uri, *operation)["content"]
    assert response.mimetype in declared, (
        f"{path} {status} answered {response.mimetype}, the spec says {list(declared)}"
    )
    assert_matches(response.get_json(force=True), uri, *operation, "content", response.mimetype, "schema")


def assert_problem(response, status: int) -> None:
    """An error from Terra's newer host that its path does not declare: the spec's rule for every 4xx
    and 5xx, problem details as application/problem+json."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert_matches(response.get_json(force=True), V2, "components", "schemas", "Problem")


def assert_legacy_error(response, status: int) -> None:
    """An error from Terra's older host (/v2): `{status, message}` as application/json, the older spec's
    shape, which the current spec (of the newer host) does not describe."""
    known_difference("legacy-host-errors")
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"status", "message"} and body["status"] == "error" and body["message"]


# -- the differences docs/sandbox.md lists ------------------------------------------------------------

SANDBOX_PAGE = ROOT / "docs" / "sandbox.md"
DIFFERENCES_HEADING = "## Where the sandbox still differs from Terra"
# Every row of that table, each checked below by the test that meets it: a row nobody checks is stale.
CHECKED_DIFFERENCES = frozenset(
    {
        "widget-session-warnings",
        "auth-event-version",
        "widget-session-201",
        "failure-redirect-detailed",
        "deauth-webhook",
        "auth-error-shape",
        "userinfo-object",
        "legacy-host-errors",
        "html-405",
        "reference-id-limit",
        "redirect-url-checks",
        "sandbox-urls",
        "faults",
        "unserved-paths",
    }
)


# Top-level keys the sandbox sends that the spec's schemas do not name, and the row that lists each.
UNDECLARED_KEYS = {"warnings": "widget-session-warnings", "users": "userinfo-object", "version": "auth-event-version"}


@cache
def listed_differences() -> dict[str, str]:
    """The table's rows by name (the first column, in backticks)."""
    section = SANDBOX_PAGE.read_text().split(DIFFERENCES_HEADING + "\n", 1)[1].split("\n## ", 1)[0]
    rows = (re.match(r"\| `([^`]+)` \|", line) for line in section.splitlines())
    return {row[1]: row.string for row in rows if row}


def known_difference(name: str) -> str:
    """The sandbox differs from Terra's spec here: allowed only while docs/sandbox.md lists it. Returns the row."""
    assert name in CHECKED_DIFFERENCES, f"{name}: add it to CHECKED_DIFFERENCES and to docs/sandbox.md"
    assert name in listed_differences(), f"the sandbox differs from Terra ({name}), and docs/sandbox.md does not say so"
    return listed_differences()[name]


@pytest.fixture
def webhooks(app, stub_server):
    receiver = WebhookReceiver(stub_server)
    app.config.update(SANDBOX_WEBHOOK_URL=receiver.url, SANDBOX_WEBHOOK_RETRY_BASE_SECONDS=0.01)
    with deliveries_finished():
        yield receiver


@pytest.fixture
def headers(app):
    return {"dev-id": app.config["TERRA_DEV_ID"], "x-api-key": app.config["TERRA_API_KEY"]}


# -- REST answers -----------------------------------------------------------------------------------


def test_the_copied_spec_files_are_the_ones_their_readme_names():
    """The project carries the files it tests against; its README's table names each file's version and hash."""
    readme = (SPECS / "README.md").read_text()
    for name in ("v2-bundled.yaml", "widget-bundled.yaml"):
        row = re.search(
            rf"^\| `{re.escape(name)}` \|.*\| `([0-9.]+)` \|.*\| `([0-9a-f]{{64}})` \|$", readme, re.MULTILINE
        )
        assert row, f"tests/terra_openapi/README.md has no row for {name}"
        content = (SPECS / name).read_bytes()
        assert yaml.safe_load(content)["info"]["version"] == row.group(1)
        assert hashlib.sha256(content).hexdigest() == row.group(2)


WIDGET_SESSION = ("/widget/api/session", "post")


@pytest.mark.parametrize("status", [200, 201])
def test_widget_session_answers_match_the_widget_spec(app, client, headers, status):
    app.config["SANDBOX_WIDGET_SESSION_STATUS"] = status
    response = client.post("/sandbox/widget/api/session", json={"providers": "GARMIN,NOPE"}, headers=headers)
    if status == 201:
        known_difference("widget-session-201")
        assert response.status_code == 201
        response.status_code = 200  # otherwise the spec's 200 answer: checked as one
    assert_response(response, WIDGET, *WIDGET_SESSION, 200)  # `warnings` is a listed difference
    assert response.get_json()["warnings"]

    refused = client.post("/sandbox/widget/api/session", json={}, headers={"dev-id": "nobody", "x-api-key": "x"})
    assert_response(refused, WIDGET, *WIDGET_SESSION, 403)
    too_long = client.post("/sandbox/widget/api/session", json={"reference_id": "r" * 256}, headers=headers)
    assert_response(too_long, WIDGET, *WIDGET_SESSION, 400)
    assert known_difference("reference-id-limit")
    unsafe = client.post(
        "/sandbox/widget/api/session", json={"auth_success_redirect_url": "javascript:alert(1)"}, headers=headers
    )
    assert_response(unsafe, WIDGET, *WIDGET_SESSION, 400)
    assert known_difference("redirect-url-checks")


def error_text(response) -> str:
    body = response.get_json(force=True)
    return body.get("message") or body.get("detail") or ""


@pytest.mark.parametrize(
    "path, spec",
    [
        ("/sandbox/widget/api/session", (WIDGET, *WIDGET_SESSION)),
        ("/sandbox/api/v2/auth/generateWidgetSession", (V2, "/auth/generateWidgetSession", "post")),
        ("/sandbox/v2/auth/generateWidgetSession", None),
    ],
)
def test_providers_is_a_comma_separated_string_and_a_list_is_refused(client, headers, path, spec):
    # Terra's spec types `providers` as a string (its older SDKs joined a list with commas): the sandbox
    # refuses an array, so code sending one fails here as it would at Terra (docs/sandbox.md says so).
    listed = client.post(path, json={"providers": ["GARMIN", "OURA"]}, headers=headers)
    if spec:
        assert_response(listed, *spec, 400)
    else:
        assert_legacy_error(listed, 400)
    assert "comma-separated" in error_text(listed)
    joined = client.post(path, json={"providers": "GARMIN,OURA"}, headers=headers)
    assert joined.status_code == 200
    picker = client.get(urlsplit(joined.get_json()["url"]).path).get_data(as_text=True)
    assert 'data-provider="GARMIN"' in picker and 'data-provider="OURA"' in picker


@pytest.mark.parametrize("prefix", ["/sandbox/v2", "/sandbox/api/v2"])
def test_rest_answers_match_the_v2_spec(client, headers, webhooks, prefix):
    legacy = client.post(prefix + "/auth/generateWidgetSession", json={"reference_id": "ref-1"}, headers=headers)
    assert_response(legacy, V2, "/auth/generateWidgetSession", "post", 200)
    started = client.post(
        prefix + "/auth/authenticateUser?resource=OURA", json={"reference_id": "ref-1"}, headers=headers
    )
    assert_response(started, V2, "/auth/authenticateUser", "post", 200)
    user_id = connect(client, headers, account="contract")
    assert_response(
        client.get(prefix + "/userInfo", query_string={"user_id": user_id}, headers=headers),
        V2,
        "/userInfo",
        "get",
        200,
    )
    assert_response(
        client.get(prefix + "/userInfo", query_string={"reference_id": "ref-1"}, headers=headers),
        V2,
        "/userInfo",
        "get",
        200,
    )
    # The spec's two answers are a `oneOf` of objects with no required keys, so `{"users": [...]}` matches
    # both and fails `oneOf` itself: checked against the unpaginated branch, the one the sandbox sends.
    listing = client.get(prefix + "/subscriptions", headers=headers)
    assert listing.status_code == 200 and listing.get_json()["users"]
    assert_matches(
        listing.get_json(),
        V2,
        "paths",
        "/subscriptions",
        "get",
        "responses",
        "200",
        "content",
        "application/json",
        "schema",
        "oneOf",
        "0",
    )
    assert_response(client.get(prefix + "/integrations"), V2, "/integrations", "get", 200)
    assert_response(
        client.get(prefix + "/integrations/detailed", query_string={"sdk": "true"}, headers=headers),
        V2,
        "/integrations/detailed",
        "get",
        200,
    )
    deleted = client.delete(prefix + "/auth/deauthenticateUser", query_string={"user_id": user_id}, headers=headers)
    assert_response(deleted, V2, "/auth/deauthenticateUser", "delete", 200)
    assert [event["type"] for event in webhooks.events(2)] == ["auth", "deauth"]


# (method, path under the host, request, status, the spec's path when it declares that answer)
ERROR_CASES = [
    ("GET", "/userInfo", {"query_string": {"user_id": "nobody"}}, 404, "/userInfo"),
    ("GET", "/userInfo", {}, 400, "/userInfo"),
    ("POST", "/auth/authenticateUser", {}, 400, "/auth/authenticateUser"),
    ("POST", "/auth/authenticateUser", {"query_string": {"resource": "NOPE"}}, 404, "/auth/authenticateUser"),
    ("DELETE", "/auth/deauthenticateUser", {"query_string": {"user_id": "nobody"}}, 404, "/auth/deauthenticateUser"),
    ("GET", "/subscriptions", {"credentials": False}, 401, None),
    ("GET", "/integrations", {"headers": {"X-Sandbox-Fault": "5xx"}}, 503, None),
    ("POST", "/auth/generateWidgetSession", {"json": {}, "legacy_gone": True}, 410, None),
]


@pytest.mark.parametrize("method, path, sent, status, spec_path", ERROR_CASES)
@pytest.mark.parametrize("prefix", ["/sandbox/api/v2", "/sandbox/v2"])
def test_errors_take_the_shape_and_content_type_of_their_host(
    app, client, headers, prefix, method, path, sent, status, spec_path
):
    sent = dict(sent)
    app.config["SANDBOX_LEGACY_GONE"] = sent.pop("legacy_gone", False)
    sent["headers"] = {**(headers if sent.pop("credentials", True) else {}), **sent.get("headers", {})}
    response = client.open(prefix + path, method=method, **sent)
    if prefix == "/sandbox/v2":
        assert_legacy_error(response, status)
    elif spec_path:
        assert_response(response, V2, spec_path, method.lower(), status)
    else:
        assert_problem(response, status)
    if status == 401 and prefix == "/sandbox/api/v2":
        assert_matches(
            response.get_json(force=True),
            V2,
            "components",
            "responses",
            "Unauthorized",
            "content",
            "application/problem+json",
            "schema",
        )


@pytest.mark.parametrize("prefix", ["/sandbox/api/v2", "/sandbox/v2"])
def test_rate_limited_answers_per_host(client, prefix):
    limited = client.get(prefix + "/integrations", headers={"X-Sandbox-Fault": "429"})
    assert limited.status_code == 429 and limited.headers["Retry-After"]
    if prefix == "/sandbox/api/v2":
        assert_problem(limited, 429)
    else:  # Terra's rate-limit page shows this body; the older host has no problem details
        assert known_difference("legacy-host-errors")
        assert limited.mimetype == "application/json" and limited.get_json() == {"detail": "rate limit exceeded"}


def test_widget_session_errors_are_status_and_message_json(client, headers):
    # The widget spec declares only 400 and 403; a 503 keeps the same shape.
    failing = client.post("/sandbox/api/widget/session", json={}, headers={**headers, "X-Sandbox-Fault": "5xx"})
    assert failing.status_code == 503 and failing.mimetype == "application/json"
    assert set(failing.get_json()) == {"status", "message"} and failing.get_json()["status"] == "error"


def test_a_wrong_method_and_the_faults_are_listed_differences(client):
    wrong_method = client.get("/sandbox/api/v2/auth/authenticateUser")
    assert wrong_method.status_code == 405 and wrong_method.mimetype == "text/html"
    assert known_difference("html-405")
    malformed = client.get("/sandbox/api/v2/integrations", headers={"X-Sandbox-Fault": "malformed"})
    assert malformed.status_code == 200 and malformed.mimetype == "text/html"
    assert known_difference("faults")


def test_authenticate_users_auth_url_is_the_provider_login_step(app, client, headers):
    # Terra's auth_url is the provider's own login page: no widget, no picker, no redirect on the way.
    started = client.post(
        "/sandbox/api/v2/auth/authenticateUser?resource=OURA", json={"reference_id": "ref-1"}, headers=headers
    )
    assert_response(started, V2, "/auth/authenticateUser", "post", 200)
    auth_url = urlsplit(started.get_json()["auth_url"])
    public = urlsplit(app.config["PUBLIC_BASE_URL"])
    assert known_difference("sandbox-urls") and auth_url.netloc == public.netloc
    login = client.get(auth_url.path, query_string=auth_url.query)
    assert login.status_code == 200 and 'id="provider-login"' in login.get_data(as_text=True)
    assert "Sign in to Oura" in login.get_data(as_text=True)


@pytest.mark.parametrize("shape", ["array", "object"])
def test_userinfo_by_reference_id_in_each_shape(app, client, headers, webhooks, shape):
    connect(client, headers, account="contract")
    app.config["SANDBOX_USERINFO_SHAPE"] = shape
    listing = client.get("/sandbox/api/v2/userInfo", query_string={"reference_id": "ref-1"}, headers=headers)
    assert_response(listing, V2, "/userInfo", "get", 200)
    if shape == "array":
        assert isinstance(listing.get_json(), list)
    else:  # valid only because the spec's single-user answer requires no key
        assert known_difference("userinfo-object") and list(listing.get_json()) == ["users"]


def test_paths_of_the_spec_the_sandbox_does_not_serve_are_listed(app):
    row = known_difference("unserved-paths")
    routes = app.url_map.bind("localhost")
    unserved = []
    for path, operations in spec_part(V2, "paths").items():
        url = "/sandbox/api/v2" + re.sub(r"\{[^}]+\}", "x", path)
        for method in set(operations) & {"get", "post", "put", "patch", "delete"}:
            try:
                routes.match(url, method=method.upper())
            except HTTPException:
                unserved.append(path)
    assert unserved and not [path for path in unserved if f"`{path}`" not in row]
    routes.match("/sandbox" + WIDGET_SESSION[0], method="POST")  # the widget spec's one path is served


def test_the_differences_table_lists_exactly_the_checked_differences():
    assert set(listed_differences()) == CHECKED_DIFFERENCES


def test_the_sandbox_page_describes_every_switch():
    page = SANDBOX_PAGE.read_text()
    switches = [*(name for name in SandboxSettings.model_fields if name.startswith("SANDBOX_")), *ALL_FAULTS]
    assert not [name for name in switches if f"`{name}`" not in page]


# -- redirects ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["documented", "detailed"])
def test_failure_redirects_carry_what_terra_documents(app, client, headers, webhooks, position):
    app.config["SANDBOX_FAILURE_REDIRECT"] = position
    session = new_session(client, headers)
    added = query_of(complete(client, session["session_id"], outcome="denied").get_json()["redirect_url"])
    assert added.pop("attempt") == "abc"  # the app's own parameter, kept
    if position == "documented":
        assert added == {"reference_id": "ref-1"}
    else:
        assert known_difference("failure-redirect-detailed")
        assert added == {"reference_id": "ref-1", "resource": "GARMIN", "reason": "access_denied"}
    assert [event["type"] for event in webhooks.events(1)] == ["auth_cancelled"]


# -- webhook bodies ---------------------------------------------------------------------------------

# The spec's name for each event type's webhook (s3_payload travels as `s3_upload`; both auth arms as `auth`).
WEBHOOK_OF = {"auth_cancelled": "auth", "s3_payload": "s3_upload"}


def assert_webhook(event: dict) -> None:
    name = WEBHOOK_OF.get(event["type"], event["type"])
    assert_matches(event, V2, "webhooks", name, "post", "requestBody", "content", "application/json", "schema")


def test_every_webhook_body_the_sandbox_sends_matches_the_v2_spec(app, client, headers, webhooks):
    connect(client, headers, account="contract")
    reauthenticated = connect(client, headers, account="contract")  # a re-auth: user_reauth and auth
    session = new_session(client, headers)
    complete(client, session["session_id"], outcome="denied")  # auth_cancelled (the 2026 shape)
    current = query_of(
        complete(client, new_session(client, headers)["session_id"], account="other").get_json()["redirect_url"]
    )["user_id"]
    for kind in ("activity", "daily", "sleep", "connection_error", "permission_change"):
        assert client.post(f"/sandbox/users/{current}/events", json={"type": kind}).status_code == 202
    app.config["SANDBOX_FAULTS"] = ["s3_payload"]
    assert client.post(f"/sandbox/users/{current}/events", json={"type": "activity"}).status_code == 202
    app.config["SANDBOX_FAULTS"] = []
    assert client.post(f"/sandbox/users/{reauthenticated}/events", json={"type": "access_revoked"}).status_code == 202
    deauthed = client.delete("/sandbox/v2/auth/deauthenticateUser", query_string={"user_id": current}, headers=headers)
    assert deauthed.status_code == 200

    events = webhooks.events(13)
    assert {event["type"] for event in events} >= {
        "auth",
        "user_reauth",
        "auth_cancelled",
        "activity",
        "daily",
        "sleep",
        "connection_error",
        "permission_change",
        "s3_payload",
        "access_revoked",
        "deauth",
    }
    for event in events:
        assert_webhook(event)
    ping = next(event for event in events if event["type"] == "s3_payload")
    assert_webhook(client.get(urlsplit(ping["url"]).path).get_json())  # the download is a data event too


def test_the_older_auth_error_shape_is_knowingly_outside_the_2026_spec(app, client, headers, webhooks):
    # SANDBOX_AUTH_FAILURE_SHAPE=auth_error follows the older docs (`auth` with status `error`), which the
    # 2026 spec replaced with `auth_cancelled`; the app handles both, so the sandbox can send both.
    app.config["SANDBOX_AUTH_FAILURE_SHAPE"] = "auth_error"
    assert known_difference("auth-error-shape")
    complete(client, new_session(client, headers)["session_id"], outcome="cancelled")
    [event] = webhooks.events(1)
    assert (event["type"], event["status"]) == ("auth", "error")
    with pytest.raises(AssertionError):
        assert_webhook(event)


@pytest.mark.parametrize("sends", [True, False])
def test_deauthenticate_user_with_and_without_a_deauth_webhook(app, client, headers, webhooks, sends):
    app.config["SANDBOX_DEAUTH_WEBHOOK"] = sends
    user_id = connect(client, headers, account="contract")
    with deliveries_finished():  # a deauth webhook, if any, is sent by the time the block ends
        deleted = client.delete(
            "/sandbox/api/v2/auth/deauthenticateUser", query_string={"user_id": user_id}, headers=headers
        )
    assert_response(deleted, V2, "/auth/deauthenticateUser", "delete", 200)
    info = client.get("/sandbox/api/v2/userInfo", query_string={"user_id": user_id}, headers=headers)
    assert info.get_json()["is_authenticated"] is False
    sent = sorted(event["type"] for event in webhooks.events(1 + sends))
    if sends:
        assert known_difference("deauth-webhook") and sent == ["auth", "deauth"]
    else:
        assert sent == ["auth"]


# The positions of SANDBOX_SIGNATURE_HEADERS and the headers each sends.
SIGNATURE_POSITIONS = {
    "terra-signature": {"terra-signature"},
    "both": {"x-terra-signature", "terra-signature"},
    "x-terra-signature": {"x-terra-signature"},
}


@pytest.mark.parametrize("position, names", SIGNATURE_POSITIONS.items())
def test_webhooks_are_signed_under_each_header_position_and_the_receiver_accepts_it(
    app, client, headers, webhooks, position, names
):
    app.config["SANDBOX_SIGNATURE_HEADERS"] = position
    connect(client, headers, account="contract")
    [delivery] = webhooks.wait_for(1)
    received = delivery["headers"]
    assert {name.lower() for name in received if "signature" in name.lower()} == names
    # The app's receiver verifies exactly what the sandbox sent, under whichever names it came.
    replayed = {name: received[name] for name in (*names, "X-Terra-Trace-Id", "Content-Type")}
    answer = client.post("/webhooks/terra", data=delivery["body"], headers=replayed)
    assert answer.status_code == 200, answer.get_data(as_text=True)
