"""The sandbox against Terra's own OpenAPI files: every REST answer and every webhook body it sends
must validate against the schema Terra publishes for it. Where the sandbox knowingly follows a newer
spec, the test says so.

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


def assert_response(response, uri: str, path: str, method: str, status: int) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    operation: tuple[str, ...] = ("paths", path, method, "responses", str(status))
    reference = registry()[uri].contents["paths"][path][method]["responses"][str(status)].get("$ref")
    if reference:  # a shared answer, e.g. #/components/responses/NotFound
        operation = tuple(reference.removeprefix("#/").split("/"))
    content = "application/problem+json" if response.mimetype == "application/problem+json" else "application/json"
    assert_matches(response.get_json(force=True), uri, *operation, "content", content, "schema")


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


def test_widget_session_answers_match_the_widget_spec(client, headers):
    # Newer than OA-widget 2026.07.06: the sandbox answers 201 and adds `warnings`, as Terra's widget
    # spec of 2026.10.08 does (DESIGN.md). The body is checked against the 200 schema it extends.
    response = client.post("/sandbox/widget/api/session", json={"providers": "GARMIN,NOPE"}, headers=headers)
    assert response.status_code == 201 and response.get_json()["warnings"]
    assert_matches(
        response.get_json(),
        WIDGET,
        "paths",
        "/widget/api/session",
        "post",
        "responses",
        "200",
        "content",
        "application/json",
        "schema",
    )
    refused = client.post("/sandbox/widget/api/session", json={}, headers={"dev-id": "nobody", "x-api-key": "x"})
    assert_response(refused, WIDGET, "/widget/api/session", "post", 403)
    bad = client.post("/sandbox/widget/api/session", json={"reference_id": "r" * 256}, headers=headers)
    assert_response(bad, WIDGET, "/widget/api/session", "post", 400)


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


def test_errors_on_the_access_host_are_problem_json_per_the_spec(client, headers):
    missing = client.get("/sandbox/api/v2/userInfo", query_string={"user_id": "nobody"}, headers=headers)
    assert missing.mimetype == "application/problem+json"
    assert_response(missing, V2, "/userInfo", "get", 404)
    bad = client.post("/sandbox/api/v2/auth/authenticateUser", headers=headers)
    assert_response(bad, V2, "/auth/authenticateUser", "post", 400)
    unauthorised = client.get("/sandbox/api/v2/subscriptions")
    assert unauthorised.status_code == 401 and unauthorised.mimetype == "application/problem+json"
    assert_matches(
        unauthorised.get_json(force=True),
        V2,
        "components",
        "responses",
        "Unauthorized",
        "content",
        "application/problem+json",
        "schema",
    )
    limited = client.get("/sandbox/api/v2/integrations", headers={"X-Sandbox-Fault": "429"})
    assert limited.status_code == 429 and limited.mimetype == "application/problem+json"
    assert_matches(limited.get_json(force=True), V2, "components", "schemas", "Problem")


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
    complete(client, new_session(client, headers)["session_id"], outcome="cancelled")
    [event] = webhooks.events(1)
    assert (event["type"], event["status"]) == ("auth", "error")
    with pytest.raises(AssertionError):
        assert_webhook(event)
