"""Bearer tokens for the mobile app: issue, check (through Authlib), revoke.

The token is 256 random bits handed out once; the database keeps only its SHA-256, so a copy of the
table cannot be replayed. Authlib's ResourceProtector does the RFC 6750 parsing and error answers.

A status poller sends the same token every second or two, so a successful check is kept in the
worker for `API_TOKEN_CACHE_SECONDS` (docs/performance.md: the lookup was a fifth of a status
request's cost). Revoking evicts the token in the worker that revokes it at once; other workers
stop accepting it within that many seconds. Only valid tokens are kept, so a new token works at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from cachetools import TTLCache
from flask import abort, current_app
from sqlalchemy import select, update

from extensions import db
from models import ApiToken, User
from models.api_token import hash_token, new_token
from models.time import clock, utcnow
from services.json_errors import json_error

LAST_USED_RESOLUTION = timedelta(minutes=5)
TOKEN_CACHE_MAX_ENTRIES = 10_000  # a bound on memory, far above one worker's active pollers


@dataclass(frozen=True)
class CheckedToken:
    """What a request needs to know of its token: a plain value, safe to share between threads."""

    id: int
    user_id: int
    token_hash: str
    expires_at: datetime
    revoked_at: datetime | None

    # The questions Authlib's BearerTokenValidator asks, answered as the model answers them.
    is_expired = ApiToken.is_expired
    is_revoked = ApiToken.is_revoked
    get_scope = ApiToken.get_scope


class TokenCache:
    """Token hash -> CheckedToken, each trusted for `seconds` (0: expired at once), per worker process.
    When full, the least recently used token goes first. The lock is there because cachetools'
    caches are not thread-safe (even a read reorders and expires entries)."""

    def __init__(self, seconds: float):
        self.tokens: TTLCache[str, CheckedToken] = TTLCache(TOKEN_CACHE_MAX_ENTRIES, ttl=seconds, timer=clock.monotonic)
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> CheckedToken | None:
        with self._lock:
            return self.tokens.get(token_hash)

    def put(self, token: CheckedToken) -> None:
        with self._lock:
            self.tokens[token.token_hash] = token

    def evict(self, token_hash: str) -> None:
        with self._lock:
            self.tokens.pop(token_hash, None)


def init_app(app) -> None:
    app.extensions["api_token_cache"] = TokenCache(app.config["API_TOKEN_CACHE_SECONDS"])


def token_cache() -> TokenCache:
    return current_app.extensions["api_token_cache"]


def issue_token(user: User) -> tuple[str, int]:
    """A new token for `user`: (the token itself, its lifetime in seconds)."""
    lifetime = current_app.config["API_TOKEN_LIFETIME_SECONDS"]
    token = new_token()
    db.session.add(
        ApiToken(user_id=user.id, token_hash=hash_token(token), expires_at=utcnow() + timedelta(seconds=lifetime))
    )
    db.session.commit()
    return token, lifetime


def revoke(token: CheckedToken) -> None:
    db.session.execute(update(ApiToken).where(ApiToken.id == token.id).values(revoked_at=utcnow()))
    db.session.commit()
    token_cache().evict(token.token_hash)


def check_token(token_string: str) -> CheckedToken | None:
    """The token's facts, from this worker's cache or the database (None: no such token)."""
    token_hash = hash_token(token_string)
    cache = token_cache()
    token = cache.get(token_hash)
    if token is not None:
        return token
    row = db.session.execute(
        select(ApiToken.id, ApiToken.user_id, ApiToken.expires_at, ApiToken.revoked_at, ApiToken.last_used_at).where(
            ApiToken.token_hash == token_hash
        )
    ).first()
    if row is None:
        return None
    token = CheckedToken(
        id=row.id, user_id=row.user_id, token_hash=token_hash, expires_at=row.expires_at, revoked_at=row.revoked_at
    )
    if not token.is_expired() and not token.is_revoked():
        _note_use(token.id, row.last_used_at)
        cache.put(token)
    return token


def _note_use(token_id: int, last_used_at: datetime | None) -> None:
    # Coarse on purpose: a poll every second must not become a database write every second.
    now = utcnow()
    if last_used_at is None or now - last_used_at > LAST_USED_RESOLUTION:
        db.session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
        db.session.commit()


class HashedBearerTokenValidator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> CheckedToken | None:
        return check_token(token_string)


class BearerTokenProtector(ResourceProtector):
    """Authlib's protector, answering in the API's error shape. A token that is not valid keeps
    Authlib's challenge, `Bearer error="invalid_token", ...`; a request with no bearer token at all
    gets the bare `Bearer` challenge, with no error code (RFC 6750 §3.1)."""

    def raise_error_response(self, error):
        message = error.get_error_description() or "a valid bearer token is required"
        headers = dict(error.get_headers())
        if not isinstance(error, InvalidTokenError):
            headers["WWW-Authenticate"] = "Bearer"
        abort(json_error(error.status_code, error.error or "unauthorized", message, headers))


require_token = BearerTokenProtector()
require_token.register_token_validator(HashedBearerTokenValidator())
