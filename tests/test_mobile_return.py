"""The mobile return leg: HTTPS return pages, deep links from configuration, association files."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from playwright.sync_api import sync_playwright

from app import create_app
from config import ConfigError, load_config
from mobile_redirects.deep_links import direct_link, return_page_link
from services.attempts import attempt_token
from tests.helpers import create_attempt, create_user
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Version/18.0 Mobile/15E148"
IPAD = "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile/15E148"
IPOD = "Mozilla/5.0 (iPod touch; CPU iPhone OS 15_8 like Mac OS X) AppleWebKit/605.1.15 Version/15.6 Mobile/15E148"
DESKTOP = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
FINGERPRINT = ":".join(["14", "6D", "E9", "83"] * 8)


@pytest.fixture
def attempt(app):
    with app.app_context():
        user = create_user()
        attempt = create_attempt(user, channel="mobile", return_mode="page")
        with app.test_request_context():
            return attempt.id, attempt_token(attempt)


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
        from extensions import db
        from models import ConnectAttempt

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
    link = app_link(return_page(client, token, agent=ANDROID))
    assert link.startswith(f"intent://connect/success?attempt_id={attempt_id}#Intent;")
    assert ";scheme=com.example.terraconnect;" in f";{link.split('#Intent;')[1]}"
    assert "package=com.example.terraconnect;" in link and link.endswith(";end")
    fallback = unquote(re.search(r"S\.browser_fallback_url=([^;]+);", link).group(1))
    assert urlsplit(fallback).path == f"/mobile/return/success/{token}"
    assert parse_qs(urlsplit(fallback).query) == {"tried": ["1"]}


def test_after_the_fallback_the_page_does_not_try_again_but_keeps_the_link(client, attempt):
    response = return_page(client, attempt[1], agent=ANDROID, tried="1")
    assert "window.location.replace" not in response.get_data(as_text=True)
    assert app_link(response).startswith("intent://")


@pytest.mark.parametrize("agent", [IPHONE, IPAD, IPOD], ids=["iPhone", "iPad", "iPod"])
def test_ios_gets_the_custom_scheme_even_when_a_universal_link_exists(client, app, attempt, agent):
    app.config["MOBILE_UNIVERSAL_LINK_BASE"] = "https://links.example.com/terra"
    attempt_id, token = attempt
    assert app_link(return_page(client, token, agent=agent)).startswith("com.example.terraconnect://")
    assert app_link(return_page(client, token, agent=DESKTOP)) == (
        f"https://links.example.com/terra/connect/success?attempt_id={attempt_id}"
    )


def test_without_any_deep_link_configured_the_page_still_explains(client, app, attempt):
    app.config["MOBILE_APP_SCHEME"] = ""
    response = return_page(client, attempt[1])
    assert response.status_code == 200
    assert b"return-to-app" not in response.data and b"close this window" in response.data


# One rule for both return pages, web and mobile (services/return_visits.py).
BOTH_RETURN_PAGES = ["/connect/return/success", "/mobile/return/success"]


def stored_hint(app, attempt_id):
    with app.app_context():
        from extensions import db
        from models import ConnectAttempt

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


def test_deep_links_carry_only_the_attempt_and_the_outcome():
    config = {"MOBILE_APP_SCHEME": "com.example.app", "MOBILE_UNIVERSAL_LINK_BASE": "", "ANDROID_PACKAGE_NAME": ""}
    assert direct_link(config, "abc&x=1", "failure") == "com.example.app://connect/failure?attempt_id=abc%26x%3D1"
    # A claimed https link is preferred to the custom scheme.
    universal = {**config, "MOBILE_UNIVERSAL_LINK_BASE": "https://links.example.com/terra"}
    assert direct_link(universal, "abc", "success") == "https://links.example.com/terra/connect/success?attempt_id=abc"
    with pytest.raises(ValueError, match="unknown outcome"):
        direct_link(config, "abc", "javascript:alert(1)")
    assert return_page_link({**config, "MOBILE_APP_SCHEME": ""}, "abc", "success", IPHONE, "https://x/") is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MOBILE_APP_SCHEME": "javascript"}, "MOBILE_APP_SCHEME"),
        ({"MOBILE_APP_SCHEME": "https"}, "MOBILE_APP_SCHEME"),
        ({"MOBILE_APP_SCHEME": "com.example.app://evil"}, "MOBILE_APP_SCHEME"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "http://links.example.com"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "https://user@links.example.com"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "https://links.example.com/t?next=//evil"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        ({"MOBILE_UNIVERSAL_LINK_BASE": "https://links.example.com\\@evil"}, "MOBILE_UNIVERSAL_LINK_BASE"),
        ({"IOS_APP_IDS": "com.example.app"}, "IOS_APP_IDS"),
        ({"ANDROID_PACKAGE_NAME": "not a package"}, "ANDROID_PACKAGE_NAME"),
        ({"ANDROID_CERT_SHA256": "AB:CD"}, "ANDROID_CERT_SHA256"),
    ],
)
def test_deep_link_configuration_is_validated_at_start_up(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env, str(tmp_path))


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
            "/": "/terra/connect/*",
            "comment": "Terra connect results"
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
