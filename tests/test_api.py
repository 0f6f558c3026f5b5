"""The mobile JSON API: bearer tokens, connect attempts and their status, connections."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from extensions import db
from models import ApiToken, ConnectAttempt, Connection, User
from models.time import utcnow
from sandbox.traffic import traffic_of
from tests.conftest import Browser, wait_for
from tests.helpers import auth_event, finish_widget, post_event, terra_user

PASSWORD = "correct horse battery"


class Api:
    """A mobile app's view of the server: JSON over HTTP with a bearer token, nothing else."""

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url = base_url
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def __getattr__(self, method):
        return lambda path, **kwargs: self.http.request(method.upper(), self.base_url + path, timeout=40, **kwargs)


def sign_up(live_server, email="ada@example.com") -> Api:
    Browser(live_server.url).register(email=email, password=PASSWORD)
    response = requests.post(
        live_server.url + "/api/v1/tokens", json={"email": email, "password": PASSWORD}, timeout=10
    )
    assert response.status_code == 201
    return Api(live_server.url, response.json()["access_token"])


@pytest.fixture
def api(live_server) -> Api:
    return sign_up(live_server)


def start(api: Api, **body) -> dict:
    response = api.post("/api/v1/connect-attempts", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def state(api: Api, attempt_id: str, **kwargs) -> requests.Response:
    return api.get(f"/api/v1/connect-attempts/{attempt_id}", **kwargs)


def final_state(api: Api, attempt_id: str) -> dict:
    return wait_for(lambda: (body := state(api, attempt_id).json())["terminal"] and body)


# -- tokens ---------------------------------------------------------------------------------


def test_token_is_random_and_only_its_hash_is_stored(live_server):
    api = sign_up(live_server)
    token = api.http.headers["Authorization"].removeprefix("Bearer ")
    assert len(token) >= 43  # 256 bits, base64url
    with live_server.app.app_context():
        stored = db.session.scalars(select(ApiToken)).one()
        assert token not in stored.token_hash and len(stored.token_hash) == 64


def test_token_response_shape_and_no_store(live_server):
    Browser(live_server.url).register(password=PASSWORD)
    response = requests.post(
        live_server.url + "/api/v1/tokens", json={"email": "ada@example.com", "password": PASSWORD}, timeout=10
    )
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == live_server.app.config["API_TOKEN_LIFETIME_SECONDS"]


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"email": "ada@example.com", "password": "wrong password"}, 401, "invalid_credentials"),
        ({"email": "nobody@example.com", "password": PASSWORD}, 401, "invalid_credentials"),
        ({"email": "ada@example.com"}, 400, "invalid_request"),
        ({"email": 1, "password": 2}, 400, "invalid_request"),
        ([1, 2], 400, "invalid_request"),
    ],
)
def test_bad_token_requests(live_server, body, status, code):
    Browser(live_server.url).register(password=PASSWORD)
    response = requests.post(live_server.url + "/api/v1/tokens", json=body, timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_token_request_must_be_json(live_server):
    response = requests.post(
        live_server.url + "/api/v1/tokens",
        data="email=a&password=b",
        timeout=10,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "authorization, error",
    [
        (None, "missing_authorization"),
        ("Bearer", "unsupported_token_type"),
        ("Basic YTpi", "unsupported_token_type"),
        ("Bearer not-a-real-token", "invalid_token"),
    ],
)
def test_missing_or_malformed_bearer(live_server, authorization, error):
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(live_server.url + "/api/v1/connections", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == error and response.json()["error"]["message"]
    if error == "invalid_token":
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    else:
        # No bearer token at all: RFC 6750 §3.1's bare challenge, with no error code.
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_expired_token_is_refused(api, live_server):
    with live_server.app.app_context():
        db.session.execute(ApiToken.__table__.update().values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    response = api.get("/api/v1/connections")
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_revoked_token_is_refused(api):
    assert api.delete("/api/v1/tokens/current").status_code == 204
    assert api.get("/api/v1/connections").status_code == 401
    assert api.delete("/api/v1/tokens/current").status_code == 401


def test_signing_out_one_device_leaves_the_users_other_devices_signed_in(api, live_server):
    """Issue 19 §5: a revoke that ended every token of the user passed the suite. The tablet's token is
    first used after the phone signs out, so the database decides it (no worker has it cached)."""
    tablet = requests.post(
        live_server.url + "/api/v1/tokens", json={"email": "ada@example.com", "password": PASSWORD}, timeout=10
    )
    tablet = Api(live_server.url, tablet.json()["access_token"])
    assert api.delete("/api/v1/tokens/current").status_code == 204  # the phone signs out
    assert tablet.get("/api/v1/connections").status_code == 200
    assert api.get("/api/v1/connections").status_code == 401


def test_session_cookie_does_not_authenticate_the_api(live_server):
    browser = Browser(live_server.url)
    browser.register(password=PASSWORD)
    assert browser.get("/connections").status_code == 200  # logged in on the web
    assert browser.get("/api/v1/connections").status_code == 401


def test_logging_out_of_the_web_leaves_the_apps_token_working(api, live_server):
    # The app is another device with its own sign-out (DELETE /api/v1/tokens/current).
    browser = Browser(live_server.url)
    browser.login(password=PASSWORD)
    assert "You are logged out" in browser.submit("/connections", "/auth/logout").text
    assert browser.get("/connections", allow_redirects=False).status_code == 302
    assert api.get("/api/v1/connections").status_code == 200


def test_token_use_is_recorded(api, live_server):
    api.get("/api/v1/connections")
    with live_server.app.app_context():
        assert db.session.scalars(select(ApiToken.last_used_at)).one() is not None


# -- attempts -------------------------------------------------------------------------------


def test_create_attempt_answers_201_with_everything_the_app_needs(api, live_server):
    response = api.post("/api/v1/connect-attempts", json={"providers": ["garmin"], "language": "en"})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"attempt_id", "url", "status_url", "expires_at", "poll_after_ms", "callback"}
    assert len(body["attempt_id"]) >= 22  # 128 bits
    assert body["url"].startswith(live_server.url + "/sandbox/widget/")
    assert body["status_url"] == f"/api/v1/connect-attempts/{body['attempt_id']}"
    assert response.headers["Location"] == body["status_url"]
    with live_server.app.app_context():
        attempt = db.session.get(ConnectAttempt, body["attempt_id"])
        assert (attempt.channel, attempt.return_mode, attempt.callback, attempt.requested_provider) == (
            "mobile",
            "page",
            "scheme",
            "GARMIN",
        )


@pytest.mark.parametrize(
    "body, code",
    [
        ({"providers": ["NOT_A_PROVIDER"]}, "unknown_provider"),
        ({"providers": []}, "invalid_providers"),
        ({"providers": "GARMIN"}, "invalid_providers"),
        ({"language": "english please"}, "invalid_language"),
        ({"return": "somewhere"}, "invalid_return"),
    ],
)
def test_invalid_attempt_requests(api, live_server, body, code):
    response = api.post("/api/v1/connect-attempts", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)
    with live_server.app.app_context():
        assert db.session.scalars(select(ConnectAttempt)).first() is None


def test_page_mode_redirects_through_the_https_return_page(api, live_server):
    attempt = start(api)
    redirect = finish_widget(attempt["url"])
    assert redirect.startswith(live_server.url + "/mobile/return/success/")
    page = requests.get(redirect, timeout=10)
    assert page.status_code == 200
    assert f"com.example.terraconnect://connect/success?attempt_id={attempt['attempt_id']}" in page.text
    body = final_state(api, attempt["attempt_id"])
    assert (body["status"], body["hint"], body["connection"]["provider"]) == ("connected", "returned_success", "GARMIN")


def test_app_mode_redirects_straight_to_the_deep_link(api):
    attempt = start(api, **{"return": "app"})
    assert attempt["callback"] == "scheme"  # the server's default: the scheme it has
    redirect = finish_widget(attempt["url"], outcome="denied")
    # Exactly the scheme, host and path the app's session matches, then only Terra's own parameters.
    assert redirect.startswith("com.example.terraconnect://connect/failure?reference_id=")
    assert "attempt_id" not in redirect
    body = final_state(api, attempt["attempt_id"])
    assert (body["status"], body["error"]["code"]) == ("failed", "access_denied")


LINKS = "https://links.example.com/terra"


@pytest.mark.parametrize(
    "return_mode, callback, redirect",
    [
        ("app", "https", f"{LINKS}/connect/success?"),
        ("app", "scheme", "com.example.app://connect/success?"),
        ("page", "https", "/mobile/return/success/"),
    ],
)
def test_the_app_names_the_link_it_catches_and_the_attempt_keeps_it(start_live_server, return_mode, callback, redirect):
    server = start_live_server(MOBILE_APP_SCHEME="com.example.app", MOBILE_UNIVERSAL_LINK_BASE=LINKS)
    api = sign_up(server)
    attempt = start(api, **{"return": return_mode, "callback": callback})
    assert attempt["callback"] == callback
    assert redirect in finish_widget(attempt["url"])
    assert final_state(api, attempt["attempt_id"])["status"] == "connected"  # the webhook, applied
    with server.app.app_context():
        stored = db.session.get(ConnectAttempt, attempt["attempt_id"])
        assert (stored.return_mode, stored.callback) == (return_mode, callback)


def test_a_callback_the_server_cannot_build_is_refused(start_live_server):
    server = start_live_server(MOBILE_UNIVERSAL_LINK_BASE=LINKS)  # no scheme: base only
    api = sign_up(server)
    assert start(api)["callback"] == "https"
    for body, status, code in (
        ({"callback": "scheme"}, 409, "deep_link_not_configured"),
        ({"callback": "universal"}, 400, "invalid_callback"),
        ({"callback": 1}, 400, "invalid_callback"),
    ):
        response = api.post("/api/v1/connect-attempts", json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert start(api, callback=None)["callback"] == "https"  # null is the default, as if left out
    assert "MOBILE_APP_SCHEME" in api.post("/api/v1/connect-attempts", json={"callback": "scheme"}).text


def test_app_mode_without_a_deep_link_configured_is_409(live_server):
    live_server.app.config.update(MOBILE_APP_SCHEME="", MOBILE_UNIVERSAL_LINK_BASE="", MOBILE_CALLBACK=None)
    api = sign_up(live_server)
    response = api.post("/api/v1/connect-attempts", json={"return": "app"})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "deep_link_not_configured")
    assert start(api, **{"return": "page"})["callback"] is None  # the return page then says so


def test_someone_elses_attempt_is_404_like_an_unknown_one(api, live_server):
    attempt = start(api)
    eve = sign_up(live_server, "eve@example.com")
    for path in (f"/api/v1/connect-attempts/{attempt['attempt_id']}", "/api/v1/connect-attempts/does-not-exist"):
        response = eve.get(path)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert eve.post(f"/api/v1/connect-attempts/{attempt['attempt_id']}/browser-closed").status_code == 404
    assert state(api, attempt["attempt_id"]).json()["hint"] is None


@pytest.mark.parametrize(
    "if_none_match, params",
    [
        pytest.param("current", {}, id="its current ETag"),
        pytest.param("*", {}, id="If-None-Match: *"),
        pytest.param("current", {"wait": 1}, id="its current ETag, long-poll"),
    ],
)
def test_someone_elses_attempt_is_404_on_the_conditional_poll_too(api, live_server, if_none_match, params):
    """The If-None-Match path reads only a few columns, the owner among them: holding (or guessing)
    Ada's ETag, Eve still gets the plain 404, with no ETag and no 304 telling her the attempt exists."""
    attempt = start(api)
    etag = state(api, attempt["attempt_id"]).headers["ETag"]
    header = {"If-None-Match": etag if if_none_match == "current" else if_none_match}
    assert state(api, attempt["attempt_id"], headers=header, params=params).status_code == 304  # Ada: not modified
    eve = sign_up(live_server, "eve@example.com")
    response = state(eve, attempt["attempt_id"], headers=header, params=params)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert "ETag" not in response.headers


def test_status_etag_304_and_version_changes(api, live_server):
    attempt = start(api)
    first = state(api, attempt["attempt_id"])
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-store"
    etag = first.headers["ETag"]
    assert etag == f'"{first.json()["version"]}"'
    unchanged = state(api, attempt["attempt_id"], headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.headers["ETag"] == etag and unchanged.content == b""
    assert unchanged.headers["Cache-Control"] == "no-store"

    requests.get(finish_widget(attempt["url"]), timeout=10)  # the browser reaches the return page: a hint
    changed = state(api, attempt["attempt_id"], headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.json()["version"] > first.json()["version"]


def test_long_poll_is_woken_by_a_webhook_from_another_thread(api, live_server):
    live_server.app.config["SANDBOX_WEBHOOK_URL"] = ""  # the sandbox sends nothing; we deliver by hand
    attempt = start(api)
    etag = state(api, attempt["attempt_id"]).headers["ETag"]
    with live_server.app.app_context():
        row = db.session.get(ConnectAttempt, attempt["attempt_id"])
        owner = db.session.get(User, row.user_id)
        event = auth_event(owner, terra_user(owner, "tu-long-poll"), session_id=row.terra_session_id)
    secret = live_server.app.config["TERRA_SIGNING_SECRET"]

    delivered: list[int] = []

    def deliver_later():
        time.sleep(1.0)
        delivered.append(post_event(live_server.url, secret, event))

    later = threading.Thread(target=deliver_later)
    later.start()
    started = time.monotonic()
    response = state(api, attempt["attempt_id"], params={"wait": 20}, headers={"If-None-Match": etag})
    elapsed = time.monotonic() - started
    later.join()
    assert delivered == [200]
    assert response.status_code == 200 and response.json()["status"] == "connected"
    assert 0.9 <= elapsed < 10


def test_long_poll_returns_on_time_when_nothing_happens(api):
    attempt = start(api)
    etag = state(api, attempt["attempt_id"]).headers["ETag"]
    started = time.monotonic()
    response = state(api, attempt["attempt_id"], params={"wait": 2}, headers={"If-None-Match": etag})
    elapsed = time.monotonic() - started
    assert response.status_code == 304
    assert 1.9 <= elapsed < 10  # held for the 2 s asked, then let go


def test_long_poll_with_an_older_version_answers_at_once(api):
    attempt = start(api)
    first = state(api, attempt["attempt_id"])
    api.post(f"/api/v1/connect-attempts/{attempt['attempt_id']}/browser-closed")
    # The caller is behind: the long poll has news for it at once.
    started = time.monotonic()
    response = state(api, attempt["attempt_id"], params={"wait": 20}, headers={"If-None-Match": first.headers["ETag"]})
    assert response.status_code == 200 and response.json()["hint"] == "browser_closed"
    assert time.monotonic() - started < 10


def test_long_poll_without_if_none_match_waits_for_a_change_and_answers_200(api):
    """A client that cannot handle 304 (many generated ones) long-polls without If-None-Match: the wait
    ends with the new state when the attempt changes, and with the unchanged state, still 200, when
    nothing does."""
    attempt = start(api)
    status_path = f"/api/v1/connect-attempts/{attempt['attempt_id']}"
    before = state(api, attempt["attempt_id"]).json()

    unchanged = state(api, attempt["attempt_id"], params={"wait": 1})
    assert unchanged.status_code == 200 and unchanged.json()["version"] == before["version"]
    assert unchanged.headers["ETag"] == f'"{before["version"]}"'

    closer = threading.Timer(0.5, lambda: api.post(status_path + "/browser-closed"))
    closer.start()
    changed = state(api, attempt["attempt_id"], params={"wait": 20})
    closer.join()
    # Had the request not waited, it would have answered before the browser-closed report.
    assert changed.status_code == 200 and changed.json()["hint"] == "browser_closed"
    assert changed.json()["version"] > before["version"]


def test_weak_etags_match(api):
    """RFC 9110 compares If-None-Match weakly: a compressing proxy that made our ETag weak (W/"3")
    must not turn conditional polls and long-polling off."""
    attempt = start(api)
    etag = state(api, attempt["attempt_id"]).headers["ETag"]
    weak = "W/" + etag
    unchanged = state(api, attempt["attempt_id"], headers={"If-None-Match": weak})
    assert unchanged.status_code == 304 and unchanged.headers["ETag"] == etag
    listed = state(api, attempt["attempt_id"], headers={"If-None-Match": f'W/"0", {weak}'})
    assert listed.status_code == 304
    held = state(api, attempt["attempt_id"], params={"wait": 1}, headers={"If-None-Match": weak})
    assert held.status_code == 304
    other = state(api, attempt["attempt_id"], headers={"If-None-Match": 'W/"0"'})
    assert other.status_code == 200 and other.headers["ETag"] == etag


def test_browser_closed_ignores_validators(api):
    """The report is always recorded and answered with 202 and the attempt: If-None-Match on this
    POST is ignored (the choice docs/openapi.json states), never a 304 for an action performed."""
    attempt = start(api)
    status_path = f"/api/v1/connect-attempts/{attempt['attempt_id']}"
    etag = state(api, attempt["attempt_id"]).headers["ETag"]
    for if_none_match in (etag, "*"):
        closed = api.post(status_path + "/browser-closed", headers={"If-None-Match": if_none_match})
        assert closed.status_code == 202 and closed.json()["hint"] == "browser_closed"
        assert closed.headers["Content-Location"] == status_path
        assert closed.headers["ETag"] == f'"{closed.json()["version"]}"'
    assert state(api, attempt["attempt_id"]).json()["hint"] == "browser_closed"


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/api/v1/connections", {"GET", "HEAD", "OPTIONS"}),
        ("GET", "/api/v1/tokens", {"POST", "OPTIONS"}),
        ("DELETE", "/api/v1/connect-attempts/x", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_a_method_the_api_does_not_serve_is_405_with_allow(api, method, path, allowed):
    response = getattr(api, method.lower())(path)
    assert response.status_code == 405
    assert {name.strip() for name in response.headers["Allow"].split(",")} == allowed
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["Content-Type"] == "application/json"


def test_a_web_page_405_carries_allow_too(live_server):
    response = requests.get(live_server.url + "/auth/logout", timeout=10)
    assert response.status_code == 405 and response.headers["Content-Type"].startswith("text/html")
    assert {name.strip() for name in response.headers["Allow"].split(",")} == {"POST", "OPTIONS"}


def test_null_optional_fields_take_their_defaults(api, live_server):
    response = api.post(
        "/api/v1/connect-attempts", json={"providers": None, "language": None, "return": None, "callback": None}
    )
    assert response.status_code == 201, response.text
    assert response.json()["callback"] == live_server.app.config["MOBILE_CALLBACK"]
    with live_server.app.app_context():
        attempt = db.session.get(ConnectAttempt, response.json()["attempt_id"])
        assert (attempt.return_mode, attempt.requested_provider, attempt.callback) == (
            live_server.app.config["MOBILE_REDIRECT_MODE"],
            None,
            live_server.app.config["MOBILE_CALLBACK"],
        )


def test_pending_attempt_expires_after_the_widget_session_lifetime(api, live_server, advance_clock):
    live_server.app.config["SANDBOX_SESSION_TTL_SECONDS"] = 60
    attempt = start(api)
    advance_clock(60)
    body = state(api, attempt["attempt_id"]).json()
    assert (body["status"], body["terminal"], body["error"]["code"]) == ("expired", True, "session_expired")
    assert body["poll_after_ms"] is None


def test_browser_closed_then_cancelled_then_late_success_connects(api, live_server, advance_clock):
    live_server.app.config["BROWSER_CLOSED_GRACE_SECONDS"] = 30
    live_server.app.config["SANDBOX_WEBHOOK_URL"] = ""  # hold Terra's webhook back
    attempt = start(api)
    closed = api.post(f"/api/v1/connect-attempts/{attempt['attempt_id']}/browser-closed")
    assert closed.status_code == 202
    assert (closed.json()["status"], closed.json()["hint"]) == ("pending", "browser_closed")
    advance_clock(30)
    body = state(api, attempt["attempt_id"]).json()
    assert (body["status"], body["error"]["code"]) == ("cancelled", "browser_closed")

    # The user had in fact finished: Terra's verified auth arrives late and wins.
    live_server.app.config["SANDBOX_WEBHOOK_URL"] = live_server.url + "/webhooks/terra"
    finish_widget(attempt["url"])
    wait_for(lambda: state(api, attempt["attempt_id"]).json()["status"] == "connected")


def test_redirect_user_id_is_confirmed_by_userinfo_when_the_webhook_is_late(api, live_server):
    live_server.app.config["SANDBOX_WEBHOOK_URL"] = ""
    live_server.app.config["USERINFO_CHECK_AFTER_SECONDS"] = 0
    attempt = start(api)
    requests.get(finish_widget(attempt["url"]), timeout=10)
    body = final_state(api, attempt["attempt_id"])
    assert body["status"] == "connected" and body["connection"]["provider"] == "GARMIN"


# -- connections ----------------------------------------------------------------------------


def test_list_and_delete_connections(api, live_server):
    attempt = start(api)
    connection = final_state_with(api, attempt, finish_widget(attempt["url"]))["connection"]
    listed = api.get("/api/v1/connections").json()["connections"]
    assert [row["id"] for row in listed] == [connection["id"]] and listed[0]["status"] == "active"

    deleted = api.delete(f"/api/v1/connections/{connection['id']}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "revoked"
    assert api.get("/api/v1/connections").json()["connections"][0]["status"] == "revoked"


def final_state_with(api, attempt, redirect_url):
    requests.get(redirect_url, timeout=10)
    return final_state(api, attempt["attempt_id"])


def test_someone_elses_connection_cannot_be_deleted(api, live_server):
    attempt = start(api)
    connection = final_state_with(api, attempt, finish_widget(attempt["url"]))["connection"]
    eve = sign_up(live_server, "eve@example.com")
    assert eve.delete(f"/api/v1/connections/{connection['id']}").status_code == 404
    assert eve.get("/api/v1/connections").json() == {"connections": []}
    with live_server.app.app_context():
        assert db.session.scalars(select(Connection.status)).one() == "active"


def test_api_needs_no_csrf_token(api):
    # The live server runs with CSRF protection on; bearer-token routes are exempt.
    assert start(api)["attempt_id"]


def test_status_polling_is_rate_limited_per_caller_and_attempt(api, live_server):
    live_server.app.config["STATUS_RATE_LIMIT"] = "3 per minute"
    first, second = start(api), start(api)
    statuses = [state(api, first["attempt_id"]).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = state(api, first["attempt_id"])
    assert limited.json()["error"]["code"] == "too_many_requests" and int(limited.headers["Retry-After"]) > 0
    assert state(api, second["attempt_id"]).status_code == 200  # another attempt has its own budget


def test_starting_attempts_is_limited_per_user_across_the_api_and_the_web(api, live_server):
    live_server.app.config["CONNECT_RATE_LIMIT"] = "2 per minute"
    traffic = traffic_of(live_server.app)
    start(api)
    start(api, providers=["GARMIN"])
    terra_calls = len(traffic.requests())

    refused = api.post("/api/v1/connect-attempts", json={"providers": ["GARMIN"]})
    assert refused.status_code == 429 and refused.headers["Cache-Control"] == "no-store"
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"] == {
        "code": "too_many_requests",
        "message": "Too many connections started: the limit is 2 per minute. Please wait and try again.",
    }
    assert len(traffic.requests()) == terra_calls  # neither a widget session nor the provider list
    with live_server.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ConnectAttempt)) == 2

    # One budget per user: the web's connect button is refused for the same user too ...
    browser = Browser(live_server.url)
    browser.login(password=PASSWORD)
    assert browser.submit("/connections", "/connections/connect", allow_redirects=False).status_code == 429
    assert len(traffic.requests()) == terra_calls
    # ... and another user has a budget of their own.
    assert start(sign_up(live_server, "eve@example.com"))["attempt_id"]
