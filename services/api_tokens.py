"""Bearer tokens for the mobile app: issue, check (through Authlib), revoke.

The token is 256 random bits handed out once; the database keeps only its SHA-256, so a copy of the
table cannot be replayed. Authlib's ResourceProtector does the RFC 6750 parsing and error answers.
"""

from __future__ import annotations

import json
from datetime import timedelta


from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Response, abort, current_app
from sqlalchemy import select

from extensions import db
from models import ApiToken, User
from models.api_token import hash_token, new_token
from models.time import utcnow


LAST_USED_RESOLUTION = timedelta(minutes=5)


def issue_token(user: User) -> tuple[str, int]:
    """A new token for `user`: (the token itself, its lifetime in seconds)."""
    lifetime = current_app.config["API_TOKEN_LIFETIME_SECONDS"]
    token = new_token()
    db.session.add(ApiToken(user_id=user.id, token_hash=hash_token(token),
                            expires_at=utcnow() + timedelta(seconds=lifetime)))
    db.session.commit()
    return token, lifetime


def revoke(token: ApiToken) -> None:
    token.revoked_at = utcnow()
    db.session.commit()


class HashedBearerTokenValidator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> ApiToken | None:
        token = db.session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token_string))).first()
        if token is not None and not token.is_expired() and not token.is_revoked():
            now = utcnow()
            # Coarse on purpose: a poll every second must not become a database write every second.
            if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
                token.last_used_at = now
                db.session.commit()
        return token


class BearerTokenProtector(ResourceProtector):
    """Authlib's protector, answering in the API's error shape; status and `WWW-Authenticate`
    (RFC 6750: `Bearer error="invalid_token"`) stay Authlib's."""

    def raise_error_response(self, error):
        message = error.get_error_description() or "a valid bearer token is required"
        body = json.dumps({"error": {"code": error.error or "unauthorized", "message": message}})
        abort(Response(body, status=error.status_code, headers=error.get_headers()))


require_token = BearerTokenProtector()
require_token.register_token_validator(HashedBearerTokenValidator())
