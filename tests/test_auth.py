"""Register, log in, log out; the reference_id every user gets."""

import pytest
from sqlalchemy import func, select

from app import create_app
from extensions import db
from models import User
from services import accounts
from terra_integration.reference_ids import is_authentic, new_reference_id
from tests.conftest import Browser, _environ, free_port
from tests.helpers import redis_test_url


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


@pytest.mark.parametrize(
    "email, password, message",
    [
        ("not-an-email", "correct horse battery", b"Invalid email"),
        ("ada@example.com", "short", b"between 8 and 128"),
        ("", "", b"This field is required"),
    ],
)
def test_register_validates_input(client, email, password, message):
    response = client.post("/auth/register", data={"email": email, "password": password})
    assert response.status_code == 400 and message in response.data


@pytest.mark.parametrize(
    "email, password, message",
    [
        ("ada@example.com", "password1", "This is a very common password."),
        ("ada@example.com", "qwertyuiop", "This is a top-100 common password."),
        ("ada@example.com", "iloveyou2", "This is a very common password."),
        ("ada@example.com", "12345678", "Choose a less common password."),
        ("ada@example.com", "ADA@example.com", "must not be your email address or its part before the @"),
        ("adalovelace@example.com", "AdaLovelace", "must not be your email address or its part before the @"),
    ],
)
def test_register_refuses_a_common_password_or_the_email(app, client, email, password, message):
    response = client.post("/auth/register", data={"email": email, "password": password})
    assert response.status_code == 400 and message in response.text
    assert password not in response.text  # the form never echoes a password
    with app.app_context():
        assert db.session.scalars(select(User)).first() is None
    # The same email with a passphrase of unrelated words is welcome.
    assert (
        client.post("/auth/register", data={"email": email, "password": "plinth otter 4 marmalade"}).status_code == 303
    )


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


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/connections/providers", "/connections/providers"),
        ("//evil.example/x", "/connections"),
        ("/\\evil.example", "/connections"),
        ("https://evil.example/", "/connections"),
    ],
)
def test_login_redirects_only_to_local_paths(client, auth, target, expected):
    auth.register()
    auth.logout()
    response = client.post(
        f"/auth/login?next={target}", data={"email": "ada@example.com", "password": "correct horse battery"}
    )
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

    with app.test_request_context(), pytest.raises(AttemptNotFound):
        attempt_from_token(new_reference_id())


def web_sign_in(client, email, password):
    return client.post("/auth/login", data={"email": email, "password": password})


def api_sign_in(client, email, password):
    return client.post("/api/v1/tokens", json={"email": email, "password": password})


@pytest.mark.parametrize("sign_in, refused", [(web_sign_in, 400), (api_sign_in, 401)], ids=["web", "api"])
def test_an_unknown_email_costs_the_same_password_check_as_a_known_one(client, auth, monkeypatch, sign_in, refused):
    """No timing difference to measure: an unknown email is checked against a dummy hash made the way
    real ones are (same algorithm and cost), once per process."""
    auth.register()
    auth.logout()
    checked_hashes = []
    real_check = accounts.check_password_hash

    def counting_check(password_hash, password):
        checked_hashes.append(password_hash)
        return real_check(password_hash, password)

    monkeypatch.setattr(accounts, "check_password_hash", counting_check)
    statuses = [
        sign_in(client, email, "wrong password!").status_code
        for email in ("ada@example.com", "nobody@example.com", "someone@example.com")
    ]
    assert statuses == [refused] * 3
    real_hash, dummy_hash, same_dummy_hash = checked_hashes
    method = real_hash.split("$")[0]  # e.g. scrypt:32768:8:1: the algorithm and its cost
    assert dummy_hash != real_hash and dummy_hash.split("$")[0] == method
    assert same_dummy_hash == dummy_hash  # made once, not once per request


def test_registration_is_rate_limited_per_client_address(app, client):
    app.config["REGISTER_RATE_LIMIT"] = "2 per minute"

    def register(email, address):
        return client.post(
            "/auth/register",
            data={"email": email, "password": "correct horse battery"},
            environ_base={"REMOTE_ADDR": address},
        )

    statuses = [register(f"user{n}@example.com", "203.0.113.7").status_code for n in range(3)]
    assert statuses == [303, 303, 429]
    limited = register("user3@example.com", "203.0.113.7")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert "Too many sign-ups from your network" in limited.get_data(as_text=True)
    assert client.get("/auth/register", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200
    assert register("user4@example.com", "198.51.100.20").status_code == 303  # another address
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 3


def test_a_session_cookie_copied_before_logout_no_longer_opens_the_dashboard(live_server):
    browser = Browser(live_server.url)
    assert "Your connections" in browser.register().text
    copied = browser.http.cookies.get("session")
    other_browser = Browser(live_server.url)
    other_browser.login()
    assert other_browser.get("/connections", allow_redirects=False).status_code == 200

    logged_out = browser.submit("/connections", "/auth/logout")
    assert "You are logged out" in logged_out.text

    replay = Browser(live_server.url)
    replay.http.cookies.set("session", copied)
    response = replay.get("/connections", allow_redirects=False)
    assert response.status_code == 302 and response.headers["Location"].startswith("/auth/login")
    assert "session=;" in response.headers["Set-Cookie"]  # the dead cookie is cleared as well
    # Logging out ends every web session of the account, not only this browser's.
    assert other_browser.get("/connections", allow_redirects=False).status_code == 302

    browser.login()
    assert browser.get("/connections", allow_redirects=False).status_code == 200
    assert replay.get("/connections", allow_redirects=False).status_code == 302  # still dead after a new login


def test_signing_in_starts_a_new_session_keeping_nothing_planted_before(app, client, auth):
    """Session fixation (issue 19 §5): a session cookie an attacker planted, with content and a CSRF
    secret of its own, must not survive the sign-in; removing session.clear() passed the suite."""
    auth.register()
    auth.logout()
    signer = app.session_interface.get_signing_serializer(app)
    planted = {"csrf_token": "planted-csrf-secret", "planted": "by an attacker", "_flashes": [("message", "hi")]}
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], signer.dumps(planted))
    assert auth.login().status_code == 303
    session = signer.loads(client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value)
    assert set(session) == {"user_id", "session_generation"}


def test_a_session_from_before_session_generations_is_signed_out(app, client, auth):
    auth.register()
    with client.session_transaction() as session:
        del session["session_generation"]  # as cookies made before migration 0003 are
    assert client.get("/connections").status_code == 302


def test_login_is_rate_limited(client, auth, app):
    app.config["LOGIN_RATE_LIMIT"] = "3 per minute"
    statuses = [auth.login(password="wrong password!").status_code for _ in range(5)]
    assert statuses[:3] == [400, 400, 400] and statuses[3:] == [429, 429]


def test_health_endpoints(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ok", "checks": {"database": "ok"}}


def test_readiness_includes_the_shared_rate_limit_store(database_uri):
    """With Redis down every sign-in fails, so the instance is not ready: 503 naming the store, and
    never its URI (a password may be in it). Nothing listens on a port just found free."""
    down = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    for uri, status, state in [(down, 503, "unreachable"), (redis_test_url(0), 200, "ok")]:
        client = create_app(environ=_environ(database_uri, RATELIMIT_STORAGE_URI=uri)).test_client()
        response = client.get("/readyz")
        assert response.status_code == status
        assert response.json["checks"] == {"database": "ok", "rate_limit_store": state}
        assert "hunter2" not in response.text and "6379" not in response.text


def test_security_headers_on_pages(client):
    response = client.get("/auth/login")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "same-origin"
