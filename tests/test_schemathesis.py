"""The mobile API fuzzed against its own OpenAPI document (docs/openapi.json) with schemathesis.

Every documented operation gets requests that Hypothesis generates from the document, sent over real
HTTP to the app and its Terra sandbox (`start_live_server`), and every answer must pass
schemathesis's checks: no 5xx, a documented status code, the documented content type, a body that
matches the documented schema, and the documented headers (e.g. `Cache-Control: no-store`).

It is an ordinary pytest test (collected by `make test`) and deterministic: Hypothesis runs
derandomized (a fixed seed derived from each test) with a bounded number of examples per operation
and no example database, so every run, on SQLite and on PostgreSQL, sends the same requests.

Three passes per operation:
- positive, every input generated (ids are random, so mostly 404 for id-bearing paths);
- positive, with the caller's own attempt and connection as path ids (the 200 and 202 answers);
- negative (inputs that break the document), where only the absence of 5xx is required: the answer to
  an invalid request may legitimately be an undocumented 404 from routing. Once with a valid token
  (so the broken body, path or query reaches the handler), once sending the broken `Authorization`
  header the generator made where it made one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks
from schemathesis.generation import GenerationMode

from extensions import db
from models import Connection, User
from sandbox.models import SandboxUser
from services.api_tokens import issue_token
from terra_integration.reference_ids import new_reference_id
from tests.helpers import create_attempt

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
SCHEMA = schemathesis.openapi.from_path(DOCUMENT)
OPERATIONS = {operation.label: operation for operation in (result.ok() for result in SCHEMA.get_all_operations())}
EXAMPLES_PER_OPERATION = 25
LONGEST_WAIT_SECONDS = 1  # a generated `?wait=25` with a matching If-None-Match would hold the run for 25 s
CONFORMANCE = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
HYPOTHESIS = settings(
    derandomize=True,  # the fixed seed: the same examples on every run
    database=None,  # no replay of examples from earlier runs: what runs is only what the seed gives
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,  # real HTTP; Terra's sandbox is called on some paths
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
# Operations that take input a negative example can break (the document itself takes none).
WITH_INPUT = sorted(
    label
    for label, operation in OPERATIONS.items()
    if operation.path_parameters or operation.query or operation.headers or operation.body
)
WITH_IDS = sorted(label for label, operation in OPERATIONS.items() if operation.path_parameters)


def test_every_documented_operation_is_fuzzed():
    assert len(OPERATIONS) == 11, sorted(OPERATIONS)
    assert "GET /openapi.json" in OPERATIONS and "DELETE /connections/{connection_id}" in OPERATIONS
    assert "GET /connections/{connection_id}/summary" in OPERATIONS


class Caller:
    """A user with a connect attempt and a connection, and a valid bearer token: a new one whenever
    `DELETE /tokens/current` (one of the operations) has revoked the last."""

    def __init__(self, server):
        self.server = server
        with server.app.app_context():
            user = User(email="fuzz@example.com", password_hash="not-used", reference_id=new_reference_id())
            db.session.add(user)
            db.session.commit()
            attempt = create_attempt(user, channel="mobile", return_mode="page")
            connection = Connection(
                user_id=user.id, terra_user_id="fuzz-terra-user", provider="GARMIN", scopes="ACTIVITY_EXPORT"
            )
            db.session.add(connection)
            # Known to the sandbox too, so that asking Terra for its history can succeed.
            db.session.add(SandboxUser(user_id=connection.terra_user_id, provider="GARMIN", account="fuzz"))
            db.session.commit()
            self.user_id, self.attempt_id, self.connection_id = user.id, attempt.id, connection.id
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            with self.server.app.app_context():
                self._token, _ = issue_token(db.session.get(User, self.user_id))
        return self._token

    def answered(self, operation, response) -> None:
        if operation.label == "DELETE /tokens/current" and response.status_code == 204:
            self._token = None  # whichever token made the call is revoked now

    def own_ids(self, operation) -> dict:
        ids = {"attempt_id": self.attempt_id, "connection_id": self.connection_id}
        return {parameter.name: ids[parameter.name] for parameter in operation.path_parameters}


@pytest.fixture
def caller(start_live_server) -> Caller:
    # Sign-in and starting attempts are rate limited to 10 a minute; the fuzzer should reach the
    # handler, not the limiter.
    # History requests too, with a short history to send.
    server = start_live_server(
        LOGIN_RATE_LIMIT="10000 per minute",
        CONNECT_RATE_LIMIT="10000 per minute",
        DATA_REQUEST_RATE_LIMIT="10000 per minute",
        SANDBOX_HISTORY_DAYS="1",
    )
    return Caller(server)


def run(caller: Caller, operation, strategy, conformance_checks, *, broken_credentials: bool = False) -> list[int]:
    """Send every example `strategy` gives; return the status codes of the answers. Hypothesis reports the first
    failing example with schemathesis's explanation and a curl command to reproduce it.

    Each request carries a valid token, except that with `broken_credentials` an `Authorization`
    header the generator broke on purpose is sent as it is."""
    sent = []
    waited = set()  # whether the long-polls held so far carried If-None-Match

    @HYPOTHESIS
    @given(case=strategy)
    def send(case):
        generated = {name.lower() for name in (case.headers or {})}
        if isinstance(case.query, dict) and isinstance(case.query.get("wait"), int):
            case.query["wait"] = min(case.query["wait"], LONGEST_WAIT_SECONDS)
            # A pending attempt holds each long-poll the whole second: one of each kind (with and without
            # If-None-Match) a pass, the others asked not to wait.
            if case.query["wait"] > 0:
                kind = "if-none-match" in generated
                if kind in waited:
                    case.query["wait"] = 0
                waited.add(kind)
        keep = broken_credentials and "authorization" in generated
        headers = {} if keep else {"Authorization": f"Bearer {caller.token()}"}
        response = case.call(base_url=caller.server.url + "/api/v1", headers=headers, timeout=30)
        caller.answered(operation, response)
        case.validate_response(response, checks=conformance_checks)
        sent.append(response.status_code)

    send()
    return sent


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_generated_requests_get_documented_answers(caller, label):
    operation = OPERATIONS[label]
    assert run(caller, operation, operation.as_strategy(GenerationMode.POSITIVE), CONFORMANCE)


@pytest.mark.parametrize("label", WITH_IDS)
def test_generated_requests_on_the_callers_own_objects_get_documented_answers(caller, label):
    operation = OPERATIONS[label]
    strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=caller.own_ids(operation))
    statuses = run(caller, operation, strategy, CONFORMANCE)
    # The caller's own objects exist: unless some request reached the handler and succeeded, the
    # pass proved only that refusals are documented.
    assert any(200 <= status < 300 for status in statuses), statuses


@pytest.mark.parametrize("broken_credentials", [False, True], ids=["valid token", "generated Authorization"])
@pytest.mark.parametrize("label", WITH_INPUT)
def test_requests_that_break_the_document_never_get_a_server_error(caller, label, broken_credentials):
    operation = OPERATIONS[label]
    strategy = operation.as_strategy(GenerationMode.NEGATIVE)
    assert run(caller, operation, strategy, [checks.not_a_server_error], broken_credentials=broken_credentials)
