"""Redirect URLs: which ones a session may name, and how Terra's parameters are added to them."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MAX_URL_LENGTH = 2048
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
# Schemes that run code, read local files or carry inline content: never a place to send a user.
_FORBIDDEN_SCHEMES = frozenset(
    {"javascript", "vbscript", "data", "file", "blob", "filesystem", "about", "view-source", "ftp", "ws", "wss"}
)


def redirect_url_problem(url: object) -> str | None:
    """Why `url` cannot be a redirect target, or None when it can.

    Accepted: http(s) URLs with a host, and app deep links of the form `scheme://...`.
    """
    if not isinstance(url, str):
        return "must be a string"
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return "must not contain spaces or control characters"
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or not _SCHEME.fullmatch(scheme):
        return "must be an http(s):// URL or an app link such as myapp://path"
    if scheme in _FORBIDDEN_SCHEMES:
        return f"must not use the {scheme}: scheme"
    if scheme in ("http", "https") and not urlsplit(url).hostname:
        return "must name a host"
    if not rest:
        return "must have something after ://"
    return None


def merge_query(url: str, params: dict[str, str]) -> str:
    """`url` with `params` merged into its query string: existing parameters stay, ours replace
    any of the same name, and there is never a second `?`."""
    parts = urlsplit(url)
    kept = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key not in params]
    query = urlencode(kept + list(params.items()))
    return urlunsplit(parts._replace(query=query))
