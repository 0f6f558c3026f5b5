"""The app's JSON error answer, `{"error": {"code", "message"}}`, built here only.

The API, its bearer-token checks and the app-wide error handlers (for JSON clients) answer with it.
The Terra webhook view and the sandbox write the same shape themselves: each can be lifted out of (or
removed from) the app on its own, so neither imports the app's services.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flask import Response, jsonify


def json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()
) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    response.headers.update(headers)
    return response
