"""The status poll's fast path: `GET /api/v1/connect-attempts/<id>` answered in front of Flask when
the answer needs nothing of Flask's.

Nearly every status request is an app polling an attempt where nothing has happened yet. For that
answer, Flask's request machinery (request and app contexts, the limiter's and the session's hooks,
Authlib's request wrapper, the session teardown) cost twice the work of the answer itself
(docs/performance.md). So this WSGI middleware answers the two common polls itself, by the same
rules and with the same bytes and headers as `blueprints.api.get_attempt`:
- 304: a bearer token this worker has already checked (the token cache of services/api_tokens.py),
  an If-None-Match naming the version of the attempt's state as this worker keeps it
  (services/attempt_states.py), nothing due to change it in time;
- 200 for a pending attempt without a connection, without If-None-Match: the same checks.
Both without a query when the worker keeps the attempt's state, else with one read (then kept).
Anything else goes to Flask, which answers it as before: a long-poll (`?wait=`), an If-Match, a token not yet
checked or no longer good, a settled or due attempt, another caller's attempt, a poll over the
limit, an untrusted Host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from flask import Flask
from werkzeug.exceptions import SecurityError
from werkzeug.http import parse_etags
from werkzeug.wsgi import get_host

from blueprints import api  # the view's own rules
from extensions import db
from models import AttemptStatus
from models.api_token import hash_token
from services import attempt_states, attempts, long_poll

STATUS_PATH = re.compile(f"{api.bp.url_prefix}/connect-attempts/({api.ATTEMPT_ID.pattern})")

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


class StatusFastPath:
    def __init__(self, app: Flask, wsgi_app: WsgiApp, headers: Mapping[str, str]):
        self.app = app
        self.wsgi_app = wsgi_app
        self.headers = [*headers.items(), ("Cache-Control", "no-store")]
        with app.app_context():
            self.engine = db.engine

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        # If-Match (a 412 to decide) is rare: Flask's.
        if environ["REQUEST_METHOD"] == "GET" and not environ.get("QUERY_STRING") and "HTTP_IF_MATCH" not in environ:
            match = STATUS_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match:
                answer = self._answer(environ, match.group(1))
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, headers)
                    return [body]
        return self.wsgi_app(environ, start_response)

    def _answer(self, environ: dict, attempt_id: str) -> tuple[str, list, bytes] | None:
        user_id = self._caller(environ)
        if user_id is None:
            return None
        config = self.app.config
        state = self._state(attempt_id)
        if state is None or state.user_id != user_id or attempts.change_due(state, config):
            return None  # Flask: a 404, or the attempt brought up to date first
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match:
            if not api.etag_matches(parse_etags(if_none_match), state):
                return None
        elif state.status != AttemptStatus.PENDING or state.connection_id is not None:
            return None  # its connection is shown too: Flask
        if long_poll.count_poll(user_id, attempt_id, self.app) is not None:
            return None  # Flask answers the 429
        if if_none_match:
            return "304 NOT MODIFIED", [("ETag", f'"{state.version}"'), *self.headers], b""
        json = self.app.json.response(api.status_body(state, None, config))  # what jsonify gives the view
        body = json.get_data()
        headers = [
            ("Content-Type", json.content_type),
            ("Content-Length", str(len(body))),
            ("ETag", f'"{state.version}"'),
            *self.headers,
        ]
        return "200 OK", headers, body

    def _state(self, attempt_id: str):
        """The attempt's state, as this worker keeps it, else from one read (then kept)."""
        states = attempt_states.states(self.app)
        state = states.get(attempt_id)
        if state is None:
            generation = states.generation()
            with self.engine.connect() as connection:
                state = connection.execute(attempt_states.POLL_STATE, {"attempt_id": attempt_id}).first()
            if state is not None:
                states.put(state, generation)
        return state

    def _caller(self, environ: dict) -> int | None:
        """The user of a bearer token this worker has checked and that is still good, if the request
        comes to a trusted host; else None (Flask decides)."""
        trusted = self.app.config["TRUSTED_HOSTS"]
        if trusted:
            try:
                get_host(environ, trusted)
            except SecurityError:
                return None
        parts = environ.get("HTTP_AUTHORIZATION", "").split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return None
        token = self.app.extensions["api_token_cache"].get(hash_token(parts[1]))
        if token is None or token.is_expired() or token.is_revoked():
            return None
        return token.user_id
