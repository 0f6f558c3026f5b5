"""Web accounts: register, log in, log out. The session cookie carries only the user id."""

from __future__ import annotations

import functools

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Email, Length

from extensions import db, limiter
from models import User
from services.reference_ids import new_reference_id

bp = Blueprint("auth", __name__, url_prefix="/auth")


class CredentialsForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Email(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(min=8, max=128)])


def normalise_email(email: str) -> str:
    return email.strip().lower()


def find_user_by_credentials(email: str, password: str) -> User | None:
    user = db.session.scalars(select(User).where(func.lower(User.email) == normalise_email(email))).first()
    if user is None or not check_password_hash(user.password_hash, password):
        return None
    return user


@bp.before_app_request
def load_logged_in_user() -> None:
    user_id = session.get("user_id")
    g.user = db.session.get(User, user_id) if user_id is not None else None


def login_required(view):
    @functools.wraps(view)
    def wrapped_view(**kwargs):
        if g.user is None:
            return redirect(url_for("auth.login", next=request.path))
        return view(**kwargs)

    return wrapped_view


@bp.route("/register", methods=("GET", "POST"))
def register():
    form = CredentialsForm()
    if form.validate_on_submit():
        user = User(
            email=normalise_email(form.email.data),
            password_hash=generate_password_hash(form.password.data),
            reference_id=new_reference_id(),
        )
        db.session.add(user)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            form.email.errors.append("An account with this email already exists.")
        else:
            _start_session(user)
            return redirect(url_for("connect.dashboard"), code=303)
    return render_template("auth/register.html", form=form), 400 if form.errors else 200


@bp.route("/login", methods=("GET", "POST"))
@limiter.limit(lambda: _login_rate_limit(), methods=["POST"])
def login():
    form = CredentialsForm()
    if form.validate_on_submit():
        user = find_user_by_credentials(form.email.data, form.password.data)
        if user is not None:
            _start_session(user)
            return redirect(_safe_next(request.args.get("next")), code=303)
        form.password.errors.append("Email or password is not right.")
    return render_template("auth/login.html", form=form), 400 if form.errors else 200


@bp.post("/logout")
def logout():
    session.clear()
    flash("You are logged out.")
    return redirect(url_for("auth.login"), code=303)


def _start_session(user: User) -> None:
    session.clear()  # a fresh session on login: no fixation
    session["user_id"] = user.id


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


def _login_rate_limit() -> str:
    from flask import current_app

    return current_app.config["LOGIN_RATE_LIMIT"]
