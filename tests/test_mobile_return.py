"""The mobile return leg: HTTPS return pages, deep links from configuration, association files."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from playwright.sync_api import sync_playwright

from app import create_app
from config import ConfigError, load_config
from extensions import db
from mobile_redirects.deep_links import app_link as build_app_link
from mobile_redirects.deep_links import direct_link
from models import ConnectAttempt, User
from services.attempts import attempt_token
from tests.helpers import auth_event, create_attempt, create_user, deliver, lose_webhooks, post_event, terra_user
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_config import PRODUCTION
from tools.mobile_client import AppLinkCatcher, MobileClient
from tools.mobile_client import finish_widget as finish_in_browser

ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Version/18.0 Mobile/15E148"
# iPadOS Safari and the in-app browser sheets on iPad send the desktop Safari user agent.
IPAD = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
DESKTOP = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
FINGERPRINT = ":".join(["14", "6D", "E9", "83"] * 8)


def mobile_attempt(app, callback: str | None = "scheme", email: str = "ada@example.com"):
    """(id, token) of a page-mode mobile attempt whose app catches `callback` links."""
    with app.app_context():
        user = create_user(email)
        attempt = create_attempt(user, channel="mobile", return_mode="page", callback=callback)
        with app.test_request_context():
            return attempt.id, attempt_token(attempt)


@pytest.fixture
def attempt(app):
    return mobile_attempt(app)


def return_page(client, token, outcome="success", agent=DESKTOP, **params):
    return client.get(f"/mobile/return/{outcome}/{token}", query_string=params, headers={"User-Agent": agent})


def app_link(response) -> str:
    match = re.search(r'id="return-to-app" href="([^"]+)"', response.get_data(as_text=True))
    assert match, "no Return to app link"
    return match.group(1).replace("&amp;", "&")


def test_return_page_records_the_hint_and_offers_the_app(client, app, attempt):
    attempt_id, token = attempt
    response = return_page(client, token, user_id="terra-user-1", resource="GARMIN")
    assert response.status_code == 200
    assert app_link(response) == f"com.example.terraconnect://connect/success?attempt_id={attempt_id}"
    assert "window.location.replace" in response.get_data(as_text=True) and b"Almost done" in response.data
    with app.app_context():
        row = db.session.get(ConnectAttempt, attempt_id)
        assert (row.hint, row.redirect_terra_user_id, row.status) == ("returned_success", "terra-user-1", "pending")


def test_failure_page_links_the_failure_outcome(client, attempt):
    attempt_id, token = attempt
    response = return_page(client, token, outcome="failure", reason="access_denied")
    assert app_link(response).endswith(f"connect/failure?attempt_id={attempt_id}")
    assert b"not completed" in response.data


def test_return_page_headers(client, attempt):
    response = return_page(client, attempt[1])
    assert response.headers["Cache-Control"] == "no-store"
    csp = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert csp.split("; ") == [
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        "style-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
    assert f'<script nonce="{nonce}">' in response.get_data(as_text=True)
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert return_page(client, attempt[1]).headers["Content-Security-Policy"] != csp  # a fresh nonce each time


def test_android_gets_an_intent_url_with_a_fallback_to_this_page(client, app, attempt):
    app.config["ANDROID_PACKAGE_NAME"] = "com.example.terraconnect"
    attempt_id, token = attempt
    link = app_link(return_page(client, token, agent=ANDROID, **TERRAS_QUERY))
    assert link.startswith(f"intent://connect/success?attempt_id={attempt_id}#Intent;")
    assert ";scheme=com.example.terraconnect;" in f";{link.split('#Intent;')[1]}"
    assert "package=com.example.terraconnect;" in link and link.endswith(";end")
    fallback = unquote(re.search(r"S\.browser_fallback_url=([^;]+);", link).group(1))
    assert urlsplit(fallback).path == f"/mobile/return/success/{token}"
    # Terra's query comes back with it: the page must read the same answer the second time.
    assert parse_qs(urlsplit(fallback).query) == {**{k: [v] for k, v in TERRAS_QUERY.items()}, "tried": ["1"]}


TERRAS_QUERY = {"user_id": "terra-user-1", "resource": "GARMIN", "reference_id": "ref-1"}


def test_after_the_fallback_the_page_does_not_try_again_but_keeps_the_link(client, attempt):
    response = return_page(client, attempt[1], agent=ANDROID, tried="1")
    assert "window.location.replace" not in response.get_data(as_text=True)
    assert app_link(response).startswith("intent://")


@pytest.mark.parametrize("agent", [IPHONE, IPAD, DESKTOP], ids=["iPhone", "iPad", "desktop"])
def test_the_link_is_the_kind_the_attempt_catches_whatever_the_user_agent(client, app, agent):
    app.config["MOBILE_UNIVERSAL_LINK_BASE"] = "https://links.example.com/terra"
    scheme_id, scheme_token = mobile_attempt(app, "scheme")
    https_id, https_token = mobile_attempt(app, "https", email="grace@example.com")
    response = return_page(client, scheme_token, agent=agent)
    assert app_link(response) == f"com.example.terraconnect://connect/success?attempt_id={scheme_id}"
    assert "window.location.replace" in response.get_data(as_text=True)
    # An https link is offered, never tried: unclaimed, it would replace the only way back.
    response = return_page(client, https_token, agent=agent)
    assert app_link(response) == f"https://links.example.com/terra/connect/success?attempt_id={https_id}"
    assert "<script" not in response.get_data(as_text=True)


def test_an_attempt_from_before_the_callback_was_recorded_follows_the_configured_default(client, app):
    app.config["MOBILE_CALLBACK"] = "scheme"
    attempt_id, token = mobile_attempt(app, callback=None)
    assert app_link(return_page(client, token)) == f"com.example.terraconnect://connect/success?attempt_id={attempt_id}"


def test_without_any_deep_link_configured_the_page_still_explains(client, app):
    app.config["MOBILE_CALLBACK"] = None
    response = return_page(client, mobile_attempt(app, callback=None)[1])
    assert response.status_code == 200
    assert b"return-to-app" not in response.data and b"close this window" in response.data


# One rule for both return pages, web and mobile (services/return_visits.py).
BOTH_RETURN_PAGES = ["/connect/return/success", "/mobile/return/success"]


def stored_hint(app, attempt_id):
    with app.app_context():
        row = db.session.get(ConnectAttempt, attempt_id)
        return row.hint, row.redirect_terra_user_id, row.status


@pytest.mark.parametrize("page", BOTH_RETURN_PAGES)
@pytest.mark.parametrize("signed_in_as", [None, "ada@example.com"], ids=["no session (in-app browser)", "the owner"])
def test_the_token_alone_opens_the_return_page(client, app, auth, attempt, page, signed_in_as):
    attempt_id, token = attempt
    if signed_in_as:
        assert auth.login(signed_in_as).status_code == 303
    response = client.get(f"{page}/{token}", query_string={"user_id": "terra-user-1"})
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "not for your account" not in text
    assert ("Finishing your connection" if page.startswith("/connect/") else "Almost done") in text
    assert stored_hint(app, attempt_id) == ("returned_success", "terra-user-1", "pending")


@pytest.mark.parametrize("page", BOTH_RETURN_PAGES)
def test_another_signed_in_account_is_told_the_link_is_not_theirs(client, app, auth, attempt, page):
    attempt_id, token = attempt
    auth.register("eve@example.com")
    response = client.get(f"{page}/{token}", query_string={"user_id": "terra-user-1"})
    assert response.status_code == 200
    text = " ".join(response.get_data(as_text=True).split())
    assert "This connection is not for your account" in text and "nothing was connected to your account" in text
    assert "Finishing your connection" not in text and "Almost done" not in text and 'id="attempt"' not in text
    if page.startswith("/mobile/"):  # the app asks the API, as its own user, what happened
        assert app_link(response) == f"com.example.terraconnect://connect/success?attempt_id={attempt_id}"
    # The hint is advisory: recorded whoever holds the token, it decides nothing.
    assert stored_hint(app, attempt_id) == ("returned_success", "terra-user-1", "pending")


@pytest.mark.parametrize("page", BOTH_RETURN_PAGES)
@pytest.mark.parametrize(
    "requested, query, status",
    [
        pytest.param("GARMIN", {}, "pending", id="Garmin, the link opened without its query"),
        pytest.param("GARMIN", {"tried": "1"}, "pending", id="Garmin, a fallback that dropped the query"),
        pytest.param("GARMIN", {"user_id": "null", "resource": "GARMIN"}, "pending", id="Garmin, user_id=null"),
        pytest.param("APPLE", {"resource": "APPLE"}, "pending", id="Apple Health, no user_id (not null)"),
        # The provider the attempt asked for stands in for a resource the redirect does not name.
        pytest.param("APPLE", {"user_id": "null"}, "sdk_required", id="Apple Health asked, user_id=null"),
        pytest.param(None, {"user_id": "null", "resource": "SAMSUNG"}, "sdk_required", id="Samsung Health picked"),
    ],
)
def test_only_terras_null_user_for_an_sdk_only_provider_ends_the_attempt_on_return(
    client, app, page, requested, query, status
):
    """A success return is a hint. It ends an attempt only as Terra's widget answers for Apple Health,
    Samsung Health and Health Connect (`user_id=null`, no webhook to follow); a return without
    Terra's query, or naming a provider that has webhooks, waits for Terra's word."""
    with app.app_context():
        attempt = create_attempt(create_user(), channel="mobile", return_mode="page", requested_provider=requested)
        with app.test_request_context():
            attempt_id, token = attempt.id, attempt_token(attempt)
    assert client.get(f"{page}/{token}", query_string=query).status_code == 200
    assert stored_hint(app, attempt_id) == ("returned_success", None, status)


@pytest.mark.parametrize("page", BOTH_RETURN_PAGES)
@pytest.mark.parametrize("query", [{}, {"tried": "1"}], ids=["without its query", "the old fallback's"])
def test_garmin_returning_without_its_user_stays_pending_until_the_webhook_says_connected(client, app, page, query):
    with app.app_context():
        user = create_user()
        attempt = create_attempt(user, channel="mobile", return_mode="page", requested_provider="GARMIN")
        with app.test_request_context():
            attempt_id, token = attempt.id, attempt_token(attempt)
        auth = auth_event(user, terra_user(user, "tu-garmin"), attempt.terra_session_id)
    assert client.get(f"{page}/{token}", query_string=query, headers={"User-Agent": ANDROID}).status_code == 200
    assert stored_hint(app, attempt_id) == ("returned_success", None, "pending")
    deliver(client, auth, secret=app.config["TERRA_SIGNING_SECRET"])
    assert stored_hint(app, attempt_id)[2] == "connected"


@pytest.mark.parametrize("outcome", ["success", "failure"])
@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda app, token: token, id="expired"),
        pytest.param(lambda app, token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"), id="forged"),
        pytest.param(lambda app, token: "not-a-token", id="garbage"),
    ],
)
@pytest.mark.parametrize(
    "agent, scheme_link",
    [(IPHONE, "com.example.terraconnect://connect/{outcome}"), (ANDROID, "intent://connect/{outcome}#Intent;")],
)
def test_an_invalid_return_link_still_leads_back_into_the_app(
    client, app, attempt, make_token, outcome, agent, scheme_link
):
    """In the in-app browser a dead link must not be a dead end: a 404 that says what happened and
    offers every configured way back to the app (which asks the API where its connection stands),
    naming no attempt and trying none by itself."""
    app.config["ATTEMPT_TOKEN_MAX_AGE"] = -1  # every token is past its age, the genuine one too
    app.config["MOBILE_UNIVERSAL_LINK_BASE"] = "https://links.example.com/terra"
    response = return_page(client, make_token(app, attempt[1]), outcome=outcome, agent=agent)
    text = response.get_data(as_text=True)
    assert response.status_code == 404 and "This link no longer works" in text and "not valid" in text
    assert app_link(response).startswith(scheme_link.format(outcome=outcome))
    assert f'id="return-to-app-link" href="https://links.example.com/terra/connect/{outcome}"' in text
    assert "window.location.replace" not in text and "attempt_id" not in text
    assert response.headers["Cache-Control"] == "no-store"


ANDROID_WEBVIEW = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP1A.240505.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/131.0.6778.39 Mobile Safari/537.36"
)
FACEBOOK_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "[FBAN/FBIOS;FBAV/480.0.0.40.109;FBBV/654321;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/18.0;FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/5]"
)
INSTAGRAM_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/131.0.6778.39 Mobile Safari/537.36 Instagram 357.0.0.25.101 Android"
)


@pytest.mark.parametrize(
    "agent", [ANDROID_WEBVIEW, FACEBOOK_IOS, INSTAGRAM_ANDROID], ids=["Android WebView", "Facebook", "Instagram"]
)
@pytest.mark.parametrize("page", ["return page", "universal link page"])
def test_a_webview_is_not_sent_to_the_app_by_itself_and_is_told_to_open_the_browser(
    client, attempt, tmp_path, agent, page
):
    if page == "return page":
        response = return_page(client, attempt[1], agent=agent)
    else:
        links_host = configured_app(tmp_path, MOBILE_UNIVERSAL_LINK_BASE=LINKS, MOBILE_APP_SCHEME="com.example.app")
        response = links_host.test_client().get(
            "/terra/connect/success", headers={"User-Agent": agent}, base_url="https://links.example.com"
        )
    text = " ".join(response.get_data(as_text=True).split())
    assert response.status_code == 200 and app_link(response)  # the link stays, for a tap
    assert "window.location.replace" not in text
    assert 'id="open-in-browser"' in text and "open this page in your browser" in text


def test_deep_links_carry_only_the_attempt_and_the_outcome():
    config = {
        "MOBILE_APP_SCHEME": "com.example.app",
        "MOBILE_UNIVERSAL_LINK_BASE": "https://links.example.com/terra",
        "ANDROID_PACKAGE_NAME": "",
    }
    link = build_app_link(config, "scheme", "failure", "abc&x=1", IPHONE, "https://x/")
    assert link == "com.example.app://connect/failure?attempt_id=abc%26x%3D1"
    # App mode: exactly the host and path a callback matches; Terra appends its own query.
    assert direct_link(config, "scheme", "failure") == "com.example.app://connect/failure"
    assert direct_link(config, "https", "success") == "https://links.example.com/terra/connect/success"
    with pytest.raises(ValueError, match="unknown outcome"):
        direct_link(config, "scheme", "javascript:alert(1)")
    assert build_app_link({**config, "MOBILE_APP_SCHEME": ""}, "scheme", "success", "abc", IPHONE, "https://x/") is None
    assert build_app_link(config, None, "success", "abc", IPHONE, "https://x/") is None


LINKS = "https://links.example.com/terra"
PRODUCTION_MOBILE = {**PRODUCTION, "MOBILE_APP_SCHEME": "com.example.app"}


@pytest.mark.parametrize(
    "env, message",
    [
        *[
            pytest.param({"MOBILE_APP_SCHEME": scheme}, "MOBILE_APP_SCHEME", id=f"scheme {scheme}")
            for scheme in ("tel", "market", "http", "https", "javascript", "intent", "mailto", "sms")
        ],
        pytest.param({"MOBILE_APP_SCHEME": "my_app"}, "MOBILE_APP_SCHEME", id="not a scheme"),
        pytest.param({"MOBILE_APP_SCHEME": "com.example.app://evil"}, "MOBILE_APP_SCHEME", id="scheme with a path"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "http://links.example.com"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "https://user@links.example.com"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "https://links.example.com/t?next=//evil"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "https://links.example.com\\@evil"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        pytest.param(
            {**PRODUCTION, "MOBILE_UNIVERSAL_LINK_BASE": "https://connect.example.com/links"},
            "MOBILE_UNIVERSAL_LINK_BASE must be on another host than PUBLIC_BASE_URL",
            id="links on the return pages' host",
        ),
        pytest.param(
            {"PUBLIC_BASE_URL": "https://links.example.com", "MOBILE_UNIVERSAL_LINK_BASE": LINKS},
            "MOBILE_UNIVERSAL_LINK_SAME_HOST",
            id="links on the return pages' host, development",
        ),
        ({"MOBILE_UNIVERSAL_LINK_SAME_HOST": "sometimes"}, "MOBILE_UNIVERSAL_LINK_SAME_HOST"),
        pytest.param(
            {**PRODUCTION, "MOBILE_REDIRECT_MODE": "app"}, "MOBILE_REDIRECT_MODE=app needs", id="app mode, no link"
        ),
        pytest.param({"MOBILE_CALLBACK": "https"}, "MOBILE_CALLBACK=https needs MOBILE_UNIVERSAL_LINK_BASE"),
        pytest.param(
            {**PRODUCTION, "MOBILE_UNIVERSAL_LINK_BASE": LINKS, "MOBILE_CALLBACK": "scheme"},
            "MOBILE_CALLBACK=scheme needs MOBILE_APP_SCHEME",
        ),
        ({"MOBILE_CALLBACK": "universal"}, "MOBILE_CALLBACK"),
        ({"IOS_APP_IDS": "com.example.app"}, "IOS_APP_IDS"),
        ({"ANDROID_PACKAGE_NAME": "not a package"}, "ANDROID_PACKAGE_NAME"),
        ({"ANDROID_CERT_SHA256": "AB:CD"}, "ANDROID_CERT_SHA256"),
    ],
)
def test_deep_link_configuration_is_validated_at_start_up(tmp_path, env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(env, str(tmp_path))


@pytest.mark.parametrize(
    "env, scheme, callback",
    [
        pytest.param({}, "com.example.terraconnect", "scheme", id="development: the demo scheme"),
        pytest.param({"MOBILE_UNIVERSAL_LINK_BASE": LINKS}, "", "https", id="development: the base alone"),
        pytest.param({**PRODUCTION}, "", None, id="production: no link, page mode"),
        pytest.param({**PRODUCTION, "MOBILE_UNIVERSAL_LINK_BASE": LINKS}, "", "https", id="production: base only"),
        pytest.param(
            {**PRODUCTION_MOBILE, "MOBILE_UNIVERSAL_LINK_BASE": LINKS, "MOBILE_REDIRECT_MODE": "app"},
            "com.example.app",
            "scheme",
            id="production: both, app mode",
        ),
        pytest.param(
            {**PRODUCTION_MOBILE, "MOBILE_UNIVERSAL_LINK_BASE": LINKS, "MOBILE_CALLBACK": "https"},
            "com.example.app",
            "https",
            id="production: both, https by default",
        ),
    ],
)
def test_configurations_that_start(tmp_path, env, scheme, callback):
    config = load_config(env, str(tmp_path))
    assert (config["MOBILE_APP_SCHEME"], config["MOBILE_CALLBACK"]) == (scheme, callback)


def test_links_on_the_same_host_only_when_asked_and_the_links_host_is_trusted(tmp_path):
    same_host = {**PRODUCTION, "MOBILE_UNIVERSAL_LINK_BASE": "https://connect.example.com/links"}
    config = load_config({**same_host, "MOBILE_UNIVERSAL_LINK_SAME_HOST": "1"}, str(tmp_path))
    assert config["MOBILE_UNIVERSAL_LINK_BASE"] == "https://connect.example.com/links"
    config = load_config({**PRODUCTION, "MOBILE_UNIVERSAL_LINK_BASE": LINKS}, str(tmp_path))
    assert config["TRUSTED_HOSTS"] == ["connect.example.com", "links.example.com"]


def configured_app(tmp_path, **env):
    return create_app(
        environ={"APP_ENV": "testing", "SECRET_KEY": "k", "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite", **env}
    )


def test_apple_app_site_association_is_byte_exact(tmp_path):
    app = configured_app(
        tmp_path,
        IOS_APP_IDS="ABCDE12345.com.example.app,FGHIJ67890.com.example.beta",
        MOBILE_UNIVERSAL_LINK_BASE="https://links.example.com/terra",
    )
    response = app.test_client().get("/.well-known/apple-app-site-association")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert (
        response.data
        == b"""{
  "applinks": {
    "details": [
      {
        "appIDs": [
          "ABCDE12345.com.example.app",
          "FGHIJ67890.com.example.beta"
        ],
        "components": [
          {
            "/": "/terra/connect/success",
            "comment": "Terra connect result"
          },
          {
            "/": "/terra/connect/failure",
            "comment": "Terra connect result"
          }
        ]
      }
    ]
  },
  "webcredentials": {
    "apps": [
      "ABCDE12345.com.example.app",
      "FGHIJ67890.com.example.beta"
    ]
  }
}
"""
    )


def test_without_a_base_the_apple_file_has_no_applinks(tmp_path):
    app = configured_app(tmp_path, IOS_APP_IDS="ABCDE12345.com.example.app")
    document = app.test_client().get("/.well-known/apple-app-site-association").json
    assert document == {"webcredentials": {"apps": ["ABCDE12345.com.example.app"]}}


@pytest.mark.parametrize("base", ["https://connect.example.com", "https://connect.example.com/mobile/return"])
def test_the_apple_file_never_opens_a_return_page_in_the_app(tmp_path, base):
    """Even on the return pages' own host (allowed on purpose), only the exact link paths open the app."""
    app = configured_app(
        tmp_path,
        **PRODUCTION,
        MOBILE_UNIVERSAL_LINK_BASE=base,
        MOBILE_UNIVERSAL_LINK_SAME_HOST="1",
        IOS_APP_IDS="ABCDE12345.com.example.app",
    )
    client = app.test_client()
    document = client.get("/.well-known/apple-app-site-association", base_url="https://connect.example.com").json
    paths = [component["/"] for component in document["applinks"]["details"][0]["components"]]
    prefix = base.removeprefix("https://connect.example.com")
    assert paths == [f"{prefix}/connect/success", f"{prefix}/connect/failure"]
    assert not any(wildcard in path for path in paths for wildcard in "*?")
    for page in ("/mobile/return/success/token", "/connect/return/failure/token", "/connect/return/success/t"):
        assert page not in paths


def test_the_universal_link_paths_have_a_page(tmp_path):
    app = configured_app(tmp_path, MOBILE_UNIVERSAL_LINK_BASE=LINKS, MOBILE_APP_SCHEME="com.example.app")
    client = app.test_client()

    def visit(outcome, agent, **params):
        return client.get(
            f"/terra/connect/{outcome}",
            query_string=params,
            headers={"User-Agent": agent},
            base_url="https://links.example.com",
        )

    # Terra's own parameters (app mode) are ignored; the way back is the scheme link, tried once.
    response = visit("success", IPHONE, user_id="terra-user", reference_id="terra-reference")
    assert response.status_code == 200 and b"Almost done" in response.data
    assert app_link(response) == "com.example.app://connect/success"
    assert "window.location.replace" in response.get_data(as_text=True)
    assert b"terra-user" not in response.data and b"terra-reference" not in response.data
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Referrer-Policy"] == "no-referrer"
    response = visit("failure", ANDROID, attempt_id="abc")
    assert b"not completed" in response.data
    link = app_link(response)
    assert link.startswith("intent://connect/failure?attempt_id=abc#Intent;scheme=com.example.app;")
    fallback = unquote(re.search(r"S\.browser_fallback_url=([^;]+);", link).group(1))
    assert fallback == f"{LINKS}/connect/failure?attempt_id=abc&tried=1"
    assert "window.location.replace" not in visit("failure", ANDROID, attempt_id="abc", tried="1").get_data(True)
    assert app_link(visit("success", IPHONE, attempt_id="x&y=<z>")) == "com.example.app://connect/success"
    assert visit("elsewhere", IPHONE).status_code == 404
    assert client.get("/connect/success").status_code == 404  # only under the base path


def test_in_app_mode_the_universal_link_pages_fallback_keeps_terras_query(tmp_path):
    """App mode, an https callback the app did not catch: Terra's redirect lands on the links host's
    page, whose intent link must come back with Terra's query too."""
    app = configured_app(tmp_path, MOBILE_UNIVERSAL_LINK_BASE=LINKS, MOBILE_APP_SCHEME="com.example.app")
    response = app.test_client().get(
        "/terra/connect/success",
        query_string=TERRAS_QUERY,
        headers={"User-Agent": ANDROID},
        base_url="https://links.example.com",
    )
    fallback = unquote(re.search(r"S\.browser_fallback_url=([^;]+);", app_link(response)).group(1))
    assert fallback.startswith(f"{LINKS}/connect/success?")
    assert parse_qs(urlsplit(fallback).query) == {**{k: [v] for k, v in TERRAS_QUERY.items()}, "tried": ["1"]}


def test_the_universal_link_page_without_a_scheme_still_says_what_to_do(tmp_path):
    app = configured_app(tmp_path, MOBILE_UNIVERSAL_LINK_BASE="https://links.example.com")
    response = app.test_client().get("/connect/success", headers={"User-Agent": IPHONE})
    assert response.status_code == 200
    assert b"return-to-app" not in response.data and b"close this window" in response.data


def test_production_serves_the_links_host_too(tmp_path):
    app = configured_app(tmp_path, **PRODUCTION_MOBILE, MOBILE_UNIVERSAL_LINK_BASE=LINKS)
    client = app.test_client()
    assert client.get("/terra/connect/success", base_url="https://links.example.com").status_code == 200
    assert client.get("/terra/connect/success", base_url="https://evil.example.com").status_code == 400


def test_asset_links_is_byte_exact(tmp_path):
    app = configured_app(tmp_path, ANDROID_PACKAGE_NAME="com.example.app", ANDROID_CERT_SHA256=FINGERPRINT.lower())
    response = app.test_client().get("/.well-known/assetlinks.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert (
        response.data
        == (
            """[
  {
    "relation": [
      "delegate_permission/common.handle_all_urls"
    ],
    "target": {
      "namespace": "android_app",
      "package_name": "com.example.app",
      "sha256_cert_fingerprints": [
        "FINGERPRINT"
      ]
    }
  }
]
""".replace("FINGERPRINT", FINGERPRINT)
        ).encode()
    )


@pytest.mark.parametrize("path", ["/.well-known/apple-app-site-association", "/.well-known/assetlinks.json"])
def test_association_files_are_404_when_not_configured(client, path):
    response = client.get(path)
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/.well-known/apple-app-site-association", "/.well-known/assetlinks.json"])
def test_association_files_never_redirect(tmp_path, path):
    app = configured_app(
        tmp_path,
        IOS_APP_IDS="ABCDE12345.com.example.app",
        ANDROID_PACKAGE_NAME="com.example.app",
        ANDROID_CERT_SHA256=FINGERPRINT,
    )
    client = app.test_client()
    assert client.get(path).status_code == 200
    assert client.get(path + "/").status_code == 404  # no slash redirect either


@pytest.mark.browser
def test_return_page_sends_chromium_to_the_deep_link_and_shows_the_link(live_server):
    with live_server.app.app_context():
        attempt = create_attempt(create_user(), channel="mobile", return_mode="page")
        attempt_id = attempt.id
        with live_server.app.test_request_context():
            token = attempt_token(attempt)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        expected = f"com.example.terraconnect://connect/success?attempt_id={attempt_id}"
        with page.expect_request(lambda request: request.url.startswith("com.example.terraconnect:")) as sent:
            page.goto(f"{live_server.url}/mobile/return/success/{token}", wait_until="commit")
        assert sent.value.url == expected
        link = page.locator("#return-to-app")
        assert link.get_attribute("href") == expected
        assert link.inner_text() == "Return to app"
        browser.close()


@pytest.mark.browser
def test_chrome_on_android_comes_back_through_the_fallback_with_terras_query(start_live_server):
    """Page mode, `callback: scheme`, in Chromium as a Pixel: the intent link's fallback (where Chrome
    goes when it cannot open the app) carries Terra's query, and a Garmin attempt followed back
    through it stays pending until Terra's webhook says connected."""
    server = start_live_server(ANDROID_PACKAGE_NAME="com.example.terraconnect")
    lose_webhooks(server.app.config)  # Terra's word arrives when the test sends it
    mobile = MobileClient(server.url, say=lambda _: None)
    mobile.register("ada@example.com", "correct horse battery")
    mobile.sign_in("ada@example.com", "correct horse battery")
    attempt = mobile.start_attempt("page", ["GARMIN"], "scheme")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pixel = {key: value for key, value in playwright.devices["Pixel 7"].items() if key != "default_browser_type"}
        page = browser.new_context(**pixel).new_page()
        catcher = AppLinkCatcher(page, "com.example.terraconnect:", "intent:")
        finish_in_browser(page, attempt["url"], "GARMIN", "ada-garmin", "allow")
        page.wait_for_url("**/mobile/return/success/**", wait_until="commit")
        assert catcher.wait_for_link().startswith("intent://")
        terras = parse_qs(urlsplit(page.url).query)
        assert {"user_id", "resource", "reference_id"} <= set(terras)
        href = page.locator("#return-to-app").get_attribute("href")
        fallback = unquote(re.search(r"S\.browser_fallback_url=([^;]+);", href).group(1))
        assert (urlsplit(fallback).path, parse_qs(urlsplit(fallback).query)) == (
            urlsplit(page.url).path,
            {**terras, "tried": ["1"]},
        )
        page.goto(fallback)  # what Chrome does when no app takes the intent
        assert page.locator("#return-to-app").is_visible()
        browser.close()
    state = mobile.http.get(f"{server.url}/api/v1/connect-attempts/{attempt['attempt_id']}", timeout=10).json()
    assert (state["status"], state["terminal"], state["hint"]) == ("pending", False, "returned_success")

    with server.app.app_context():
        row = db.session.get(ConnectAttempt, attempt["attempt_id"])
        owner = db.session.get(User, row.user_id)
        auth = auth_event(owner, terra_user(owner, terras["user_id"][0]), row.terra_session_id)
    assert post_event(server.url, server.app.config["TERRA_SIGNING_SECRET"], auth) == 200
    assert mobile.poll_until_final(attempt["status_url"], deadline_seconds=30)["status"] == "connected"
