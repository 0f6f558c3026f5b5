"""The mobile JSON API against its OpenAPI 3.1 description, docs/openapi.json.

The document is checked on its own (structure, references, schemas), against the routes the `api`
blueprint really has, and against real answers: the app and its Terra sandbox run over HTTP
(`live_server`), the app is driven as the mobile app drives it, and every answer's status code,
headers and JSON body must be what the document says for that operation.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import select

from extensions import db
from models import ApiToken, Connection, WebhookEvent
from models.time import utcnow
from tests.conftest import Browser, wait_for
from tests.helpers import create_attempt, create_user, finish_widget
from tests.test_hostile_input import BAD_WAITS
from tools import openapi_30

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
DOCUMENT: dict = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
API_PREFIX = "/api/v1"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
PASSWORD = "correct horse battery"


# -- reading the document ---------------------------------------------------------------------


def resolve(reference: str) -> Any:
    """The node a local reference (`#/a/b`) names; KeyError when it names nothing."""
    assert reference.startswith("#/"), f"only references inside the document are expected: {reference}"
    node: Any = DOCUMENT
    for part in reference[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def deref(node: Any) -> Any:
    for _ in range(10):
        if not (isinstance(node, dict) and "$ref" in node):
            return node
        node = resolve(node["$ref"])
    raise AssertionError("a chain of more than 10 references")


def walk(node: Any, where: str = "#"):
    """Every (location, key, value) below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield where, key, value
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def operations():
    for template, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, template, operation


def template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{[^}/]+\\\}", "[^/]+", re.escape(template)) + "$")


def find_operation(method: str, path: str) -> tuple[str, dict]:
    """The documented operation that answers `method` on the concrete `path` (/api/v1/...)."""
    assert path.startswith(API_PREFIX), path
    relative = path[len(API_PREFIX) :]
    matches = [template for template in DOCUMENT["paths"] if template_regex(template).match(relative)]
    assert len(matches) == 1, f"{path} matches {matches} in the document"
    item = DOCUMENT["paths"][matches[0]]
    assert method.lower() in item, f"{method} {matches[0]} is not documented"
    return matches[0], item[method.lower()]


def protected(operation: dict) -> bool:
    return operation.get("security", DOCUMENT.get("security", [])) != []


# -- validating with JSON Schema 2020-12 ------------------------------------------------------

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
FORMATS = FormatChecker(formats=())  # only the checks below: no optional dependency decides anything


@FORMATS.checks("date-time", raises=ValueError)
def is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not RFC3339.match(value):
        return False
    datetime.fromisoformat(value)  # ValueError for an impossible date such as 2026-02-30
    return True


@FORMATS.checks("date", raises=ValueError)
def is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None and bool(date.fromisoformat(value))


@FORMATS.checks("uri")
def is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme) and bool(parts.netloc) and not re.search(r"\s", value)


@FORMATS.checks("uri-reference")
def is_uri_reference(value: object) -> bool:
    return not isinstance(value, str) or not re.search(r"\s", value)


def validator(schema: dict) -> Draft202012Validator:
    # The document's components sit in the root, so `#/components/...` resolves as in the document.
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]}, format_checker=FORMATS)


def assert_valid(instance: Any, schema: dict, what: str) -> None:
    errors = sorted(validator(schema).iter_errors(instance), key=lambda error: list(error.absolute_path))
    assert not errors, f"{what} does not match the document: " + "; ".join(
        f"at {list(error.absolute_path)}: {error.message}" for error in errors
    )


def accepts(schema: dict, instance: Any) -> bool:
    return validator(schema).is_valid(instance)


def component(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


# -- checking a real answer against the document ----------------------------------------------


@dataclass
class Answer:
    method: str
    path: str
    status: int
    headers: Mapping[str, str]
    content: bytes


def as_answer(response) -> Answer:
    if isinstance(response, requests.Response):
        return Answer(
            response.request.method,
            urlsplit(response.request.url).path,
            response.status_code,
            response.headers,
            response.content,
        )
    # Flask's test client
    return Answer(
        response.request.method, response.request.path, response.status_code, response.headers, response.get_data()
    )


def check(response) -> Any:
    """Assert the answer is one the document describes for its operation; return its JSON body."""
    answer = as_answer(response)
    template, operation = find_operation(answer.method, answer.path)
    what = f"{answer.method} {answer.path} → {answer.status}"
    documented = operation["responses"]
    # An error status the operation does not list is its `default` response (405, say); a success
    # status must be listed.
    status = str(answer.status) if str(answer.status) in documented or answer.status < 400 else "default"
    assert status in documented, (
        f"{what}: status not documented for {answer.method} {template} (documented: {sorted(documented)}); "
        f"body {answer.content[:300]!r}"
    )
    spec = deref(documented[status])

    assert answer.headers.get("Cache-Control") == "no-store", f"{what}: Cache-Control is not no-store"
    for name, header in spec.get("headers", {}).items():
        header = deref(header)
        value = answer.headers.get(name)
        if value is None:
            assert not header.get("required"), f"{what}: the documented header {name} is missing"
            continue
        assert_valid(value, header["schema"], f"{what}: header {name}")

    content = spec.get("content")
    if not content:
        assert answer.content == b"", f"{what}: a body where the document describes none"
        return None
    assert list(content) == ["application/json"]
    assert answer.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", what
    body = json.loads(answer.content)
    assert_valid(body, content["application/json"]["schema"], f"{what}: body")
    return body


def expect(response, status: int) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:500]}"
    )
    return check(response)


def request_schema(method: str, path: str) -> dict:
    _, operation = find_operation(method, path)
    return operation["requestBody"]["content"]["application/json"]["schema"]


# -- the mobile app's side ----------------------------------------------------------------------


class Api:
    """Calls as the mobile app makes them: bearer token only, never a cookie."""

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url, self.token = base_url, token

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: dict | None = None,
        params: dict | None = None,
        token: str | None = None,
        valid_request: bool = True,
    ) -> requests.Response:
        path = path if path.startswith(API_PREFIX) else API_PREFIX + path
        if json is not None and valid_request:
            # What the tests send as a good request must be a good request by the document too.
            assert_valid(json, request_schema(method, path), f"request body of {method} {path}")
        headers = dict(headers or {})
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        return requests.request(
            method, self.base_url + path, json=json, data=data, headers=headers, params=params, timeout=40
        )

    def sign_in(self, email: str, password: str = PASSWORD) -> Api:
        token = expect(self.call("POST", "/tokens", json={"email": email, "password": password}), 201)
        assert token["token_type"] == "Bearer"
        return Api(self.base_url, token["access_token"])


def register_and_sign_in(server, email: str = "ada@example.com") -> Api:
    page = Browser(server.url).register(email=email, password=PASSWORD)
    assert page.status_code == 200 and "Your connections" in page.text
    return Api(server.url).sign_in(email)


def start_attempt(api: Api, body: dict | None = None) -> dict:
    response = api.call("POST", "/connect-attempts", json=body if body is not None else {})
    created = expect(response, 201)
    assert response.headers["Location"] == created["status_url"]
    assert created["status_url"] == f"{API_PREFIX}/connect-attempts/{created['attempt_id']}"
    return created


def poll_until_terminal(api: Api, status_url: str) -> dict:
    def terminal_state():
        state = expect(api.call("GET", status_url), 200)
        return state if state["terminal"] else None

    return wait_for(terminal_state, timeout=15, interval=0.1)


def connect_a_device(server, api: Api, **widget) -> dict:
    created = start_attempt(api, {"providers": [widget.get("provider", "GARMIN")]})
    return_url = finish_widget(created["url"], **widget)
    assert urlsplit(return_url).path.startswith("/mobile/return/success/")
    assert Browser(server.url).get(return_url).status_code == 200  # the mobile return page
    return poll_until_terminal(api, created["status_url"])


@pytest.fixture
def mobile(live_server) -> Api:
    return register_and_sign_in(live_server)


def concrete(template: str) -> str:
    """A request path for a documented template; ids that exist for nobody."""
    return API_PREFIX + template.replace("{attempt_id}", "no-such-attempt").replace("{connection_id}", "987654")


# -- the document on its own --------------------------------------------------------------------


def test_document_is_openapi_3_1_with_the_agreed_top_level():
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["info"]["title"] == "Terra Connect mobile API"
    assert DOCUMENT["info"]["version"] == "1.0.0"
    description = DOCUMENT["info"]["description"]
    for topic in ("Bearer", "no-store", '{"error": {"code"', "ETag", "If-None-Match", "?wait=", "poll_after_ms"):
        assert topic in description, f"the description does not explain {topic}"
    assert DOCUMENT["servers"] == [{"url": API_PREFIX}]
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearerAuth"].items()
    assert DOCUMENT["security"] == [{"bearerAuth": []}]
    assert set(DOCUMENT) <= {
        "openapi",
        "info",
        "jsonSchemaDialect",
        "servers",
        "paths",
        "webhooks",
        "components",
        "security",
        "tags",
        "externalDocs",
    }


def test_every_reference_resolves():
    references = [(where, value) for where, key, value in walk(DOCUMENT) if key == "$ref"]
    assert len(references) > 20
    for where, reference in references:
        assert isinstance(reference, str), where
        try:
            resolve(reference)
        except (KeyError, IndexError, ValueError):
            pytest.fail(f"{where}: $ref {reference} names nothing")


def test_every_schema_is_valid_json_schema_2020_12():
    schemas = [(where, value) for where, key, value in walk(DOCUMENT) if key == "schema"]
    schemas += [(f"#/components/schemas/{name}", value) for name, value in DOCUMENT["components"]["schemas"].items()]
    assert len(schemas) > 20
    for where, schema in schemas:
        Draft202012Validator.check_schema(schema)
    # Every format the document names is one these tests really check.
    formats = {value for _, key, value in walk(DOCUMENT) if key == "format" and isinstance(value, str)}
    assert formats and formats <= FORMATS.checkers.keys(), formats - FORMATS.checkers.keys()


def test_operations_are_well_formed():
    operation_ids = []
    security_schemes = DOCUMENT["components"]["securitySchemes"]
    for method, template, operation in operations():
        name = f"{method.upper()} {template}"
        operation_ids.append(operation["operationId"])
        parameters = [
            deref(parameter)
            for parameter in DOCUMENT["paths"][template].get("parameters", []) + operation.get("parameters", [])
        ]
        for parameter in parameters:
            assert {"name", "in", "schema"} <= parameter.keys(), name
            assert parameter["in"] in ("path", "query", "header", "cookie"), name
        in_template = set(re.findall(r"\{([^}]+)\}", template))
        in_path = {parameter["name"] for parameter in parameters if parameter["in"] == "path"}
        assert in_template == in_path, f"{name}: path parameters {in_path} for a template naming {in_template}"
        assert all(parameter["required"] is True for parameter in parameters if parameter["in"] == "path"), name

        for requirement in operation.get("security", DOCUMENT["security"]):
            assert set(requirement) <= set(security_schemes), name
        responses = operation["responses"]
        assert all(re.fullmatch(r"[1-5][0-9][0-9]|default", code) for code in responses), name
        # Generated clients decode any other error through `default` (docs/mobile.md).
        assert deref(responses["default"])["content"]["application/json"]["schema"] == component("ApiError"), name
        for code, response in responses.items():
            response = deref(response)
            assert response["description"], f"{name} {code}"
            headers = {header: deref(value) for header, value in response.get("headers", {}).items()}
            assert headers.get("Cache-Control", {}).get("required") is True, f"{name} {code}: no Cache-Control"
            for content in response.get("content", {}).values():
                assert "schema" in content, f"{name} {code}"
            if code.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == component("ApiError"), f"{name} {code}"
        if protected(operation):
            assert "401" in responses, f"{name} needs a token but documents no 401"
            header = deref(deref(responses["401"])["headers"]["WWW-Authenticate"])
            assert header["required"] is True
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_sign_in_and_the_document_itself_need_no_token():
    public = sorted((method, template) for method, template, operation in operations() if not protected(operation))
    assert public == [("get", "/openapi.json"), ("post", "/tokens")]


def test_document_file_is_pretty_printed_with_two_spaces():
    text = DOCUMENT_PATH.read_text(encoding="utf-8")
    assert text == json.dumps(DOCUMENT, indent=2, ensure_ascii=False) + "\n"


def test_every_enum_and_object_is_a_named_schema_for_generated_clients():
    """Generators name what the document names: an inline enum or object becomes one generated type
    per place it appears (`hint` was three copies of one enum), and a schema named `Error` collides
    with Swift's `Error`."""
    schemas = DOCUMENT["components"]["schemas"]
    assert {"ApiError", "ErrorDetail", "AttemptStatus", "AttemptHint", "ConnectionStatus"} <= set(schemas)
    assert "Error" not in schemas
    assert schemas["ApiError"]["properties"]["error"] == component("ErrorDetail")
    assert component("ErrorDetail") in schemas["Attempt"]["properties"]["error"]["anyOf"]
    assert schemas["Attempt"]["properties"]["status"] == component("AttemptStatus")
    assert schemas["Connection"]["properties"]["status"] == component("ConnectionStatus")
    named = {id(schema) for schema in schemas.values()}
    for where, key, value in walk(DOCUMENT):
        if key in ("schema", "schemas") or not isinstance(value, dict) or id(value) in named:
            continue
        inline = value.get("type") == "object" or ("enum" in value and len(value["enum"]) > 1)
        assert not inline, f"{where}/{key}: an inline {'enum' if 'enum' in value else 'object'}; name it"


def test_the_openapi_3_0_copy_is_generated_from_this_document():
    converted = openapi_30.convert(DOCUMENT)
    assert openapi_30.TARGET.read_text(encoding="utf-8") == openapi_30.render(converted), (
        "docs/openapi-3.0.json is stale: run `python -m tools.openapi_30`"
    )
    assert converted["openapi"] == "3.0.3"
    assert converted["paths"].keys() == DOCUMENT["paths"].keys()
    assert converted["components"]["schemas"].keys() == DOCUMENT["components"]["schemas"].keys()
    # None of 3.1's own constructs is left.
    for where, key, value in walk(converted):
        assert key not in ("const", "if", "then", "else", "examples", "jsonSchemaDialect"), f"{where}/{key}"
        keyword = not where.endswith("/properties")  # else `type` names a property
        assert not (keyword and key == "type" and not isinstance(value, str)), f"{where}: type {value}"
        assert not (key == "enum" and None in value), where
    attempt = converted["components"]["schemas"]["Attempt"]["properties"]
    assert attempt["hint"] == {
        "description": DOCUMENT["components"]["schemas"]["Attempt"]["properties"]["hint"]["description"],
        "allOf": [component("AttemptHint")],
        "nullable": True,
    }
    assert attempt["poll_after_ms"] == {**attempt["poll_after_ms"], "type": "integer", "nullable": True}
    assert converted["components"]["headers"]["ETag"]["schema"]["example"] == '"3"'


def test_attempt_schema_has_exactly_the_fields_the_model_reports(app):
    with app.app_context():
        user = create_user()
        connection = Connection(user_id=user.id, terra_user_id="terra-1", provider="GARMIN", scopes="A,B")
        db.session.add(connection)
        db.session.commit()
        attempt = create_attempt(
            user,
            requested_provider="GARMIN",
            status="connected",
            connection_id=connection.id,
            error="auth_failed",
            hint="returned_success",
        )
        db.session.refresh(attempt)
        attempt_fields = set(attempt.to_dict()) | {"poll_after_ms"}
        connection_fields = set(connection.to_dict())
        body = {**attempt.to_dict(), "poll_after_ms": None}

    schemas = DOCUMENT["components"]["schemas"]
    assert set(schemas["Attempt"]["properties"]) == attempt_fields
    assert set(schemas["Attempt"]["required"]) == attempt_fields
    assert schemas["Attempt"]["additionalProperties"] is False
    assert set(schemas["Connection"]["properties"]) == connection_fields
    assert set(schemas["Connection"]["required"]) == connection_fields
    assert schemas["Connection"]["additionalProperties"] is False
    assert_valid(body, component("Attempt"), "a connected attempt with everything set")


def test_attempt_schema_rejects_what_the_api_never_sends():
    good = {
        "attempt_id": "abc",
        "status": "pending",
        "terminal": False,
        "hint": None,
        "provider": None,
        "resource": None,
        "connection": None,
        "error": None,
        "version": 1,
        "created_at": "2026-05-01T10:00:00.123456Z",
        "updated_at": "2026-05-01T10:00:00Z",
        "expires_at": "2026-05-01T10:15:00Z",
        "poll_after_ms": 2000,
    }
    assert accepts(component("Attempt"), good)
    for change in (
        {"status": "done"},
        {"hint": "clicked"},
        {"terminal": True},
        {"poll_after_ms": None},
        {"version": "1"},
        {"created_at": "yesterday"},
        {"expires_at": "2026-02-30T10:00:00Z"},
        {"error": {"code": "x"}},
        {"connection": {"id": 1}},
        {"extra": 1},
    ):
        assert not accepts(component("Attempt"), {**good, **change}), change
    missing = dict(good)
    del missing["hint"]
    assert not accepts(component("Attempt"), missing)
    finished = {
        **good,
        "status": "failed",
        "terminal": True,
        "poll_after_ms": None,
        "error": {"code": "access_denied", "message": "You declined."},
    }
    assert accepts(component("Attempt"), finished)
    assert not accepts(component("Attempt"), {**finished, "poll_after_ms": 2000})


# -- the document against the app ----------------------------------------------------------------


def test_every_api_route_is_documented_with_its_methods_and_nothing_else(app):
    converter_types = {"int": "integer", "default": "string", "string": "string"}
    served: dict[tuple[str, str], dict[str, str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("api."):
            continue
        assert rule.rule.startswith(API_PREFIX), rule.rule
        template = re.sub(r"<(?:([^:<>]+):)?([^<>]+)>", r"{\2}", rule.rule[len(API_PREFIX) :])
        types = {
            name: converter_types[converter or "default"]
            for converter, name in re.findall(r"<(?:([^:<>]+):)?([^<>]+)>", rule.rule)
        }
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served[(method.lower(), template)] = types
    documented = {(method, template) for method, template, _ in operations()}
    assert set(served) == documented
    assert len(served) == 11

    for (method, template), types in served.items():
        item = DOCUMENT["paths"][template]
        parameters = [deref(parameter) for parameter in item.get("parameters", []) + item[method].get("parameters", [])]
        documented_types = {
            parameter["name"]: parameter["schema"]["type"] for parameter in parameters if parameter["in"] == "path"
        }
        assert documented_types == types, f"{method.upper()} {template}"


def test_served_document_is_the_file_byte_for_byte(client):
    response = client.get(API_PREFIX + "/openapi.json")
    assert response.status_code == 200
    assert response.get_data() == DOCUMENT_PATH.read_bytes()
    assert check(response)["openapi"] == "3.1.0"


def test_connecting_a_device_end_to_end(live_server, mobile):
    created = start_attempt(mobile, {"providers": ["garmin"], "language": "en"})
    assert created["url"].startswith(live_server.url + "/sandbox/widget/")
    assert created["poll_after_ms"] == live_server.app.config["STATUS_POLL_AFTER_MS"]
    status_url = created["status_url"]

    pending = expect(mobile.call("GET", status_url), 200)
    assert (pending["attempt_id"], pending["status"], pending["terminal"]) == (created["attempt_id"], "pending", False)
    assert pending["provider"] == "GARMIN" and pending["poll_after_ms"] == created["poll_after_ms"]
    assert pending["expires_at"] == created["expires_at"]

    return_url = finish_widget(created["url"])
    assert urlsplit(return_url).path.startswith("/mobile/return/success/")
    page = Browser(live_server.url).get(return_url)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"

    connected = poll_until_terminal(mobile, status_url)
    assert connected["status"] == "connected" and connected["hint"] == "returned_success"
    assert connected["error"] is None and connected["poll_after_ms"] is None
    assert connected["version"] > pending["version"]
    connection = connected["connection"]
    assert (connection["provider"], connection["status"]) == ("GARMIN", "active")
    assert connection["terra_user_id"] in return_url

    listed = expect(mobile.call("GET", "/connections"), 200)
    assert [(row["id"], row["status"]) for row in listed["connections"]] == [(connection["id"], "active")]

    # The browser closing after the outcome is known changes nothing.
    closed = expect(mobile.call("POST", status_url + "/browser-closed"), 202)
    assert (closed["status"], closed["hint"], closed["version"]) == (
        "connected",
        "returned_success",
        connected["version"],
    )

    deleted = expect(mobile.call("DELETE", f"/connections/{connection['id']}"), 200)
    assert (deleted["id"], deleted["status"], deleted["status_reason"]) == (connection["id"], "revoked", "disconnected")
    again = expect(mobile.call("DELETE", f"/connections/{connection['id']}"), 200)
    assert again["status"] == "revoked"
    assert expect(mobile.call("GET", status_url), 200)["connection"]["status"] == "revoked"
    assert [row["status"] for row in expect(mobile.call("GET", "/connections"), 200)["connections"]] == ["revoked"]

    assert expect(mobile.call("DELETE", "/tokens/current"), 204) is None
    assert mobile.call("GET", "/connections").status_code == 401


@pytest.mark.parametrize("provider", ["APPLE", "SAMSUNG", "HEALTH_CONNECT"])
def test_an_sdk_only_provider_ends_the_attempt_at_once_as_sdk_required(live_server, mobile, provider):
    created = start_attempt(mobile, {"providers": [provider, "GARMIN"]})
    return_url = finish_widget(created["url"], provider=provider)
    page = Browser(live_server.url).get(return_url)
    link = re.search(r'id="return-to-app" href="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    assert link == f"com.example.terraconnect://connect/success?attempt_id={created['attempt_id']}&resource={provider}"
    state = expect(mobile.call("GET", created["status_url"]), 200)  # no polling needed: already decided
    assert (state["status"], state["terminal"], state["resource"], state["provider"]) == (
        "sdk_required",
        True,
        provider,
        provider,
    )
    assert state["connection"] is None and state["poll_after_ms"] is None
    with live_server.app.app_context():
        assert db.session.scalars(select(WebhookEvent)).all() == []  # Terra sends none for it


def test_a_closed_browser_cancels_a_pending_attempt_after_the_grace_period(live_server, mobile):
    created = start_attempt(mobile)
    status_url = created["status_url"]
    first = expect(mobile.call("GET", status_url), 200)
    assert first["provider"] is None and first["hint"] is None

    closed = expect(mobile.call("POST", status_url + "/browser-closed"), 202)
    assert (closed["status"], closed["hint"], closed["terminal"]) == ("pending", "browser_closed", False)
    assert closed["version"] > first["version"] and isinstance(closed["poll_after_ms"], int)

    live_server.app.config["BROWSER_CLOSED_GRACE_SECONDS"] = 0
    cancelled = expect(mobile.call("GET", status_url), 200)
    assert (cancelled["status"], cancelled["terminal"], cancelled["poll_after_ms"]) == ("cancelled", True, None)
    assert cancelled["error"]["code"] == "browser_closed" and cancelled["error"]["message"]


def test_conditional_requests_and_long_polling(live_server, mobile):
    status_url = start_attempt(mobile)["status_url"]
    first = mobile.call("GET", status_url)
    body = expect(first, 200)
    etag = first.headers["ETag"]
    assert etag == f'"{body["version"]}"'

    unchanged = mobile.call("GET", status_url, headers={"If-None-Match": etag})
    assert expect(unchanged, 304) is None and unchanged.headers["ETag"] == etag

    started = time.monotonic()
    held = mobile.call("GET", status_url, params={"wait": 1}, headers={"If-None-Match": etag})
    assert expect(held, 304) is None and time.monotonic() - started >= 0.9

    # With an If-None-Match naming an older version, `wait` does not hold the answer.
    started = time.monotonic()
    expect(mobile.call("GET", status_url, params={"wait": 25}, headers={"If-None-Match": '"0"'}), 200)
    assert time.monotonic() - started < 10

    # A change while a long poll waits ends it with the new state.
    reports: list[requests.Response] = []
    closer = threading.Timer(0.5, lambda: reports.append(mobile.call("POST", status_url + "/browser-closed")))
    closer.start()
    started = time.monotonic()
    changed = mobile.call("GET", status_url, params={"wait": 20}, headers={"If-None-Match": etag})
    elapsed = time.monotonic() - started
    closer.join()
    state = expect(changed, 200)
    assert 0.4 <= elapsed < 15
    assert state["hint"] == "browser_closed" and state["version"] > body["version"]
    assert changed.headers["ETag"] == f'"{state["version"]}"' != etag
    assert expect(reports[0], 202)["hint"] == "browser_closed"

    # Reporting the closed browser again changes nothing; validators are ignored on this POST.
    again = mobile.call("POST", status_url + "/browser-closed", headers={"If-None-Match": changed.headers["ETag"]})
    assert expect(again, 202)["version"] == state["version"] and again.headers["ETag"] == changed.headers["ETag"]


def test_an_if_match_naming_another_version_is_412_and_changes_nothing(live_server, mobile):
    """RFC 9110 §13.1.1, on GET and on browser-closed: an app must be able to refuse to act on a
    stale state. `*` and the current version go through."""
    status_url = start_attempt(mobile)["status_url"]
    current = mobile.call("GET", status_url)
    etag = current.headers["ETag"]
    for if_match in ('"0"', f"W/{etag}", '"999", "998"'):
        for method, url in (
            ("GET", status_url),
            ("GET", status_url + "?wait=5"),
            ("POST", status_url + "/browser-closed"),
        ):
            refused = mobile.call(method, url, headers={"If-Match": if_match})
            assert expect(refused, 412)["error"]["code"] == "precondition_failed" and refused.headers["ETag"] == etag
    assert expect(mobile.call("GET", status_url), 200) == expect(current, 200)  # nothing recorded
    assert expect(mobile.call("GET", status_url, headers={"If-Match": f'"0", {etag}'}), 200)["version"] == 1
    assert expect(mobile.call("GET", status_url, headers={"If-Match": etag, "If-None-Match": etag}), 304) is None
    closed = mobile.call("POST", status_url + "/browser-closed", headers={"If-Match": etag})
    assert expect(closed, 202)["hint"] == "browser_closed"
    stale = mobile.call("POST", status_url + "/browser-closed", headers={"If-Match": etag})  # it moved on
    assert (
        expect(stale, 412)["error"]["code"] == "precondition_failed" and stale.headers["ETag"] == closed.headers["ETag"]
    )
    assert expect(mobile.call("GET", status_url, headers={"If-Match": "*"}), 200)["hint"] == "browser_closed"


def test_not_found_answers(mobile):
    """In the documented shape; who may see what is tests/test_api.py's."""
    for response in [
        mobile.call("GET", "/connect-attempts/no-such-attempt"),
        mobile.call("POST", "/connect-attempts/no-such-attempt/browser-closed"),
        mobile.call("DELETE", "/connections/987654"),
    ]:
        assert expect(response, 404)["error"]["code"] == "not_found"


def test_the_documented_wait_range_is_the_one_the_api_takes():
    """The document refuses every `wait` the API answers 400 (tests/test_hostile_input.py), and takes
    whole seconds from 0 to 25."""
    _, operation = find_operation("GET", f"{API_PREFIX}/connect-attempts/any")
    [wait] = [deref(p) for p in operation["parameters"] if deref(p)["name"] == "wait"]
    for raw in BAD_WAITS:
        value: Any = int(raw) if re.fullmatch(r"-?[0-9]+", raw) else raw  # \\d would take "٣"
        assert not accepts(wait["schema"], value), f"the document allows wait={raw!r} but the API refuses it"
    assert accepts(wait["schema"], 0) and accepts(wait["schema"], 25)


def test_bodies_that_are_not_json_objects_are_400(live_server, mobile):
    anonymous = Api(live_server.url)
    answers = [
        anonymous.call(
            "POST",
            "/tokens",
            data="email=ada%40example.com&password=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        anonymous.call("POST", "/tokens", data="{not json", headers={"Content-Type": "application/json"}),
        anonymous.call("POST", "/tokens", json=["ada@example.com", PASSWORD], valid_request=False),
        mobile.call(
            "POST",
            "/connect-attempts",
            data="providers=GARMIN",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        mobile.call("POST", "/connect-attempts", data="{not json", headers={"Content-Type": "application/json"}),
        mobile.call("POST", "/connect-attempts"),
    ]
    for response in answers:
        assert expect(response, 400)["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    "body, code",
    [
        ({"providers": []}, "invalid_providers"),
        ({"providers": "GARMIN"}, "invalid_providers"),
        ({"providers": ["GARMIN", 7]}, "invalid_providers"),
        ({"providers": ["GAR MIN"]}, "unknown_provider"),
        ({"providers": ["G"]}, "unknown_provider"),
        ({"language": "english"}, "invalid_language"),
        ({"language": 5}, "invalid_language"),
        ({"return": "browser"}, "invalid_return"),
    ],
)
def test_attempt_requests_the_document_forbids_are_400(mobile, body, code):
    assert not accepts(request_schema("POST", API_PREFIX + "/connect-attempts"), body)
    response = mobile.call("POST", "/connect-attempts", json=body, valid_request=False)
    assert expect(response, 400)["error"]["code"] == code


def test_an_unknown_provider_is_400_and_known_ones_are_accepted(mobile):
    response = mobile.call("POST", "/connect-attempts", json={"providers": ["NO_SUCH_PROVIDER"]})
    body = expect(response, 400)
    assert body["error"]["code"] == "unknown_provider" and "NO_SUCH_PROVIDER" in body["error"]["message"]
    created = start_attempt(mobile, {"providers": ["GARMIN", "oura"], "language": "zh_cn", "return": "page"})
    assert expect(mobile.call("GET", created["status_url"]), 200)["provider"] is None  # more than one
    # null is the same as leaving a field out, as the document says (start_attempt checks it allows it).
    start_attempt(mobile, {"providers": None, "language": None, "return": None})


def test_return_app_needs_a_deep_link_else_409(live_server, mobile):
    created = start_attempt(mobile, {"return": "app"})
    assert created["url"].startswith(live_server.url + "/sandbox/widget/")
    live_server.app.config["MOBILE_APP_SCHEME"] = ""
    live_server.app.config["MOBILE_UNIVERSAL_LINK_BASE"] = ""
    body = expect(mobile.call("POST", "/connect-attempts", json={"return": "app"}), 409)
    assert body["error"]["code"] == "deep_link_not_configured"


def test_sign_in_errors(live_server):
    Browser(live_server.url).register()
    anonymous = Api(live_server.url)
    schema = request_schema("POST", API_PREFIX + "/tokens")
    for body in (
        {"email": "ada@example.com"},
        {"email": "", "password": PASSWORD},
        {"email": "ada@example.com", "password": 12345},
    ):
        assert not accepts(schema, body), body
        response = anonymous.call("POST", "/tokens", json=body, valid_request=False)
        assert expect(response, 400)["error"]["code"] == "invalid_request"
    for body in (
        {"email": "ada@example.com", "password": "not the password"},
        {"email": "nobody@example.com", "password": PASSWORD},
    ):
        response = anonymous.call("POST", "/tokens", json=body)
        assert expect(response, 401)["error"]["code"] == "invalid_credentials"


def test_too_many_sign_ins_are_429(live_server):
    live_server.app.config["LOGIN_RATE_LIMIT"] = "2 per minute"
    anonymous = Api(live_server.url)
    wrong = {"email": "ada@example.com", "password": "not the password"}
    statuses = []
    for _ in range(3):
        response = anonymous.call("POST", "/tokens", json=wrong)
        check(response)
        statuses.append(response.status_code)
    assert statuses == [401, 401, 429]
    assert response.json()["error"]["code"] == "too_many_requests"


def test_too_many_connect_attempts_are_429(live_server, mobile):
    live_server.app.config["CONNECT_RATE_LIMIT"] = "1 per minute"
    start_attempt(mobile)
    body = expect(mobile.call("POST", "/connect-attempts", json={}), 429)
    assert body["error"]["code"] == "too_many_requests"


def test_terra_failures_are_502(start_live_server):
    # Terra's REST API unreachable: the widget and its webhooks still work, the rest does not.
    server = start_live_server(TERRA_API_BASE_URL="http://127.0.0.1:9/v2")
    api = register_and_sign_in(server)
    created = start_attempt(api)
    finish_widget(created["url"])  # the webhook alone decides; the return page is not visited
    connected = poll_until_terminal(api, created["status_url"])
    assert connected["status"] == "connected"

    refused = expect(api.call("DELETE", f"/connections/{connected['connection']['id']}"), 502)
    assert refused["error"]["code"] == "terra_unavailable"
    assert expect(api.call("GET", "/connections"), 200)["connections"][0]["status"] == "active"
    providers = expect(api.call("POST", "/connect-attempts", json={"providers": ["GARMIN"]}), 502)
    assert providers["error"]["code"] == "terra_unavailable"

    # Terra refusing a widget session (the sandbox's user cap, enforced at session creation).
    server.app.config.update(SANDBOX_USER_CAP_MODE="session", SANDBOX_USER_CAP=0)
    capped = expect(api.call("POST", "/connect-attempts", json={}), 502)
    assert capped["error"]["code"] == "terra_rejected"


# -- bearer authentication ----------------------------------------------------------------------

PROTECTED_OPERATIONS = sorted(
    (method, template) for method, template, operation in operations() if protected(operation)
)


def unauthorised_calls(server) -> list[tuple[str, requests.Response]]:
    """Every protected operation without a token, with another scheme, and with an unknown, a revoked and an
    expired token."""
    revoked = register_and_sign_in(server)
    assert expect(revoked.call("DELETE", "/tokens/current"), 204) is None
    expired = register_and_sign_in(server, "eve@example.com")
    with server.app.app_context():
        for token in db.session.scalars(db.select(ApiToken)).all():
            if token.revoked_at is None:
                token.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    callers = {
        "no token": Api(server.url),
        "unknown token": Api(server.url, "not-a-token"),
        "revoked token": revoked,
        "expired token": expired,
    }
    calls = []
    for who, api in callers.items():
        for method, template in PROTECTED_OPERATIONS:
            body = {} if method == "post" and template == "/connect-attempts" else None
            calls.append((f"{who}: {method.upper()} {template}", api.call(method, concrete(template), json=body)))
    for method, template in PROTECTED_OPERATIONS:
        response = Api(server.url).call(method, concrete(template), headers={"Authorization": "Basic YWRhOng="})
        calls.append((f"Basic credentials: {method.upper()} {template}", response))
    return calls


def test_protected_operations_refuse_callers_without_a_valid_token(live_server):
    assert len(PROTECTED_OPERATIONS) == 9
    codes = set()
    for name, response in unauthorised_calls(live_server):
        assert response.status_code == 401, f"{name}: {response.status_code} {response.text[:200]}"
        body = check(response)  # Error body, Cache-Control and the documented WWW-Authenticate challenge
        # RFC 6750 §3.1: with no bearer token, the bare challenge; with a bad one, error="invalid_token".
        challenge = response.headers["WWW-Authenticate"]
        if body["error"]["code"] == "invalid_token":
            assert challenge.startswith('Bearer error="invalid_token"'), name
        else:
            assert challenge == "Bearer", name
        codes.add(body["error"]["code"])
    assert codes == {"missing_authorization", "invalid_token", "unsupported_token_type"}
