"""What happens on Terra's side when a flow starts and when the user decides.

Both the widget pages and the automation endpoint finish a flow through `complete_flow`, so the two
can never disagree. The outcome is committed first and the webhooks are sent afterwards, from a thread
(see `sandbox.delivery`), so no database transaction is open while the app's webhook is being called.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select, update

from extensions import db
from models.time import utcnow
from sandbox import events
from sandbox import providers as catalogue
from sandbox.delivery import DeliveryThread, deliver
from sandbox.faults import flow_variant
from sandbox.models import SandboxSession, SandboxUser, SessionState, new_uuid
from sandbox.redirects import merge_query
from sandbox.validation import FlowOptions
from services.public_urls import public_url

# The user's decision on the consent screen, and the failure reason Terra reports for it.
OUTCOME_REASONS = {"success": None, "denied": "access_denied", "cancelled": "auth_cancelled"}
USER_LIMIT_REASON = "user_limit_reached"
MAX_ACCOUNT_LENGTH = 100


class FlowProblem(Exception):
    """A flow cannot be completed. `code` is one of: not_found, used, expired, bad_input."""

    def __init__(self, code: str, message: str, session: SandboxSession | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.session = session  # for used/expired: the page links back to the app's failure URL


@dataclass(frozen=True)
class Completion:
    redirect_url: str
    delivery: DeliveryThread


# -- starting a flow ------------------------------------------------------------------------------


def start_flow(
    kind: str,
    options: FlowOptions,
    config: Mapping[str, Any],
    *,
    provider_codes: list[str] | None,
    user_id: str | None = None,
) -> SandboxSession:
    now = utcnow()
    session = SandboxSession(
        id=new_uuid(),
        kind=kind,
        reference_id=options.reference_id,
        success_url=options.success_url,
        failure_url=options.failure_url,
        providers=",".join(provider_codes) if provider_codes else None,
        language=options.language,
        user_id=user_id,
        state=SessionState.OPEN,
        created_at=now,
        expires_at=now + timedelta(seconds=config["SANDBOX_SESSION_TTL_SECONDS"]),
    )
    db.session.add(session)
    db.session.commit()
    return session


def active_user_count() -> int:
    return db.session.scalar(select(func.count()).select_from(SandboxUser).where(SandboxUser.active.is_(True)))


def user_cap_reached(config: Mapping[str, Any]) -> bool:
    """Terra's test environments hold at most 50 connected users; existing ones are never evicted."""
    return active_user_count() >= config["SANDBOX_USER_CAP"]


# -- the state of a flow --------------------------------------------------------------------------


def get_session(session_id: str) -> SandboxSession:
    session = db.session.get(SandboxSession, session_id)
    if session is None:
        raise FlowProblem("not_found", "This sign-in link does not exist.")
    return session


def ensure_open(session: SandboxSession) -> None:
    if session.state == SessionState.USED:
        raise FlowProblem("used", "This sign-in link has already been used.", session)
    if session.is_expired():
        raise FlowProblem("expired", "This sign-in link has expired.", session)


def offered_providers(session: SandboxSession) -> list[catalogue.Provider]:
    if not session.providers:
        return catalogue.widget_providers()
    return [provider for provider in map(catalogue.offerable, session.provider_codes) if provider]


def offered_provider(session: SandboxSession, code: object) -> catalogue.Provider:
    offered = offered_providers(session)
    if code in (None, "") and len(offered) == 1:
        return offered[0]
    if not isinstance(code, str) or not code:
        raise FlowProblem("bad_input", "Choose a provider.")
    provider = catalogue.find(code)
    if provider is None:
        raise FlowProblem("bad_input", f"Unknown provider {code}.")
    if provider not in offered:
        raise FlowProblem("bad_input", f"This session does not offer {provider.code}.")
    return provider


def normalise_account(account: object) -> str:
    """Account names are compared case-insensitively, like the e-mail logins most providers use."""
    name = account.strip().casefold() if isinstance(account, str) else ""
    if not name:
        raise FlowProblem("bad_input", "Enter an account name.")
    if len(name) > MAX_ACCOUNT_LENGTH:
        raise FlowProblem("bad_input", f"Account names are at most {MAX_ACCOUNT_LENGTH} characters.")
    return name


def failure_return_url(session: SandboxSession, reason: str, config: Mapping[str, Any]) -> str | None:
    """The link back to the app from a dead session page (None when the app gave no failure URL)."""
    if not session.failure_url:
        return None
    resource = session.provider_codes[0] if len(session.provider_codes) == 1 else None
    return add_terra_parameters(session.failure_url, failure_parameters(session, resource, reason, config), config)


def failure_parameters(
    session: SandboxSession, resource: str | None, reason: str, config: Mapping[str, Any]
) -> dict[str, str]:
    """What the failure redirect carries: `reference_id`, the only parameter Terra documents there;
    with SANDBOX_FAILURE_REDIRECT=detailed also `resource` (when known) and `reason` (the webhook's)."""
    params = {"reference_id": session.reference_id or "null"}
    if config["SANDBOX_FAILURE_REDIRECT"] == "detailed":
        if resource:
            params["resource"] = resource
        params["reason"] = reason
    return params


# -- finishing a flow -----------------------------------------------------------------------------


def complete_flow(
    session_id: str, *, provider_code: object, account: object, outcome: object, config: Mapping[str, Any]
) -> Completion:
    """Apply the user's decision; returns where to send the browser and the webhook delivery."""
    session = get_session(session_id)
    ensure_open(session)
    if outcome not in OUTCOME_REASONS:
        raise FlowProblem("bad_input", "outcome must be one of: " + ", ".join(OUTCOME_REASONS))
    provider = offered_provider(session, provider_code)
    account_name = None if provider.sdk_only else normalise_account(account)
    _claim(session)

    reason = OUTCOME_REASONS[outcome]
    if reason is None and provider.sdk_only:
        redirect_url, outgoing = _hand_over_to_sdk(session, provider, config)
    elif reason is None:
        redirect_url, outgoing = _authenticate(session, provider, account_name, config)
    else:
        redirect_url, outgoing = _fail(session, provider, reason, config)
    db.session.commit()
    return Completion(redirect_url=redirect_url, delivery=deliver(outgoing, config))


def _claim(session: SandboxSession) -> None:
    """Mark the session used, atomically: of two simultaneous decisions only one goes through."""
    result = db.session.execute(
        update(SandboxSession)
        .where(SandboxSession.id == session.id, SandboxSession.state == SessionState.OPEN)
        .values(state=SessionState.USED)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise FlowProblem("used", "This sign-in link has already been used.", session)


def _authenticate(
    session: SandboxSession, provider: catalogue.Provider, account: str, config: Mapping[str, Any]
) -> tuple[str, list[dict]]:
    created = create_user(provider, account, session.reference_id, config, user_id=session.user_id)
    if created is None:
        return _fail(session, provider, USER_LIMIT_REASON, config)
    user, previous = created
    auth = events.auth_success(user, session, flow_id=flow_id(session, config))
    params = {"user_id": user.user_id, "resource": provider.code, "reference_id": session.reference_id or "null"}
    return add_terra_parameters(session.success_url or _result_page(session), params, config), auth_events(
        auth, user, previous, config
    )


def create_user(
    provider: catalogue.Provider,
    account: str,
    reference_id: str | None,
    config: Mapping[str, Any],
    *,
    user_id: str | None = None,
) -> tuple[SandboxUser, SandboxUser | None] | None:
    """A new Terra user for `account` at `provider` (added to the session, not committed), and the
    user it re-authenticates (deleted, as Terra does, or kept inactive with `reauth_keeps_old_user`), if
    any; None when the environment's user cap is reached.

    Same provider account under the same reference_id: a re-auth, which replaces the user id. With
    `relink_across_users`, the same account under any reference_id (another app user) too."""
    identity = [SandboxUser.provider == provider.code, SandboxUser.account == account, SandboxUser.active.is_(True)]
    if not flow_variant(config, "relink_across_users"):
        identity.append(SandboxUser.reference_id == reference_id)  # `IS NULL` when there is none
    previous = db.session.scalars(select(SandboxUser).where(*identity).order_by(SandboxUser.created_at.desc())).first()
    if previous is None and user_cap_reached(config):
        return None
    user = SandboxUser(
        user_id=user_id or new_uuid(),
        provider=provider.code,
        account=account,
        reference_id=reference_id,
        scopes=",".join(provider.scopes),
        active=True,
        created_at=utcnow(),
    )
    db.session.add(user)
    if previous is not None:
        previous.active = False
        if not flow_variant(config, "reauth_keeps_old_user"):
            db.session.delete(previous)  # Terra deletes the earlier user: userInfo no longer lists it
    return user, previous


def auth_events(auth: dict, user: SandboxUser, previous: SandboxUser | None, config: Mapping[str, Any]) -> list[dict]:
    """The `auth` event, with a re-authentication's `user_reauth` in the configured order."""
    if previous is None:
        return [auth]
    reauth = events.user_reauth(user, previous)
    return [reauth, auth] if config["SANDBOX_REAUTH_ORDER"] == "reauth_first" else [auth, reauth]


def _hand_over_to_sdk(
    session: SandboxSession, provider: catalogue.Provider, config: Mapping[str, Any]
) -> tuple[str, list[dict]]:
    """An SDK-only provider: back to the success URL with `user_id=null`, and no webhook. The app
    connects it through Terra's mobile SDK."""
    params = {"user_id": "null", "resource": provider.code, "reference_id": session.reference_id or "null"}
    return add_terra_parameters(session.success_url or _result_page(session), params, config), []


def _fail(
    session: SandboxSession, provider: catalogue.Provider, reason: str, config: Mapping[str, Any]
) -> tuple[str, list[dict]]:
    event = events.auth_failure(
        config["SANDBOX_AUTH_FAILURE_SHAPE"],
        session,
        flow_id=flow_id(session, config),
        provider=provider.code,
        reason=reason,
        # authenticateUser promised this id; a widget flow's would-be user never existed.
        user_id=session.user_id or new_uuid(),
    )
    params = failure_parameters(session, provider.code, reason, config)
    return add_terra_parameters(session.failure_url or _result_page(session), params, config), [event]


def add_terra_parameters(url: str, params: dict[str, str], config: Mapping[str, Any]) -> str:
    """The redirect URL with Terra's parameters: merged into its query string, or with
    `appended_redirect` appended as `?…` whatever the URL already holds (Terra's docs, literally)."""
    if flow_variant(config, "appended_redirect"):
        return f"{url}?{urlencode(params)}"
    return merge_query(url, params)


def flow_id(session: SandboxSession, config: Mapping[str, Any]) -> str:
    """The `flow_id` of the session's events: its own id, or with `foreign_flow_id` another id,
    stable for the session, that the app never saw."""
    if flow_variant(config, "foreign_flow_id"):
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox-flow:" + session.id))
    return session.id


def _result_page(session: SandboxSession) -> str:
    """Without a redirect URL Terra keeps the user on its own result screen; so does the sandbox."""
    return public_url("sandbox.widget_result", session_id=session.id)
