"""The absolute URLs the app hands out (to Terra, to mobile apps, to the sandbox's callers), built from
PUBLIC_BASE_URL alone: never from the request's Host, X-Forwarded-* or script root, which a client
can set and which would then send users to another site."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import current_app


def public_url(endpoint: str, **values: Any) -> str:
    """The URL of `endpoint` (its full name, `blueprint.view`) on PUBLIC_BASE_URL; values the route
    does not take become its query string."""
    origin = urlsplit(current_app.config["PUBLIC_BASE_URL"])
    adapter = current_app.url_map.bind(origin.netloc, url_scheme=origin.scheme)
    return adapter.build(endpoint, values, force_external=True)
