"""The app's accounts: signing up (with a password that is not among the most common, nor the email),
and finding the user that an email and a password sign in.

The web pages (blueprints/auth.py) and the API's token endpoint (blueprints/api.py) both ask here.
"""

from __future__ import annotations

import functools
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash
from zxcvbn import zxcvbn

from extensions import db
from models import User
from terra_integration.reference_ids import new_reference_id

# zxcvbn's score, 0 to 4: below 2 a password falls within a million guesses (its common-password,
# name and word lists, keyboard patterns, repeats, and what the user typed besides).
MIN_PASSWORD_SCORE = 2
# zxcvbn's own bound: its work grows with the square of the length; the first 72 characters tell enough.
ESTIMATED_PASSWORD_LENGTH = 72


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


def password_problem(email: str, password: str) -> str | None:
    """Why `password` may not protect a new account for `email`, in words for the form, or None."""
    email = normalise_email(email)
    own_words = [email, email.rpartition("@")[0]]
    if password.strip().lower() in own_words:
        return "The password must not be your email address or its part before the @."
    estimate = zxcvbn(password[:ESTIMATED_PASSWORD_LENGTH], user_inputs=own_words)
    if estimate["score"] < MIN_PASSWORD_SCORE:
        why = estimate["feedback"]["warning"] or "It is easy to guess."
        return f"Choose a less common password. {why} A few unrelated words make a strong one."
    return None


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
