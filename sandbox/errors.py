"""Error answers in the shape each emulated surface uses.

- `/sandbox/api/v2/...` (Terra's new host): RFC 9457 problem details, `application/problem+json`.
- `/sandbox/v2/...` and the widget session endpoints: `{"status": "error", "message": ...}`.
- The sandbox's own automation and console endpoints: the app's `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from flask import Response, jsonify, request

PROBLEM_SURFACE_PREFIX = "/sandbox/api/v2/"


class TerraApiError(Exception):
    """Raised by the emulated Terra endpoints; rendered in the shape of the surface it came from."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def render_terra_error(error: TerraApiError) -> Response:
    if request.path.startswith(PROBLEM_SURFACE_PREFIX):
        return problem_response(error.status, error.message)
    response = jsonify(status="error", message=error.message)
    response.status_code = error.status
    return response


def problem_response(status: int, detail: str) -> Response:
    query = request.query_string.decode("utf-8", "replace")
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase.lower(),
        "instance": request.path + (f"?{query}" if query else ""),
        "detail": detail,
    }
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def sandbox_error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(error={"code": code, "message": message}), status
