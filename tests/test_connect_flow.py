"""The web connect flow end to end, over real HTTP on loopback: app, sandbox and webhooks.

Each test drives the app as a browser would (forms with their CSRF tokens, redirects followed) and
finishes the sandbox widget through its automation endpoint, which does what its pages do.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select

from extensions import db
from models import ConnectAttempt, Connection, WebhookEvent
from models.connect_attempt import reason_text
from sandbox.traffic import traffic_of
from services.attempts import attempt_token
from services.providers import provider_label
from tests.conftest import Browser, wait_for
from tests.helpers import finish_widget, lose_webhooks, token_of
from tests.test_faults import terra_headers
from tests.test_mobile_return import ANDROID_WEBVIEW, FACEBOOK_IOS
from tests.test_sandbox import deliveries_finished


def start_connect(browser: Browser) -> str:
    """Press "Connect a device"; return the widget URL the app redirected to."""
    response = browser.submit("/connections", "/connections/connect", allow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def attempt_state(browser: Browser, return_url: str) -> dict:
    response = browser.get("/connect/attempts/status", params={"attempt": token_of(return_url)})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def wait_for_terminal(browser: Browser, return_url: str) -> dict:
    return wait_for(lambda: (state := attempt_state(browser, return_url))["terminal"] and state)


def connections(live_server) -> list[Connection]:
    with live_server.app.app_context():
        return db.session.scalars(select(Connection).order_by(Connection.id)).all()


@pytest.fixture
def signed_in(browser) -> Browser:
    response = browser.register()
    assert response.status_code == 200 and "Your connections" in response.text
    return browser


def test_full_flow_register_connect_consent_webhook_dashboard(signed_in, live_server):
    widget_url = start_connect(signed_in)
    assert widget_url.startswith(live_server.url + "/sandbox/widget/")

    return_url = finish_widget(widget_url)
    query = parse_qs(urlsplit(return_url).query)
    assert urlsplit(return_url).path.startswith("/connect/return/success/")
    assert query["resource"] == ["GARMIN"] and query["user_id"][0]

    page = signed_in.get(return_url)
    assert page.status_code == 200
    assert "Finishing your connection" in page.text or "Connected to Garmin" in page.text

    state = wait_for_terminal(signed_in, return_url)
    assert state["status"] == "connected"
    assert state["connection"]["terra_user_id"] == query["user_id"][0]
    assert state["hint"] == "returned_success"
    assert "Connected to Garmin" in signed_in.get(return_url).text

    dashboard = signed_in.get("/connections").text
    assert 'data-provider="GARMIN" data-status="active"' in dashboard
    assert query["user_id"][0] not in dashboard  # the Terra user id is no news to a person


@pytest.mark.parametrize(
    "outcome, reason, text",
    [("denied", "access_denied", "You declined the permissions"), ("cancelled", "auth_cancelled", "was cancelled")],
)
def test_deny_and_cancel_end_as_failed_with_their_reason(signed_in, live_server, outcome, reason, text):
    return_url = finish_widget(start_connect(signed_in), outcome=outcome)
    assert urlsplit(return_url).path.startswith("/connect/return/failure/")
    state = wait_for_terminal(signed_in, return_url)
    assert (state["status"], state["error"]["code"]) == ("failed", reason)
    page = signed_in.get(return_url).text
    assert text in page and "Try again" in page
    assert connections(live_server) == []


@pytest.mark.parametrize("status", ["200", "201"])
def test_the_flow_connects_whichever_2xx_the_widget_session_answers(signed_in, live_server, status):
    live_server.app.config["SANDBOX_WIDGET_SESSION_STATUS"] = status
    probe = requests.post(
        live_server.url + "/sandbox/api/widget/session", json={}, headers=terra_headers(live_server), timeout=10
    )
    assert probe.status_code == int(status)
    state = wait_for_terminal(signed_in, finish_widget(start_connect(signed_in)))
    assert state["status"] == "connected"


@pytest.mark.parametrize("position", ["documented", "detailed"])
def test_a_denial_ends_failed_whatever_the_failure_redirect_carries(signed_in, live_server, position):
    # Terra documents only reference_id on the failure redirect: the reason comes from the signed webhook.
    live_server.app.config["SANDBOX_FAILURE_REDIRECT"] = position
    return_url = finish_widget(start_connect(signed_in), outcome="denied")
    assert ("reason" in parse_qs(urlsplit(return_url).query)) is (position == "detailed")
    state = wait_for_terminal(signed_in, return_url)
    assert (state["status"], state["error"]["code"]) == ("failed", "access_denied")
    assert "You declined the permissions" in signed_in.get(return_url).text


def test_reconnecting_the_same_account_keeps_one_connection_with_the_new_terra_user(signed_in, live_server):
    first = wait_for_terminal(signed_in, finish_widget(start_connect(signed_in), account="same-account"))
    second_url = finish_widget(start_connect(signed_in), account="same-account")
    second = wait_for_terminal(signed_in, second_url)
    new_terra_id = parse_qs(urlsplit(second_url).query)["user_id"][0]

    assert second["status"] == "connected"
    assert new_terra_id != first["connection"]["terra_user_id"]
    # Both events arrive (user_reauth and auth); wait until both are applied.
    wait_for(
        lambda: (
            len([row for row in connections(live_server) if row.terra_user_id == new_terra_id]) == 1
            and len(connections(live_server)) == 1
        )
    )
    [connection] = connections(live_server)
    assert (connection.id, connection.terra_user_id, connection.status) == (
        first["connection"]["id"],
        new_terra_id,
        "active",
    )


def test_a_different_account_adds_a_second_connection(signed_in, live_server):
    wait_for_terminal(signed_in, finish_widget(start_connect(signed_in), account="first"))
    wait_for_terminal(signed_in, finish_widget(start_connect(signed_in), account="second", provider="OURA"))
    assert sorted(row.provider for row in connections(live_server)) == ["GARMIN", "OURA"]


def test_two_connections_to_one_provider_say_which_is_which(signed_in, live_server):
    for account in ("first", "second"):
        wait_for_terminal(signed_in, finish_widget(start_connect(signed_in), account=account))
    page = signed_in.get("/connections").text
    facts = re.findall(r'<p class="muted connection-facts">(.*?)</p>', page, re.DOTALL)
    rows = connections(live_server)
    assert [row.provider for row in rows] == ["GARMIN", "GARMIN"] and len(facts) == 2
    # When each was made, and the start of its Terra user id (not the whole of it).
    for row in rows:
        [fact] = [fact for fact in facts if f">{row.terra_user_id[:8]}</code>" in fact]
        assert row.created_at.strftime("%d %b %Y, %H:%M") in fact and row.terra_user_id not in page


def test_disconnect_calls_terra_then_marks_the_connection_revoked(signed_in, live_server):
    state = wait_for_terminal(signed_in, finish_widget(start_connect(signed_in)))
    connection_id = state["connection"]["id"]
    terra_id = state["connection"]["terra_user_id"]

    response = signed_in.submit("/connections", f"/connections/{connection_id}/disconnect", {"confirm": "yes"})
    assert response.status_code == 200
    assert 'data-status="revoked"' in response.text and "is disconnected" in response.text

    info = requests.get(
        live_server.url + "/sandbox/v2/userInfo",
        params={"user_id": terra_id},
        headers=terra_headers(live_server),
        timeout=10,
    )
    assert info.json()["is_authenticated"] is False
    # Terra's deauth webhook follows; it must leave the connection revoked, not fail.
    with live_server.app.app_context():
        wait_for(lambda: db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "deauth")).first())
    assert [row.status for row in connections(live_server)] == ["revoked"]


def test_disconnect_shows_from_terras_confirmation_when_no_deauth_webhook_follows(signed_in, live_server):
    # Terra does not say that deauthenticateUser is followed by a deauth webhook: its 200 must be enough.
    state = wait_for_terminal(signed_in, finish_widget(start_connect(signed_in)))
    live_server.app.config["SANDBOX_DEAUTH_WEBHOOK"] = False
    with deliveries_finished():  # whatever the sandbox sends for the deauthentication is sent by the end
        response = signed_in.submit(
            "/connections", f"/connections/{state['connection']['id']}/disconnect", {"confirm": "yes"}
        )
    assert response.status_code == 200
    assert 'data-status="revoked"' in response.text and "is disconnected" in response.text
    assert "deauth" not in [post.event_type for post in traffic_of(live_server.app).webhooks()]
    assert 'data-status="revoked"' in signed_in.get("/connections").text
    assert [row.status for row in connections(live_server)] == ["revoked"]


def test_disconnect_asks_first_and_changes_nothing_until_confirmed(signed_in, live_server):
    state = wait_for_terminal(signed_in, finish_widget(start_connect(signed_in)))
    path = f"/connections/{state['connection']['id']}/disconnect"
    # The dashboard links to a confirmation page: it says what is lost, and that it cannot be undone.
    dashboard = signed_in.get("/connections")
    assert f'href="{path}"' in dashboard.text
    question = signed_in.get(path)
    assert question.status_code == 200 and "Disconnect Garmin?" in question.text
    assert "This cannot be undone" in question.text and 'name="confirm" value="yes"' in question.text
    # A post that did not come from its button is sent there to be asked, and changes nothing.
    unconfirmed = signed_in.submit("/connections", path, allow_redirects=False)
    assert unconfirmed.status_code == 303 and unconfirmed.headers["Location"].endswith(path)
    assert [row.status for row in connections(live_server)] == ["active"]
    signed_in.submit(path, path, {"confirm": "yes"})
    assert [row.status for row in connections(live_server)] == ["revoked"]
    # Once disconnected, the page has nothing left to ask.
    assert "already disconnected" in signed_in.get(path).text


def test_someone_elses_connection_cannot_be_disconnected(signed_in, live_server):
    state = wait_for_terminal(signed_in, finish_widget(start_connect(signed_in)))
    intruder = Browser(live_server.url)
    intruder.register(email="eve@example.com")
    path = f"/connections/{state['connection']['id']}/disconnect"
    assert intruder.get(path).status_code == 404
    response = intruder.submit("/connections", path, {"confirm": "yes"})
    assert response.status_code == 404
    assert [row.status for row in connections(live_server)] == ["active"]


def success_path(live_server, widget_url: str) -> str:
    """The success return path of the attempt behind `widget_url`, made by hand: the widget is not
    finished, so Terra never redirected there."""
    session_id = widget_url.rsplit("/", 1)[1]
    with live_server.app.app_context():
        attempt = db.session.scalars(select(ConnectAttempt).where(ConnectAttempt.terra_session_id == session_id)).one()
        return f"/connect/return/success/{attempt_token(attempt)}"


def test_return_page_never_trusts_the_query_string(signed_in, live_server):
    lose_webhooks(live_server.app.config)
    # Not finished in the widget: a hand-made "success" redirect with an invented Terra user id.
    finish_url = success_path(live_server, start_connect(signed_in)) + "?user_id=invented&resource=GARMIN"
    live_server.app.config["USERINFO_CHECK_AFTER_SECONDS"] = 0
    page = signed_in.get(finish_url)
    assert "Finishing your connection" in page.text
    token = token_of(finish_url)
    assert f'data-status-url="/connect/attempts/status?attempt={token}"' in page.text  # what the page polls
    state = attempt_state(signed_in, finish_url)
    assert state["status"] == "pending" and state["connection"] is None
    assert connections(live_server) == []


def test_late_webhook_is_settled_by_a_server_side_userinfo_check(signed_in, live_server):
    lose_webhooks(live_server.app.config)
    live_server.app.config["USERINFO_CHECK_AFTER_SECONDS"] = 0
    return_url = finish_widget(start_connect(signed_in))
    signed_in.get(return_url)  # records the redirect's user id as a hint
    state = wait_for_terminal(signed_in, return_url)
    assert state["status"] == "connected"
    assert state["connection"]["terra_user_id"] == parse_qs(urlsplit(return_url).query)["user_id"][0]


def test_a_return_url_naming_someone_elses_terra_user_connects_nothing(signed_in, live_server):
    """The userInfo check believes a redirect's Terra user id only when Terra says that user carries
    the caller's reference_id: Eve's real, active Terra user named in Ada's return URL is not Ada's."""
    lose_webhooks(live_server.app.config)
    live_server.app.config["USERINFO_CHECK_AFTER_SECONDS"] = 0
    eve = Browser(live_server.url)
    eve.register(email="eve@example.com")
    eves_terra_user = parse_qs(urlsplit(finish_widget(start_connect(eve), account="eve-garmin")).query)["user_id"][0]

    claim_url = success_path(live_server, start_connect(signed_in)) + f"?user_id={eves_terra_user}"
    assert signed_in.get(claim_url).status_code == 200  # the claim is recorded, then checked with Terra
    state = attempt_state(signed_in, claim_url)
    assert (state["status"], state["connection"]) == ("pending", None)
    assert connections(live_server) == []
    with live_server.app.app_context():  # checked and dropped, not merely not yet due
        assert db.session.scalars(select(ConnectAttempt.redirect_terra_user_id)).all() == [None, None]


def test_expired_widget_session_offers_a_fresh_one(signed_in, live_server, advance_clock):
    live_server.app.config["SANDBOX_SESSION_TTL_SECONDS"] = 60
    widget_url = start_connect(signed_in)
    advance_clock(60)
    late = requests.post(
        widget_url + "/complete", json={"provider": "GARMIN", "account": "a", "outcome": "success"}, timeout=10
    )
    assert late.status_code == 410
    widget_page = requests.get(widget_url, timeout=10)
    assert "expired" in widget_page.text
    # The sandbox's expiry page links back to our failure page (reason=session_expired).
    failure_url = next(part for part in widget_page.text.split('"') if "/connect/return/failure" in part)
    page = signed_in.get(failure_url.replace("&amp;", "&"))
    assert page.status_code == 200
    assert "expired" in page.text and 'id="connect-device"' in page.text


def test_custom_ui_lists_providers_and_connects_one_through_authenticate_user(signed_in, live_server):
    page = signed_in.get("/connections/providers")
    assert page.status_code == 200 and 'data-provider="OURA"' in page.text
    response = signed_in.submit("/connections/providers", "/connections/connect/OURA", allow_redirects=False)
    assert response.status_code == 303
    auth_url = response.headers["Location"]
    # Terra's auth_url is the provider's own login page: no widget, no picker, no redirect on the way.
    login = requests.get(auth_url, allow_redirects=False, timeout=10)
    assert login.status_code == 200 and 'id="provider-login"' in login.text
    state = wait_for_terminal(signed_in, finish_widget(auth_url, provider="OURA"))
    assert state["status"] == "connected" and state["connection"]["provider"] == "OURA"


def test_unknown_provider_in_custom_ui_is_404(signed_in):
    response = signed_in.submit("/connections/providers", "/connections/connect/NOT_A_PROVIDER")
    assert response.status_code == 404


def test_legacy_widget_endpoint_works_when_chosen(start_live_server):
    server = start_live_server(TERRA_WIDGET_API="legacy")
    browser = Browser(server.url)
    browser.register()
    state = wait_for_terminal(browser, finish_widget(start_connect(browser)))
    assert state["status"] == "connected"


def test_legacy_410_becomes_a_clear_message(start_live_server):
    server = start_live_server(TERRA_WIDGET_API="legacy", SANDBOX_LEGACY_GONE="true")
    browser = Browser(server.url)
    browser.register()
    page = browser.submit("/connections", "/connections/connect")
    assert page.status_code == 200
    assert "TERRA_WIDGET_API=session" in page.text
    assert "failed" in page.text  # the attempt is shown as failed, not left pending


def test_user_cap_of_the_test_environment_fails_the_attempt(signed_in, live_server):
    live_server.app.config["SANDBOX_USER_CAP"] = 1
    wait_for_terminal(signed_in, finish_widget(start_connect(signed_in), account="first"))
    state = wait_for_terminal(signed_in, finish_widget(start_connect(signed_in), account="second"))
    assert (state["status"], state["error"]["code"]) == ("failed", "user_limit_reached")


def test_pages_need_a_login(browser):
    response = browser.get("/connections", allow_redirects=False)
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    assert browser.http.post(browser.base_url + "/connections/connect", timeout=10).status_code == 400  # no CSRF token


def terra_sessions_started(live_server) -> int:
    """Widget sessions and authenticateUser calls the sandbox received: what spends the Terra quota."""
    traffic = traffic_of(live_server.app)
    return sum(
        len(traffic.requests(f"sandbox.{endpoint}"))
        for endpoint in ("create_widget_session", "generate_widget_session", "authenticate_user")
    )


def test_starting_connections_is_limited_per_user_before_terra_is_asked(signed_in, live_server):
    live_server.app.config["CONNECT_RATE_LIMIT"] = "2 per minute"
    start_connect(signed_in)
    provider = signed_in.submit("/connections/providers", "/connections/connect/OURA", allow_redirects=False)
    assert provider.status_code == 303
    assert terra_sessions_started(live_server) == 2

    for action in ("/connections/connect", "/connections/connect/OURA"):
        refused = signed_in.submit("/connections", action, allow_redirects=False)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "Too many connections started: the limit is 2 per minute" in refused.text
    assert terra_sessions_started(live_server) == 2  # no Terra call spent on a refused start
    with live_server.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ConnectAttempt)) == 2

    other_user = Browser(live_server.url)
    other_user.register(email="eve@example.com")
    assert start_connect(other_user).startswith(live_server.url + "/sandbox/widget/")  # per user, not per address


def test_finishing_someone_elses_widget_says_so_on_the_return_page(signed_in, live_server):
    """The attacker's case: Eve sends Ada her own widget link. Ada, signed in here, connects her
    device in it and lands on Eve's return page: it must not read as news about Ada's account."""
    eve = Browser(live_server.url)
    eve.register(email="eve@example.com")
    return_url = finish_widget(start_connect(eve), account="ada-garmin")

    page = signed_in.get(return_url)
    assert page.status_code == 200
    assert "This connection is not for your account" in page.text and "remove this access" in page.text
    assert 'id="attempt"' not in page.text and "Connected" not in page.text and "attempt-status.js" not in page.text
    token = token_of(return_url)
    assert signed_in.get("/connect/attempts/status", params={"attempt": token}).status_code == 404

    # The verified outcome is Eve's, and nothing reached Ada's account.
    assert wait_for_terminal(eve, return_url)["status"] == "connected"
    assert 'data-provider="GARMIN"' not in signed_in.get("/connections").text
    # A browser with no session at all (an in-app browser) holds the token, and that is enough.
    assert "Connected to Garmin" in Browser(live_server.url).get(return_url).text


# -- Terra's ambiguous shapes, produced by the sandbox's switches --------------------------------


@pytest.mark.parametrize("order", ["reauth_first", "auth_first"])
def test_a_relink_by_another_app_user_ends_the_first_users_connection(start_live_server, order):
    server = start_live_server(SANDBOX_FAULTS="relink_across_users", SANDBOX_REAUTH_ORDER=order)
    ada, bob = Browser(server.url), Browser(server.url)
    ada.register("ada@example.com")
    bob.register("bob@example.com")
    ada_state = wait_for_terminal(ada, finish_widget(start_connect(ada), account="shared-watch"))
    bob_url = finish_widget(start_connect(bob), account="shared-watch")
    bob_state = wait_for_terminal(bob, bob_url)
    bob_terra_id = parse_qs(urlsplit(bob_url).query)["user_id"][0]

    assert bob_state["status"] == "connected" and bob_state["connection"]["terra_user_id"] == bob_terra_id
    assert bob_state["connection"]["id"] != ada_state["connection"]["id"]
    wait_for(lambda: [row.status for row in connections(server)] == ["revoked", "active"])
    ada_row, bob_row = connections(server)
    assert (ada_row.terra_user_id, ada_row.status_reason) == (
        ada_state["connection"]["terra_user_id"],
        "relinked_elsewhere",
    )
    assert bob_row.terra_user_id == bob_terra_id
    assert "connected to another account of this app" in ada.get("/connections").text
    assert bob_terra_id not in ada.get("/connections").text


def test_a_cancel_whose_flow_id_names_no_attempt_is_ended_by_the_failure_return(start_live_server):
    server = start_live_server(SANDBOX_FAULTS="foreign_flow_id", BROWSER_CLOSED_GRACE_SECONDS="1")
    browser = Browser(server.url)
    browser.register()
    return_url = finish_widget(start_connect(browser), outcome="denied")
    with server.app.app_context():
        wait_for(
            lambda: db.session.scalars(
                select(WebhookEvent).where(
                    WebhookEvent.event_type == "auth_cancelled", WebhookEvent.outcome == "applied"
                )
            ).first()
        )
    assert attempt_state(browser, return_url)["status"] == "pending"  # the webhook named no attempt
    assert browser.get(return_url).status_code == 200  # the browser came back through the failure URL
    state = wait_for_terminal(browser, return_url)
    assert (state["status"], state["error"]["code"]) == ("cancelled", "returned_failure")


@pytest.mark.parametrize("outcome, status", [("success", "connected"), ("denied", "failed")])
def test_return_pages_work_when_terra_appends_its_parameters(start_live_server, outcome, status):
    server = start_live_server(SANDBOX_FAULTS="appended_redirect")
    browser = Browser(server.url)
    browser.register()
    return_url = finish_widget(start_connect(browser), outcome=outcome)
    assert return_url.count("?") == 1 and "/return/" in urlsplit(return_url).path
    assert browser.get(return_url).status_code == 200
    assert wait_for_terminal(browser, return_url)["status"] == status


def test_an_sdk_only_provider_on_the_web_says_to_use_the_mobile_app_at_once(signed_in, live_server):
    return_url = finish_widget(start_connect(signed_in), provider="HEALTH_CONNECT")
    assert parse_qs(urlsplit(return_url).query)["user_id"] == ["null"]
    page = signed_in.get(return_url).text
    assert "Connect Health Connect from the mobile app" in page and 'id="sdk-required"' in page
    state = attempt_state(signed_in, return_url)
    assert (state["status"], state["terminal"], state["resource"]) == ("sdk_required", True, "HEALTH_CONNECT")
    assert connections(live_server) == []


def s3_rows(server) -> list[WebhookEvent]:
    with server.app.app_context():
        return db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_type == "s3_payload")).all()


@pytest.mark.parametrize(
    "max_bytes, outcome, detail",
    [
        ("10485760", "applied", None),
        ("100", "failed", "larger than 100 bytes"),
    ],
)
def test_ping_mode_data_is_downloaded_within_a_size_limit(start_live_server, max_bytes, outcome, detail):
    server = start_live_server(SANDBOX_FAULTS="s3_payload", TERRA_PAYLOAD_MAX_BYTES=max_bytes)
    browser = Browser(server.url)
    browser.register()
    terra_id = wait_for_terminal(browser, finish_widget(start_connect(browser)))["connection"]["terra_user_id"]
    sent = requests.post(f"{server.url}/sandbox/users/{terra_id}/events", json={"type": "activity"}, timeout=10)
    assert sent.status_code == 202
    [row] = wait_for(lambda: [row for row in s3_rows(server) if row.outcome != "received"])
    assert row.outcome == outcome and (detail is None or detail in row.detail)


def test_a_provider_or_reason_terra_adds_later_is_shown_in_words_not_as_a_code():
    assert (provider_label("HEALTH_CONNECT").name, provider_label("HEALTH_CONNECT").monogram) == (
        "Health Connect",
        "HC",
    )
    new = provider_label("NEW_BAND")
    assert (new.name, new.monogram, new.code) == ("New Band", "NB", "NEW_BAND")
    assert 0 <= new.tone < 8
    assert reason_text("access_revoked") == "Access was withdrawn in the provider's own settings."
    assert reason_text("invalid_credentials") == "Invalid credentials."
    assert reason_text(None) == ""


def test_the_connect_button_warns_a_webview_that_providers_refuse_it(signed_in):
    for agent in (ANDROID_WEBVIEW, FACEBOOK_IOS):
        page = " ".join(signed_in.get("/connections", headers={"User-Agent": agent}).text.split())
        assert 'id="open-in-browser"' in page and "Open it in your browser" in page
    assert 'id="open-in-browser"' not in signed_in.get("/connections").text  # a browser is not warned
