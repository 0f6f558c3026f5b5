"""Register, log in, log out; the reference_id every user gets."""

import pytest
from sqlalchemy import select

from extensions import db
from models import User
from services.reference_ids import is_authentic, new_reference_id


def test_register_creates_user_with_hashed_password_and_reference_id(client, app, auth):
    response = auth.register("Ada@Example.com", "correct horse battery")
    assert response.status_code == 303 and response.headers["Location"] == "/connections"
    with app.app_context():
        user = db.session.scalars(select(User)).one()
        assert user.email == "ada@example.com"
        assert user.password_hash != "correct horse battery" and user.password_hash.startswith(("scrypt:", "pbkdf2:"))
        assert is_authentic(user.reference_id) and len(user.reference_id) < 64
        assert "ada" not in user.reference_id.lower() and str(user.id) != user.reference_id


def test_reference_ids_are_unique_and_opaque(app):
    with app.test_request_context():
        ids = {new_reference_id() for _ in range(50)}
    assert len(ids) == 50


def test_duplicate_email_is_refused(client, auth):
    auth.register()
    response = auth.register("ADA@example.com")
    assert response.status_code == 400
    assert b"already exists" in response.data


@pytest.mark.parametrize("email, password, message", [
    ("not-an-email", "correct horse battery", b"Invalid email"),
    ("ada@example.com", "short", b"between 8 and 128"),
    ("", "", b"This field is required"),
])
def test_register_validates_input(client, email, password, message):
    response = client.post("/auth/register", data={"email": email, "password": password})
    assert response.status_code == 400 and message in response.data


def test_login_and_logout(client, auth):
    auth.register()
    auth.logout()
    assert client.get("/connections").status_code == 302
    response = auth.login()
    assert response.status_code == 303
    assert client.get("/connections").status_code == 200


def test_wrong_password_is_refused_without_saying_which_part(client, auth):
    auth.register()
    auth.logout()
    response = auth.login(password="wrong password!")
    assert response.status_code == 400 and b"Email or password is not right" in response.data


@pytest.mark.parametrize("target, expected", [
    ("/connections/providers", "/connections/providers"),
    ("//evil.example/x", "/connections"),
    ("/\\evil.example", "/connections"),
    ("https://evil.example/", "/connections"),
])
def test_login_redirects_only_to_local_paths(client, auth, target, expected):
    auth.register()
    auth.logout()
    response = client.post(f"/auth/login?next={target}",
                           data={"email": "ada@example.com", "password": "correct horse battery"})
    assert response.headers["Location"] == expected


def test_session_cookie_is_httponly_and_lax(client, auth):
    response = auth.register()
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_forms_need_a_csrf_token(app):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    response = client.post("/auth/register", data={"email": "a@example.com", "password": "correct horse"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalars(select(User)).first() is None


def test_reference_id_survives_key_rotation(app):
    with app.test_request_context():
        old = new_reference_id()
    app.config["SECRET_KEY_FALLBACKS"] = [app.config["SECRET_KEY"]]
    app.config["SECRET_KEY"] = "a-brand-new-key"
    with app.test_request_context():
        assert is_authentic(old)
        assert is_authentic(new_reference_id())
    app.config["SECRET_KEY_FALLBACKS"] = []
    with app.test_request_context():
        assert not is_authentic(old)


def test_reference_id_is_not_valid_as_another_kind_of_token(app):
    # One salt per purpose: a reference_id signed with the same key is no attempt token.
    from services.attempts import AttemptNotFound, attempt_from_token

    with app.test_request_context():
        with pytest.raises(AttemptNotFound):
            attempt_from_token(new_reference_id())


def test_login_is_rate_limited(client, auth, app):
    app.config["LOGIN_RATE_LIMIT"] = "3 per minute"
    statuses = [auth.login(password="wrong password!").status_code for _ in range(5)]
    assert statuses[:3] == [400, 400, 400] and statuses[3:] == [429, 429]


def test_health_endpoints(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ok", "checks": {"database": "ok"}}


def test_security_headers_on_pages(client):
    response = client.get("/auth/login")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "same-origin"
