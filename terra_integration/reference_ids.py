"""A user's Terra `reference_id`: random, opaque, signed, and never timed.

It is random rather than derived from the email or row id, so it reveals nothing when it travels
through redirect URLs, Terra's dashboard and logs. It is signed so that a value coming back from a
redirect or webhook can be rejected before any database lookup. It never expires, because Terra
echoes it in reauth and deauth events for as long as the connection lives.
"""

from __future__ import annotations

import secrets
from typing import Any

from itsdangerous import BadSignature

from terra_integration.host import bound
from terra_integration.signing import serializer

SALT = "terra-reference-id-v1"


def new_reference_id() -> str:
    return serializer(SALT).dumps(secrets.token_urlsafe(12))  # about 50 characters


def is_authentic(reference_id: str | None) -> bool:
    if not reference_id:
        return False
    try:
        serializer(SALT).loads(reference_id)
    except BadSignature:
        return False
    return True


def owner_of(reference_id: str | None) -> Any | None:
    """The host's user with this reference_id. A forged or foreign id is rejected by its signature,
    before the database is asked."""
    if not is_authentic(reference_id):
        return None
    return bound().host.find_owner(reference_id)
