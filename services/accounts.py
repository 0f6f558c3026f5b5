"""The app's accounts: signing up, and finding the user that an email and a password sign in.

The web pages (blueprints/auth.py) and the API's token endpoint (blueprints/api.py) both ask here.
"""

from __future__ import annotations

import functools
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from extensions import db
from models import User
from terra_integration.reference_ids import new_reference_id


class EmailTaken(ValueError):
    pass


def normalise_email(email: str) -> str:
    return email.strip().lower()


def hash_password(password: str) -> str:
    return generate_password_hash(password)


@functools.cache
def _dummy_password_hash() -> str:
    # Made once per process, by the same function (algorithm and cost) as every real hash.
    return hash_password(secrets.token_urlsafe(32))


def register(email: str, password: str) -> User:
    """A new user with their own reference_id, committed; EmailTaken if the address has an account."""
    user = User(email=normalise_email(email), password_hash=hash_password(password), reference_id=new_reference_id())
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise EmailTaken(email) from None
    return user


def find_user_by_credentials(email: str, password: str) -> User | None:
    """The user these credentials sign in, or None. An unknown email is checked against a dummy hash,
    so it costs the same time as a wrong password and the answer's timing does not tell which
    addresses have an account."""
    user = db.session.scalars(select(User).where(func.lower(User.email) == normalise_email(email))).first()
    matches = check_password_hash(user.password_hash if user is not None else _dummy_password_hash(), password)
    return user if user is not None and matches else None
