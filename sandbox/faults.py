"""Switchable faults: the sandbox misbehaves on purpose, the way a real Terra (or the network in
between) sometimes does, so that the app's handling of each failure can be seen and tested.

Faults of Terra's endpoints (widget sessions, authenticateUser, deauthenticateUser, userInfo,
integrations, subscriptions; not the widget pages, the automation endpoint or the console):

- `slow`: the request is handled, then the answer is held for SANDBOX_SLOW_SECONDS (default 15),
  longer than the app's client waits. Terra did the work; the caller never hears about it. Combined
  with an error fault, the error answer is the one held back.
- `5xx`: 503 with a JSON error body, in the shape of the host (`{status, message}` or problem+json).
- `429`: 429 `{"detail": "rate limit exceeded"}` (problem+json on the access host) with
  `Retry-After: <SANDBOX_RETRY_AFTER_SECONDS>`.
- `reset`: the connection is closed without any answer.
- `malformed`: 200 with a body that is not JSON (an HTML page, as a proxy in the way would send).

Misconfigurations (the app's settings, not Terra, are wrong; every Terra endpoint answers so):

- `wrong_base_url`: 404 with an HTML page, as a web server or proxy answers a wrong TERRA_API_BASE_URL.
- `invalid_dev_id`: 404 `{"status": "error", "message": "Invalid dev-id was provided"}` (problem+json
  on the access host), Terra's answer to a dev-id it does not know.
- `rejected_api_key`: 401 `unauthorized`, Terra's answer to an API key it does not accept.

When several are on, the first of reset, 5xx, 429, malformed, wrong_base_url, invalid_dev_id,
rejected_api_key applies; `slow` adds to any of them.

Faults of webhook delivery (each batch: the events of one completed flow or one user event):

- `duplicate`: every event is delivered twice, with the same trace id, by two concurrent senders.
- `reorder`: the batch waits SANDBOX_REORDER_WINDOW_SECONDS (default 2); every batch started
  meanwhile joins it, and the lot is delivered in reverse order: `auth` before `user_reauth`, or a
  `deauth` before the `auth` it follows.
- `late`: the batch waits SANDBOX_LATE_SECONDS before its first try (default: the widget session
  lifetime plus 30 s, so it arrives after the app's connect attempt expired).

- `stale_signature`: retries keep the first delivery's `t=` (and so its signature) instead of being
  signed afresh; Terra does not say which it does. A retry later than the receiver's tolerance fails.
- `s3_payload`: data events are delivered the way ping-mode destinations get them, as an `s3_payload`
  event whose `url` the receiver downloads (the sandbox serves it at `/sandbox/payloads/<id>`).

Retries after a non-2xx answer are not a fault: the sandbox always retries, as Terra does.

Variants of a widget flow (shapes Terra's documents allow, or leave open, that are not the default):

- `relink_across_users`: a provider account already connected under another reference_id is a
  re-link, as Terra does it: the earlier Terra user is deleted, and `user_reauth` names it as
  `old_user` (under the earlier reference_id) and the new user (under this one) as `new_user`.
  By default only the same account under the same reference_id is a re-auth.
- `reauth_keeps_old_user`: after a re-authentication (or a re-link) userInfo still lists the earlier
  Terra user, inactive, instead of not at all. Terra deletes it; the sandbox used to keep it.
- `foreign_flow_id`: auth events carry a `flow_id` that is not the widget session id (nothing in
  Terra's contract says it is), so an `auth_cancelled` names no session the app knows.
- `appended_redirect`: Terra's parameters are appended as `?user_id=…&resource=…&reference_id=…`,
  as its docs literally describe, instead of being merged into the redirect URL's query string.

Switching them:

- per run: `SANDBOX_FAULTS=slow,5xx` in the environment; at runtime `app.config["SANDBOX_FAULTS"]`
  (a list, or the same comma-separated string), which the console page can also set;
- per request: the header `X-Sandbox-Fault: <name>[,<name>...]` on any sandbox request. On a Terra
  endpoint it adds REST faults to that request; on a request that sends webhooks (the automation
  endpoint `/sandbox/widget/<id>/complete`, the widget's decision form, deauthenticateUser, the
  console's event endpoint) it adds webhook faults to what that request sends. The app's own Terra
  client never sends it: tests and walkthroughs do. An unknown name is answered with 400.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import wraps
from typing import Any

from flask import Response, current_app, has_request_context, request

from extensions import db
from sandbox.errors import PROBLEM_SURFACE_PREFIX, TerraApiError, problem_response, render_terra_error
from sandbox.traffic import TerraRequest, current_traffic

FAULT_HEADER = "X-Sandbox-Fault"
MISCONFIGURATIONS = ("wrong_base_url", "invalid_dev_id", "rejected_api_key")
REST_FAULTS = ("slow", "5xx", "429", "reset", "malformed", *MISCONFIGURATIONS)
# The faults that replace the answer, in order of precedence; `slow` only delays whatever answer goes out.
ANSWER_FAULTS = ("reset", "5xx", "429", "malformed", *MISCONFIGURATIONS)
WEBHOOK_FAULTS = ("duplicate", "reorder", "late", "stale_signature", "s3_payload")
FLOW_VARIANTS = ("relink_across_users", "reauth_keeps_old_user", "foreign_flow_id", "appended_redirect")
ALL_FAULTS = (*REST_FAULTS, *WEBHOOK_FAULTS, *FLOW_VARIANTS)
LATE_MARGIN_SECONDS = 30  # the default `late` delay is the session lifetime plus this

NOT_FOUND_PAGE = (
    b"<!doctype html><html><head><title>404 Not Found</title></head>"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>"
)
MALFORMED_BODY = (
    b"<!doctype html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is under maintenance.</p></body></html>"
)


class UnknownFault(ValueError):
    pass


def parse_fault_names(value: object) -> tuple[str, ...]:
    """`"slow, 5xx"` or `["slow", "5xx"]` → `("slow", "5xx")`; UnknownFault for a name not in ALL_FAULTS."""
    if value is None:
        return ()
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value  # type: ignore[union-attr]
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in ALL_FAULTS:
            raise UnknownFault(f"unknown fault {name!r}; known faults: {', '.join(ALL_FAULTS)}")
        if name not in names:
            names.append(name)
    return tuple(names)


def run_faults(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The faults switched on for the whole run (SANDBOX_FAULTS)."""
    return parse_fault_names(config.get("SANDBOX_FAULTS"))


def request_faults() -> tuple[str, ...]:
    """The faults the current request asks for in its X-Sandbox-Fault header (none outside a request)."""
    if not has_request_context():
        return ()
    return parse_fault_names(request.headers.get(FAULT_HEADER))


def active_faults(config: Mapping[str, Any], family: tuple[str, ...]) -> tuple[str, ...]:
    wanted = set(run_faults(config)) | set(request_faults())
    return tuple(name for name in family if name in wanted)


def webhook_faults(config: Mapping[str, Any]) -> tuple[str, ...]:
    return active_faults(config, WEBHOOK_FAULTS)


def flow_variant(config: Mapping[str, Any], name: str) -> bool:
    """Whether the flow variant `name` (one of FLOW_VARIANTS) is switched on for this run or request."""
    return name in active_faults(config, FLOW_VARIANTS)


def late_seconds(config: Mapping[str, Any]) -> float:
    configured = config.get("SANDBOX_LATE_SECONDS")
    if configured is not None:
        return float(configured)
    return float(config["SANDBOX_SESSION_TTL_SECONDS"]) + LATE_MARGIN_SECONDS


def check_fault_names() -> None:
    """Before every sandbox request, before any work: a misspelt fault must not pass silently as
    "no fault". A bad header is the caller's mistake (400); a bad runtime setting is ours (500)."""
    try:
        request_faults()
    except UnknownFault as problem:
        raise TerraApiError(400, f"{FAULT_HEADER}: {problem}") from None
    try:
        run_faults(current_app.config)
    except UnknownFault as problem:
        raise TerraApiError(500, f"SANDBOX_FAULTS: {problem}") from None


# -- faults of Terra's endpoints ------------------------------------------------------------------


def terra_endpoint(view: Callable) -> Callable:
    """Wrap an emulated Terra endpoint: record the call, then apply the REST faults switched on."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        config = current_app.config
        faults = active_faults(config, REST_FAULTS)
        traffic = current_traffic()
        if traffic is not None:
            traffic.record_request(TerraRequest(request.method, request.path, request.endpoint or "", faults))
        response = _fault_answer(faults)
        if response is None:
            try:
                response = current_app.make_response(view(*args, **kwargs))
            except TerraApiError as error:
                response = render_terra_error(error)
        if "slow" in faults:
            # The work is done and committed; give the connection back before holding the answer.
            db.session.close()
            time.sleep(float(config["SANDBOX_SLOW_SECONDS"]))
        return response

    return wrapped


def _fault_answer(faults: tuple[str, ...]) -> Response | None:
    fault = next((name for name in ANSWER_FAULTS if name in faults), None)
    if fault == "reset":
        return _reset_connection()
    if fault == "5xx":
        return render_terra_error(
            TerraApiError(503, "Service temporarily unavailable, please try again later (sandbox fault 5xx)")
        )
    if fault == "429":
        return rate_limited("r2", int(current_app.config["SANDBOX_RETRY_AFTER_SECONDS"]))
    if fault == "malformed":
        return Response(MALFORMED_BODY, status=200, mimetype="text/html")
    if fault == "wrong_base_url":
        return Response(NOT_FOUND_PAGE, status=404, mimetype="text/html")
    if fault == "invalid_dev_id":
        return render_terra_error(TerraApiError(404, "Invalid dev-id was provided"))
    if fault == "rejected_api_key":
        return render_terra_error(TerraApiError(401, "unauthorized"))
    return None


def rate_limited(rule: str, retry_after: int | None) -> Response:
    """Terra's 429 for rate-limit `rule` (r1: one request's span, no Retry-After; r2: the hourly budget)."""
    # `{"detail": ...}` on the old host; a full problem+json body on the access host, as its spec says.
    if request.path.startswith(PROBLEM_SURFACE_PREFIX):
        response = problem_response(429, "rate limit exceeded")
    else:
        response = Response(json.dumps({"detail": "rate limit exceeded"}), status=429, mimetype="application/json")
    response.headers["X-Terra-RateLimit-Rule"] = rule
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _reset_connection() -> Response:
    """Drop the connection without an answer, under the Werkzeug server and gunicorn alike.

    The raw socket (`werkzeug.socket`, `gunicorn.socket`) is shut down so the client sees the
    connection close with no response at all. The shutdown happens while the server iterates the
    body, after Flask is done, and the ConnectionResetError raised there is what both servers treat
    as a dropped client: they write nothing and close the connection without logging an error.
    """
    environ = request.environ
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")

    def drop() -> Iterator[bytes]:
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
        raise ConnectionResetError(errno.ECONNRESET, "sandbox fault: connection reset")
        yield b""  # pragma: no cover  (makes this a generator)

    return Response(drop(), status=200, mimetype="application/json")
