"""Web accounts: register, log in, log out.

The session cookie carries the user id and the user's session generation at login; a request whose
generation is no longer the user's is signed out, so logging out ends every copy of the cookie.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from sqlalchemy import update
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Email, Length, ValidationError

from extensions import db, limiter
from models import User
from services import accounts

bp = Blueprint("auth", __name__, url_prefix="/auth")


class CredentialsForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Email(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(min=8, max=128)])


class RegistrationForm(CredentialsForm):
    def validate_password(self, field: PasswordField) -> None:
        if field.errors or not self.email.data:  # already told what to fix
            return
        problem = accounts.password_problem(self.email.data, field.data)
        if problem:
            raise ValidationError(problem)


@bp.before_app_request
def load_logged_in_user() -> None:
    g.user = _session_user()


def _session_user() -> User | None:
    user_id = session.get("user_id")
    if user_id is None:
        return None
    user = db.session.get(User, user_id)
    if user is None or session.get("session_generation") != user.session_generation:
        session.clear()  # logged out since (in any browser), or the account is gone
        return None
    return user


def login_required(view):
    @functools.wraps(view)
    def wrapped_view(**kwargs):
        if g.user is None:
            return redirect(url_for("auth.login", next=request.path))
        return view(**kwargs)

    return wrapped_view


def sign_in_account_limit(submitted_email: Callable[[], object]):
    """Sign-in tries per account, the web's and the API's together, from whatever address: the per
    address LOGIN_RATE_LIMIT alone lets many addresses guess on. Counts live in RATELIMIT_STORAGE_URI,
    so they hold across processes. The key is the submitted email, with or without an account, so a
    429 tells nothing about which addresses have one (hashed: no address in the store, and a bounded
    key). Every try counts, a right password too, before anything is checked, so guesses sent at once
    cannot slip past; and the window bounds how long a flood of guesses keeps the owner out too."""

    def rate() -> str:
        return current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"]

    def email() -> str | None:
        value = submitted_email()
        return accounts.normalise_email(value) if isinstance(value, str) and value.strip() else None

    return limiter.shared_limit(
        rate,
        scope="sign-in-account",
        key_func=lambda: "account:" + hashlib.sha256(email().encode("utf-8", "surrogatepass")).hexdigest(),
        exempt_when=lambda: email() is None,  # nothing to sign in to: the form or body says why
        error_message=lambda: (
            f"Too many sign-in attempts for this email address: the limit is {rate()}. Please wait and try again."
        ),
    )


@bp.route("/register", methods=("GET", "POST"))
@limiter.limit(
    lambda: current_app.config["REGISTER_RATE_LIMIT"],
    methods=["POST"],
    error_message="Too many sign-ups from your network. Please wait a while and try again.",
)
def register():
    # Limited per client address: each try costs a password hash, and accounts are free to make.
    form = RegistrationForm()
    if form.validate_on_submit():
        try:
            user = accounts.register(form.email.data, form.password.data)
        except accounts.EmailTaken:
            form.email.errors.append("An account with this email already exists.")
        else:
            _start_session(user)
            return redirect(url_for("connect.dashboard"), code=303)
    return render_template("auth/register.html", form=form), 400 if form.errors else 200


@bp.route("/login", methods=("GET", "POST"))
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"])
@sign_in_account_limit(lambda: request.form.get("email"))
def login():
    form = CredentialsForm()
    if form.validate_on_submit():
        user = accounts.find_user_by_credentials(form.email.data, form.password.data)
        if user is not None:
            _start_session(user)
            return redirect(_safe_next(request.args.get("next")), code=303)
        form.password.errors.append("Email or password is not right.")
    return render_template("auth/login.html", form=form), 400 if form.errors else 200


@bp.post("/logout")
def logout():
    if g.user is not None:
        end_web_sessions(g.user)
    session.clear()
    flash("You are logged out.")
    return redirect(url_for("auth.login"), code=303)


def end_web_sessions(user: User) -> None:
    """End every web session of `user`: in all browsers, and any copy of their cookies.

    Logging out calls it; a password change or reset must call it too (the app has none yet) and
    then also revoke the user's API tokens. Logging out of the web leaves the mobile app's tokens
    alone: the app is another device with its own sign-out (`DELETE /api/v1/tokens/current`).
    """
    db.session.execute(update(User).where(User.id == user.id).values(session_generation=User.session_generation + 1))
    db.session.commit()


def _start_session(user: User) -> None:
    session.clear()  # a fresh session on login: no fixation
    session["user_id"] = user.id
    session["session_generation"] = user.session_generation


def _safe_next(target: str | None) -> str:
    """Only a local path. "//host" leaves the site, and so do "/\\host" and "/<tab>/host": browsers
    read a backslash as "/" and drop tabs and newlines inside URLs (so does Werkzeug when it writes
    the Location header). Control characters are refused too: CR/LF would split the header."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not any(ord(char) < 0x20 or ord(char) == 0x7F for char in target)
    ):
        return target
    return url_for("connect.dashboard")
