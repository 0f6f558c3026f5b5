"""Apple Health, Samsung Health and Health Connect: the app's SDK token operation, the sandbox's
generateAuthToken and its stand-in for the mobile SDK's initConnection, and the rules every other
connection follows (re-authentication, deauthentication, reconciliation) holding for SDK users too."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import select, update

from extensions import db
from models import Connection, User
from models.time import utcnow
from sandbox.models import SandboxAuthToken
from sandbox.traffic import traffic_of
from tests.conftest import wait_for
from tests.helpers import lose_webhooks
from tests.test_api import Api, sign_up
from tests.test_faults import terra_headers

INIT_CONNECTION = "/sandbox/sdk/init-connection"


@pytest.fixture
def api(live_server) -> Api:
    return sign_up(live_server)


def sdk_token(api: Api) -> dict:
    response = api.post("/api/v1/sdk-tokens")
    assert response.status_code == 201, response.text
    return response.json()


def init_connection(server, issued: dict, provider: str = "APPLE", **fields) -> requests.Response:
    """What the app's SDK does with the backend's token: `initConnection`, played by the sandbox."""
    body = {
        "token": issued["token"],
        "provider": provider,
        "reference_id": issued["reference_id"],
        "dev_id": server.app.config["TERRA_DEV_ID"],
    }
    return requests.post(server.url + INIT_CONNECTION, json=body | fields, timeout=10)


def connect_from_the_phone(server, api: Api, provider: str = "APPLE", **fields) -> str:
    """The whole SDK path; the new Terra user id."""
    response = init_connection(server, sdk_token(api), provider, **fields)
    assert response.status_code == 201, response.text
    return response.json()["user"]["user_id"]


def listed(api: Api) -> list[tuple[str, str, str]]:
    return [
        (row["terra_user_id"], row["provider"], row["status"])
        for row in api.get("/api/v1/connections").json()["connections"]
    ]


def generate_calls(server) -> int:
    return len(traffic_of(server.app).requests("sandbox.generate_auth_token"))


# -- the app's operation --------------------------------------------------------------------------


def test_sdk_token_answers_a_fresh_terra_token_and_the_callers_reference_id(api, live_server):
    first = api.post("/api/v1/sdk-tokens")
    assert first.status_code == 201 and first.headers["Cache-Control"] == "no-store"
    body = first.json()
    assert set(body) == {"token", "expires_in", "reference_id"} and body["expires_in"] == 180
    with live_server.app.app_context():
        assert body["reference_id"] == db.session.scalars(select(User.reference_id)).one()
    # Never cached or reused: each call asks Terra, and each answer is another token.
    assert sdk_token(api)["token"] != body["token"]
    assert generate_calls(live_server) == 2


def test_sdk_token_needs_a_bearer_token(live_server):
    response = requests.post(live_server.url + "/api/v1/sdk-tokens", timeout=10)
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_authorization"
    assert generate_calls(live_server) == 0


def test_sdk_tokens_share_the_connect_budget_and_a_refusal_never_reaches_terra(api, live_server):
    live_server.app.config["CONNECT_RATE_LIMIT"] = "2 per minute"
    sdk_token(api)
    assert api.post("/api/v1/connect-attempts", json={}).status_code == 201
    refused = api.post("/api/v1/sdk-tokens")
    assert refused.status_code == 429 and refused.headers["Cache-Control"] == "no-store"
    assert refused.json()["error"]["code"] == "too_many_requests" and int(refused.headers["Retry-After"]) > 0
    assert generate_calls(live_server) == 1


# -- the sandbox's two parts ----------------------------------------------------------------------


def test_init_connection_creates_the_terra_user_and_the_auth_webhook_connects_it(api, live_server):
    terra_id = connect_from_the_phone(live_server, api, "HEALTH_CONNECT")
    assert wait_for(lambda: listed(api)) == [(terra_id, "HEALTH_CONNECT", "active")]
    user_info = requests.get(
        live_server.url + "/sandbox/v2/userInfo",
        params={"user_id": terra_id},
        headers=terra_headers(live_server),
        timeout=10,
    ).json()
    assert user_info["user"]["provider"] == "HEALTH_CONNECT" and user_info["is_authenticated"] is True


def test_a_token_is_single_use(api, live_server):
    issued = sdk_token(api)
    assert init_connection(live_server, issued).status_code == 201
    again = init_connection(live_server, issued)
    assert again.status_code == 409 and again.json()["error"]["code"] == "token_used"
    assert len(wait_for(lambda: listed(api))) == 1


def test_an_expired_token_is_refused(api, live_server):
    issued = sdk_token(api)
    with live_server.app.app_context():  # its 180 s have passed
        db.session.execute(update(SandboxAuthToken).values(expires_at=utcnow()))
        db.session.commit()
    refused = init_connection(live_server, issued)
    assert refused.status_code == 410 and refused.json()["error"]["code"] == "token_expired"


@pytest.mark.parametrize(
    "fields, status, code",
    [
        ({"token": "0" * 64}, 404, "token_not_found"),
        ({"dev_id": "another-apps-dev-id"}, 403, "token_dev_id_mismatch"),
        ({"provider": "GARMIN"}, 400, "invalid_request"),
        ({"provider": None}, 400, "invalid_request"),
        ({"dev_id": None}, 400, "invalid_request"),
        ({"reference_id": 7}, 400, "invalid_request"),
        ({"device": " "}, 400, "invalid_request"),
    ],
)
def test_init_connection_refusals_say_why_and_leave_the_token_usable(api, live_server, fields, status, code):
    issued = sdk_token(api)
    refused = init_connection(live_server, issued, **fields)
    assert refused.status_code == status and refused.json()["error"]["code"] == code
    assert refused.json()["error"]["message"]
    assert init_connection(live_server, issued).status_code == 201
    wait_for(lambda: listed(api))  # its webhook has landed before the server stops


def test_the_user_cap_refuses_a_new_device_and_keeps_the_token(api, live_server):
    live_server.app.config["SANDBOX_USER_CAP"] = 0
    issued = sdk_token(api)
    refused = init_connection(live_server, issued)
    assert refused.status_code == 403 and "User limit reached" in refused.json()["error"]["message"]
    live_server.app.config["SANDBOX_USER_CAP"] = 50
    assert init_connection(live_server, issued).status_code == 201
    wait_for(lambda: listed(api))


# -- the rules every connection follows -----------------------------------------------------------


def test_an_sdk_user_is_reauthenticated_deauthed_and_reconciled_like_any_other(api, live_server):
    first = connect_from_the_phone(live_server, api, "SAMSUNG")
    [connection] = wait_for(lambda: api.get("/api/v1/connections").json()["connections"])

    # The same phone again under the same reference_id: Terra's re-authentication, one connection kept.
    second = connect_from_the_phone(live_server, api, "SAMSUNG")
    assert second != first
    wait_for(lambda: listed(api) == [(second, "SAMSUNG", "active")])
    assert api.get("/api/v1/connections").json()["connections"][0]["id"] == connection["id"]

    # Disconnecting deauthenticates it at Terra.
    deleted = api.delete(f"/api/v1/connections/{connection['id']}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "revoked"
    assert traffic_of(live_server.app).requests("sandbox.deauthenticate_user")

    # Webhooks lost: opening the list reconciles with userInfo, which adds the device connected
    # meanwhile, then revokes it once Terra no longer serves it.
    lose_webhooks(live_server.app.config)
    live_server.app.config["RECONCILE_INTERVAL_SECONDS"] = 0
    third = connect_from_the_phone(live_server, api, "APPLE", device="ipad")
    assert (third, "APPLE", "active") in listed(api)
    requests.post(f"{live_server.url}/sandbox/users/{third}/events", json={"type": "deauth"}, timeout=10)
    assert (third, "APPLE", "revoked") in listed(api)
    with live_server.app.app_context():
        assert {row.provider for row in db.session.scalars(select(Connection))} == {"SAMSUNG", "APPLE"}


def test_sdk_token_for_another_user_names_their_reference_id(live_server):
    ada, grace = sign_up(live_server), sign_up(live_server, "grace@example.com")
    assert sdk_token(ada)["reference_id"] != sdk_token(grace)["reference_id"]


def test_the_dashboard_and_the_provider_page_say_these_providers_connect_from_the_phone(live_server, browser):
    browser.register()
    for page in ("/connections", "/connections/providers"):
        text = browser.get(page).text
        assert 'id="sdk-providers"' in text and "connected from the mobile app" in text, page
