"""Reconciliation with Terra's userInfo: on the pages, from the command, and in any order with webhooks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from extensions import db
from models import Connection, ReplacedTerraUser, User, WebhookEvent
from sandbox.traffic import traffic_of
from services.reconciliation import reconcile
from terra_integration.client import TerraClient, TerraUnavailable, TerraUser
from tests.conftest import Browser
from tests.helpers import PASSWORD, auth_event, create_user, deliver, finish_widget, lose_webhooks, terra_user
from tests.test_connect_flow import start_connect, wait_for_terminal


def userinfo_calls(server) -> int:
    return len(traffic_of(server.app).requests("sandbox.user_info"))


def statuses(server) -> list[tuple[str, str]]:
    with server.app.app_context():
        return [
            (row.terra_user_id, row.status) for row in db.session.scalars(select(Connection).order_by(Connection.id))
        ]


def connect_with_lost_webhooks_later(server, browser: Browser, provider: str = "GARMIN") -> str:
    """Connect a device, then stop webhooks from arriving: what Terra does next is only in userInfo."""
    state = wait_for_terminal(
        browser, finish_widget(start_connect(browser), provider=provider, account=f"ada-{provider.lower()}")
    )
    lose_webhooks(server.app.config)
    return state["connection"]["terra_user_id"]


def test_the_dashboard_reconciles_a_revocation_whose_webhook_was_lost_throttled_per_user(live_server, browser):
    browser.register()
    terra_id = connect_with_lost_webhooks_later(live_server, browser)
    requests.post(f"{live_server.url}/sandbox/users/{terra_id}/events", json={"type": "access_revoked"}, timeout=10)
    assert statuses(live_server) == [(terra_id, "active")]

    live_server.app.config["RECONCILE_INTERVAL_SECONDS"] = 0  # the visits so far do not count
    before = userinfo_calls(live_server)
    page = browser.get("/connections").text
    assert statuses(live_server) == [(terra_id, "revoked")]
    assert 'data-status="revoked"' in page and "Terra no longer has this connection" in page
    assert "Could not check your connections with Terra" not in page
    live_server.app.config["RECONCILE_INTERVAL_SECONDS"] = 3600
    browser.get("/connections")  # within RECONCILE_INTERVAL_SECONDS: Terra is not asked again
    assert userinfo_calls(live_server) == before + 1


def test_the_mobile_connection_list_reconciles_too(live_server, browser):
    browser.register()
    terra_id = connect_with_lost_webhooks_later(live_server, browser)
    requests.post(f"{live_server.url}/sandbox/users/{terra_id}/events", json={"type": "deauth"}, timeout=10)
    live_server.app.config["RECONCILE_INTERVAL_SECONDS"] = 0  # the dashboard visit at sign-up does not count
    assert listed_by_api(live_server) == [(terra_id, "revoked", "not_at_terra")]


def listed_by_api(server) -> list[tuple[str, str, str | None]]:
    """Ada's connections as the mobile app lists them (which reconciles when due)."""
    token = requests.post(
        server.url + "/api/v1/tokens", timeout=10, json={"email": "ada@example.com", "password": PASSWORD}
    ).json()["access_token"]
    listed = requests.get(server.url + "/api/v1/connections", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert listed.status_code == 200
    return [(row["terra_user_id"], row["status"], row["status_reason"]) for row in listed.json()["connections"]]


def test_the_return_page_finds_the_connection_when_the_webhook_is_lost(live_server, browser):
    browser.register()
    live_server.app.config["RECONCILE_INTERVAL_SECONDS"] = 0  # the dashboard visit at sign-up does not count
    lose_webhooks(live_server.app.config)
    return_url = finish_widget(start_connect(browser))
    assert browser.get(return_url).status_code == 200
    assert [status for _, status in statuses(live_server)] == ["active"]


@pytest.mark.parametrize(
    "fault, cause",
    [
        ("wrong_base_url", "Terra answered 404 with text/html at "),
        ("invalid_dev_id", "Terra answered 404: Invalid dev-id was provided"),
        ("rejected_api_key", "Terra answered 401: unauthorized"),
    ],
)
def test_a_misconfigured_terra_revokes_nothing_and_says_so(live_server, browser, fault, cause):
    """An HTML 404 at the base URL, Terra's error JSON for a dev-id it does not know, a rejected API
    key: none is Terra saying the user has no connections. The dashboard, the mobile list and the
    command keep every connection as it was, and say that Terra could not be asked."""
    browser.register()
    for provider in ("GARMIN", "OURA"):
        wait_for_terminal(browser, finish_widget(start_connect(browser), provider=provider, account=f"ada-{provider}"))
    before = statuses(live_server)
    assert [status for _, status in before] == ["active", "active"]
    live_server.app.config.update(SANDBOX_FAULTS=[fault], RECONCILE_INTERVAL_SECONDS=0)

    page = browser.get("/connections").text
    assert "Could not check your connections with Terra" in page
    assert page.count('data-status="active"') == 2
    assert [status for _, status, _ in listed_by_api(live_server)] == ["active", "active"]
    result = live_server.app.test_cli_runner().invoke(args=["terra", "reconcile"])
    assert result.exit_code == 1
    assert f"failed (TerraRejected: {cause}" in result.output
    assert "Reconciled 0 of 1 users; 1 failed." in result.output
    assert statuses(live_server) == before


@pytest.mark.parametrize("keeps_old_user", [False, True])
def test_a_reauthentication_whose_webhooks_were_lost_keeps_one_connection(live_server, browser, keeps_old_user):
    """The same OURA account connected again while no webhook arrives. Terra deletes the earlier Terra
    user, so userInfo shows a re-authentication and reconciliation swaps the id in place, as
    `user_reauth` would. With the sandbox's `reauth_keeps_old_user` the earlier user is listed
    inactive instead: that is Terra saying it is no longer active, which is all reconciliation can
    act on (a deauthenticated user is listed so too), so it is revoked and the new one added."""
    browser.register()
    first = connect_with_lost_webhooks_later(live_server, browser, provider="OURA")
    if keeps_old_user:
        live_server.app.config["SANDBOX_FAULTS"] = ["reauth_keeps_old_user"]
    live_server.app.config["RECONCILE_INTERVAL_SECONDS"] = 0
    return_url = finish_widget(start_connect(browser), provider="OURA", account="ada-oura")
    second = parse_qs(urlsplit(return_url).query)["user_id"][0]
    assert browser.get(return_url).status_code == 200
    browser.get("/connections")
    with live_server.app.app_context():
        rows = db.session.scalars(select(Connection).order_by(Connection.id)).all()
        found = [(row.terra_user_id, row.status, row.status_reason) for row in rows]
        if keeps_old_user:
            assert found == [(first, "revoked", "not_at_terra"), (second, "active", None)]
        else:
            assert found == [(second, "active", None)]
            assert db.session.get(ReplacedTerraUser, first).connection_id == rows[0].id


class FailingFor(TerraClient):
    """The real client against the sandbox, except that Terra fails for one reference_id."""

    failing_reference: str = ""

    def users_by_reference(self, reference_id: str) -> list[TerraUser]:
        if reference_id == self.failing_reference:
            raise TerraUnavailable("Terra answered 504: gateway timeout")
        return super().users_by_reference(reference_id)


def test_the_command_sweeps_everyone_and_one_failure_does_not_stop_it(live_server):
    browsers = [Browser(live_server.url) for _ in range(3)]
    terra_ids = []
    for number, browser in enumerate(browsers):
        browser.register(email=f"user{number}@example.com")
        terra_ids.append(
            wait_for_terminal(browser, finish_widget(start_connect(browser), account=f"a{number}"))["connection"][
                "terra_user_id"
            ]
        )
    live_server.app.config["SANDBOX_WEBHOOK_URL"] = ""  # the revocations below reach the app only through userInfo
    for terra_id in terra_ids:
        requests.post(f"{live_server.url}/sandbox/users/{terra_id}/events", json={"type": "deauth"}, timeout=10)
    terra = FailingFor.from_config(live_server.app.config)
    with live_server.app.app_context():
        terra.failing_reference = db.session.scalars(
            select(User.reference_id).where(User.email == "user1@example.com")
        ).one()
    live_server.app.extensions["terra_integration"].client = terra

    result = live_server.app.test_cli_runner().invoke(args=["terra", "reconcile"])
    assert result.exit_code == 1
    assert "[1/3]" in result.output and "[3/3]" in result.output and "1 connection(s) changed" in result.output
    assert "failed (TerraUnavailable: Terra answered 504" in result.output
    assert "Reconciled 2 of 3 users; 1 failed." in result.output
    assert [status for _, status in statuses(live_server)] == ["revoked", "active", "revoked"]


# -- reconciliation and webhooks reach the same state in any order --------------------------------


ACCOUNT_PROVIDERS = {"watch": "GARMIN", "ring": "OURA"}  # one account per provider, as most users have


@dataclass
class TerraSide:
    """What Terra did (a scenario), as the webhooks it sent and the users userInfo now returns."""

    owners: list
    webhooks: list[dict] = field(default_factory=list)
    users: dict[str, dict] = field(default_factory=dict)  # terra user id -> TerraUser JSON (deleted: absent)
    linked: dict[str, str] = field(default_factory=dict)  # account -> its current Terra user id
    ids: itertools.count = field(default_factory=itertools.count)
    relinked: bool = False  # an account moved to another owner's reference_id
    relinked_back: bool = False  # ... and later back to an owner it had left
    holders: dict[str, list[int]] = field(default_factory=dict)  # account -> the owners it was linked to

    def connect(self, owner_index: int, account: str) -> None:
        owner = self.owners[owner_index]
        new = terra_user(owner, f"{owner.id}-tu-{next(self.ids)}", provider=ACCOUNT_PROVIDERS.get(account, "GARMIN"))
        # Terra deletes the earlier user of the same account; one that was deauthenticated is no
        # longer linked (the sandbox: a re-auth replaces an active user only), so this is a plain auth.
        earlier = self.users.get(self.linked.get(account, ""))
        old = self.users.pop(earlier["user_id"]) if earlier and earlier["active"] else None
        if old is not None:
            self.relinked |= old["reference_id"] != owner.reference_id
            self.relinked_back |= self.relinked and owner.id in self.holders.get(account, [])
            self.webhooks.append(
                {
                    "type": "user_reauth",
                    "status": "warning",
                    "message": "reauth",
                    "old_user": {**old, "active": False},
                    "new_user": new,
                }
            )
        self.holders.setdefault(account, []).append(owner.id)
        self.webhooks.append(auth_event(owner, new))
        self.users[new["user_id"]] = new
        self.linked[account] = new["user_id"]

    def happen(self, kind: str, index: int) -> None:
        active = [user for user in self.users.values() if user["active"]]
        if not active:
            return
        user = active[index % len(active)]
        if kind == "deauth":
            user["active"] = False
        self.webhooks.append({"type": kind, "status": "warning", "message": kind, "user": dict(user)})

    def users_by_reference(self, reference_id: str) -> list[TerraUser]:
        return [TerraUser.from_json(user) for user in self.users.values() if user["reference_id"] == reference_id]


def test_a_connection_terra_no_longer_returns_is_revoked_and_a_new_one_added(client, ctx):
    owner = create_user()
    deliver(client, auth_event(owner, terra_user(owner, "deleted-at-terra")), secret=ctx.config["TERRA_SIGNING_SECRET"])
    terra = TerraSide([owner])
    terra.connect(0, "ring")  # a Terra user of another provider whose webhooks never came
    assert reconcile(owner, terra) == 2
    rows = db.session.scalars(select(Connection).order_by(Connection.id)).all()
    assert [(row.terra_user_id, row.status, row.status_reason) for row in rows] == [
        ("deleted-at-terra", "revoked", "not_at_terra"),
        (f"{owner.id}-tu-0", "active", None),
    ]
    assert reconcile(owner, terra) == 0  # converged: nothing more to change


@pytest.mark.parametrize(
    "event, status", [("connection_error", "degraded"), ("deauth", "revoked"), ("access_revoked", "revoked")]
)
def test_what_a_webhook_said_stands_while_terra_still_lists_the_user(client, ctx, event, status):
    """A degraded connection waits for its user to reconnect (a new Terra user); a revocation by
    webhook is final. userInfo listing the user as active changes neither (DESIGN.md: reconciliation
    restores only what it revoked itself)."""
    owner = create_user()
    terra = TerraSide([owner])
    terra.connect(0, "watch")
    [listed] = terra.users.values()
    for webhook in [*terra.webhooks, {"type": event, "status": "warning", "message": event, "user": listed}]:
        deliver(client, webhook, secret=ctx.config["TERRA_SIGNING_SECRET"])
    assert reconcile(owner, terra) == 0
    [row] = db.session.scalars(select(Connection)).all()
    assert (row.terra_user_id, row.status, row.status_reason) == (listed["user_id"], status, event)


def test_a_connection_reconciliation_revoked_is_active_again_once_terra_lists_it(client, ctx):
    owner = create_user()
    terra = TerraSide([owner])
    terra.connect(0, "watch")
    deliver(client, terra.webhooks[0], secret=ctx.config["TERRA_SIGNING_SECRET"])
    listed, terra.users = terra.users, {}  # Terra said it had no users for this reference_id
    assert reconcile(owner, terra) == 1
    [row] = db.session.scalars(select(Connection)).all()
    assert (row.status, row.status_reason) == ("revoked", "not_at_terra")
    terra.users = listed  # ... and lists the user, active, again
    assert reconcile(owner, terra) == 1
    db.session.refresh(row)
    assert (row.status, row.status_reason) == ("active", None)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.integers(0, 1), st.sampled_from(["watch", "ring"])),
        st.tuples(st.sampled_from(["connection_error", "deauth"]), st.integers(0, 3), st.none()),
    ),
    min_size=1,
    max_size=5,
)


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, data=st.data())
def test_reconciliation_and_webhooks_reach_the_same_state_in_any_order(client, ctx, operations, data):
    run = next(RUNS)
    owners = [create_user(f"run{run}-{name}@example.com") for name in ("ada", "bob")]
    terra = TerraSide(owners)
    for kind, number, account in operations:
        terra.connect(number, account) if kind == "connect" else terra.happen(kind, number)

    def final_state(steps: list) -> set[tuple[str, int, str]]:
        """Apply webhooks (by index) and reconciliations ("reconcile") in this order to fresh copies."""
        for step in steps:
            if step == "reconcile":
                for owner in owners:
                    reconcile(db.session.merge(owner), terra)
            else:
                body = {**terra.webhooks[step]}
                response = deliver(client, body, secret=ctx.config["TERRA_SIGNING_SECRET"])
                assert response.status_code == 200
        db.session.expire_all()
        rows = db.session.scalars(select(Connection).where(Connection.user_id.in_([o.id for o in owners]))).all()
        state = {(row.terra_user_id, row.user_id, row.status) for row in rows}
        # A fresh start for the next order: no connections, no memory of replaced Terra users.
        db.session.execute(delete(ReplacedTerraUser))
        db.session.execute(delete(WebhookEvent))  # the next order delivers the same signed bodies again
        db.session.execute(delete(Connection).where(Connection.user_id.in_([owner.id for owner in owners])))
        db.session.commit()
        return state

    in_order = final_state(list(range(len(terra.webhooks))))
    shuffled = data.draw(st.permutations(range(len(terra.webhooks))), label="delivery order")
    reconcile_at = data.draw(st.sets(st.integers(0, len(shuffled))), label="reconciled before these deliveries")
    steps = [
        step
        for position, index in enumerate(shuffled)
        for step in (["reconcile"] if position in reconcile_at else []) + [index]
    ]
    steps += ["reconcile"] if len(shuffled) in reconcile_at else []
    interleaved = final_state(steps)
    if terra.relinked_back:
        # An account that went to another owner and came back: under its first owner's reference_id,
        # userInfo shows it as a re-authentication (the old Terra user gone, a new one there), which a
        # reconciliation before the re-link webhooks applies as one; they then revoke no row of that owner.
        assert without_revoked(interleaved) == without_revoked(in_order)
    else:
        assert interleaved == in_order

    # Webhooks that never arrive (any of them, re-authentications included): a reconciliation
    # afterwards ends in the rows that every webhook delivered makes.
    lost = data.draw(st.sets(st.sampled_from(shuffled)) if shuffled else st.just(set()), label="lost deliveries")
    recovered = final_state([index for index in shuffled if index not in lost] + ["reconcile"])
    if terra.relinked:
        # A re-link to another owner leaves the old owner's row revoked; when its `auth` was lost, no
        # userInfo answer names that deleted Terra user again, so only the live rows can agree.
        assert live_rows(recovered) == live_rows(in_order)
    else:
        assert rows_as_terra_tells(recovered) == rows_as_terra_tells(in_order)


def without_revoked(state: set[tuple[str, int, str]]) -> set[tuple[str, int, str]]:
    return {row for row in state if row[2] != "revoked"}


def live_rows(state: set[tuple[str, int, str]]) -> set[tuple[str, int]]:
    return {(terra_id, owner) for terra_id, owner, status in state if status != "revoked"}


def rows_as_terra_tells(state: set[tuple[str, int, str]]) -> set[tuple[str, int, bool]]:
    """Each row and whether it is revoked. Not `degraded`: userInfo says nothing of a connection_error,
    so a lost one leaves the row active (the user finds out when data stops)."""
    return {(terra_id, owner, status == "revoked") for terra_id, owner, status in state}


RUNS = itertools.count()
