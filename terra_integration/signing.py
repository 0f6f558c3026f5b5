"""itsdangerous serializers keyed by the app's SECRET_KEY (plus Flask's SECRET_KEY_FALLBACKS), one salt per purpose."""

from __future__ import annotations

from flask import current_app
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer


def signing_keys() -> list[str]:
    # Oldest first, current last: the last key signs, every key still verifies (rotation).
    return [*(current_app.config["SECRET_KEY_FALLBACKS"] or ()), current_app.config["SECRET_KEY"]]


def serializer(salt: str) -> URLSafeSerializer:
    return URLSafeSerializer(signing_keys(), salt=salt)


def timed_serializer(salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_keys(), salt=salt)
