"""Connect attempts: creating one, the signed token our redirect URLs carry, and every state change.

Rules (DESIGN.md "Truth" and "States"): only a verified webhook or a server-side userInfo check
decides an outcome; browser hints are recorded but decide nothing; terminal states are sticky,
except that a late verified success may still turn `cancelled` into `connected`. Every change bumps
`version`, which is what pollers compare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from flask import current_app
from itsdangerous import BadSignature
from sqlalchemy import case, select, update
from sqlalchemy.orm import joinedload

from extensions import db, terra
from models import AttemptStatus, ConnectAttempt, Connection, User
from models.columns import fit
from models.connect_attempt import AttemptHint
from models.time import utcnow
from services import attempt_states
from services.attempt_states import POLL_STATE
from services.connections import upsert_connection
from services.providers import SDK_ONLY_PROVIDERS
from services.public_urls import public_url
from terra_integration.client import TerraError, TerraUser, WidgetSession
from terra_integration.signing import timed_serializer

TOKEN_SALT = "connect-attempt-v1"


class AttemptNotFound(LookupError):
    pass


# -- creating ---------------------------------------------------------------------------


ReturnUrls = Callable[[ConnectAttempt], tuple[str, str]]


def start_widget_attempt(
    user: User,
    *,
    channel: str = "web",
    return_urls: ReturnUrls | None = None,
    providers: list[str] | None = None,
    language: str | None = None,
    return_mode: str | None = None,
    callback: str | None = None,
) -> ConnectAttempt:
    """Create an attempt and its Terra widget session. Raises TerraError (the attempt is then failed).

    `return_urls(attempt)` gives the (success, failure) redirect URLs; the web return pages by default.
    Mobile attempts record where Terra sends the browser (`return_mode`) and which link the app's
    in-app browser catches (`callback`).
    """
    attempt = _new_attempt(
        user,
        channel,
        provider=providers[0] if providers and len(providers) == 1 else None,
        return_mode=return_mode,
        callback=callback,
    )
    success_url, failure_url = (return_urls or return_page_urls)(attempt)
    try:
        session: WidgetSession = terra.client.create_widget_session(
            reference_id=user.reference_id,
            success_url=success_url,
            failure_url=failure_url,
            providers=providers,
            language=language,
        )
    except TerraError as error:
        _fail_without_terra(attempt, error)
        raise
    attempt.terra_session_id = session.session_id
    attempt.widget_url = session.url
    attempt.expires_at = utcnow() + timedelta(seconds=session.expires_in)
    db.session.commit()
    return attempt


def start_provider_attempt(user: User, provider: str) -> ConnectAttempt:
    """Custom UI: one provider through authenticateUser instead of the widget."""
    attempt = _new_attempt(user, "web", provider=provider)
    success_url, failure_url = return_page_urls(attempt)
    try:
        auth = terra.client.authenticate_user(
            provider=provider, reference_id=user.reference_id, success_url=success_url, failure_url=failure_url
        )
    except TerraError as error:
        _fail_without_terra(attempt, error)
        raise
    # authenticateUser has no session id; the Terra user id it announces correlates the webhook.
    attempt.terra_session_id = auth.user_id
    attempt.widget_url = auth.auth_url
    db.session.commit()
    return attempt


def _new_attempt(
    user: User, channel: str, provider: str | None, return_mode: str | None = None, callback: str | None = None
) -> ConnectAttempt:
    # Terra sessions last 900 s unless the answer says otherwise; corrected once we know.
    attempt = ConnectAttempt(
        user_id=user.id,
        channel=channel,
        requested_provider=provider,
        return_mode=return_mode,
        callback=callback,
        expires_at=utcnow() + timedelta(seconds=900),
    )
    db.session.add(attempt)
    # Committed before Terra is called: no transaction (or SQLite write lock) is held across HTTP.
    db.session.commit()
    return attempt


def _fail_without_terra(attempt: ConnectAttempt, error: TerraError) -> None:
    mark_failed(attempt, error.code)
    db.session.commit()


def return_page_urls(attempt: ConnectAttempt, pages: str = "connect") -> tuple[str, str]:
    """The (success, failure) URLs Terra sends the browser back to: the return pages of blueprint
    `pages` (`connect` on the web, `mobile` for the app). The signed attempt token is in the path and
    there is no query string, so Terra's `user_id`, `resource` and `reference_id` arrive intact
    whether it merges them into the URL or appends `?…` as its docs literally describe."""
    token = attempt_token(attempt)
    return return_page_url(pages, "success", token), return_page_url(pages, "failure", token)


def return_page_url(pages: str, outcome: str, token: str, **query: str) -> str:
    """The absolute URL of one return page (`outcome`: success or failure) of blueprint `pages`."""
    return public_url(f"{pages}.return_{outcome}", token=token, **query)


# -- the signed token in our redirect URLs ------------------------------------------------


def attempt_token(attempt: ConnectAttempt) -> str:
    return timed_serializer(TOKEN_SALT).dumps(attempt.id)


def attempt_from_token(token: str | None) -> ConnectAttempt:
    """The attempt a redirect's token names; AttemptNotFound if forged, expired or unknown."""
    if not token:
        raise AttemptNotFound("missing attempt token")
    try:
        attempt_id = timed_serializer(TOKEN_SALT).loads(token, max_age=current_app.config["ATTEMPT_TOKEN_MAX_AGE"])
    except BadSignature:
        raise AttemptNotFound("invalid or expired attempt token") from None
    attempt = db.session.get(ConnectAttempt, attempt_id)
    if attempt is None:
        raise AttemptNotFound("unknown attempt")
    return attempt


def record_return(
    token: str | None, hint: AttemptHint, claimed_terra_user_id: str | None, claimed_resource: str | None = None
) -> ConnectAttempt:
    """A browser came back from Terra to one of our return pages: note what it claims, as a hint.

    One return ends the attempt at once: Terra's success redirect for an SDK-only provider, which
    says `user_id=null` explicitly and is followed by no webhook; the attempt becomes `sdk_required`,
    so the app can connect it through Terra's mobile SDK. Any other success return, one without a
    user_id (a link opened without its query, a fallback that dropped it) included, leaves the
    attempt pending for Terra's webhook or userInfo answer: ending it here could be contradicted by
    the webhook a moment later, after the app has stopped at the first terminal state."""
    attempt = attempt_from_token(token)
    says_no_user = claimed_terra_user_id == "null"  # Terra writes a literal "null" when it has no value
    if says_no_user:
        claimed_terra_user_id = None
    record_hint(attempt, hint, terra_user_id=claimed_terra_user_id, resource=claimed_resource)
    resource = attempt.resource or attempt.requested_provider
    if hint == AttemptHint.RETURNED_SUCCESS and says_no_user and resource in SDK_ONLY_PROVIDERS:
        _transition(attempt, (AttemptStatus.PENDING,), status=AttemptStatus.SDK_REQUIRED, resource=resource)
    db.session.commit()
    return attempt


def owned_attempt(user_id: int, attempt_id: str) -> ConnectAttempt:
    # Its connection in the same query: a status answer is one read.
    attempt = db.session.get(ConnectAttempt, attempt_id, options=[joinedload(ConnectAttempt.connection)])
    if attempt is None or attempt.user_id != user_id:
        raise AttemptNotFound("unknown attempt")  # never reveal someone else's attempt exists
    return attempt


def poll_state(attempt_id: str):
    """The attempt's POLL_STATE columns as a row, or None: from this worker's copy when it has one
    (services/attempt_states.py), else from one read, which it then keeps."""
    states = attempt_states.states()
    state = states.get(attempt_id)
    if state is None:
        generation = states.generation()
        state = db.session.connection().execute(POLL_STATE, {"attempt_id": attempt_id}).first()
        if state is not None:
            states.put(state, generation)
    return state


def owned_poll_state(user_id: int, attempt_id: str):
    """`poll_state` of one of `user_id`'s attempts; AttemptNotFound as `owned_attempt`."""
    state = poll_state(attempt_id)
    if state is None or state.user_id != user_id:
        raise AttemptNotFound("unknown attempt")
    return state


def change_due(attempt, config: Mapping | None = None) -> bool:
    """Whether time alone has changed a pending attempt (it expired, its browser was abandoned, or its
    userInfo check is due), so `refresh` has work to do. Takes the model or a POLL_STATE row."""
    return _passed(change_due_at(attempt, config))


def change_due_at(attempt, config: Mapping | None = None) -> datetime | None:
    """When time alone will change a pending attempt (see `change_due`); None once it is settled.
    `config`: the app's settings (default: the current app's)."""
    if attempt.status != AttemptStatus.PENDING:
        return None
    config = config or current_app.config
    moments = (attempt.expires_at, _abandoned_at(attempt, config), _userinfo_check_at(attempt, config))
    return min(moment for moment in moments if moment is not None)


def _passed(moment: datetime | None) -> bool:
    return moment is not None and moment <= utcnow()


# -- state changes ------------------------------------------------------------------------


def _change(attempt: ConnectAttempt, **fields) -> None:
    for name, value in fields.items():
        setattr(attempt, name, value)
    # Incremented by the database, so two concurrent changes (say a webhook and a return-page hint)
    # give two increments; a Python-side `+= 1` would let both write the same number.
    attempt.version = ConnectAttempt.version + 1
    attempt.updated_at = _updated_now()


def _updated_now():
    """`updated_at` for a change: now, unless the row already holds a later time, so that it never
    goes backwards from one version to the next. The time is taken before the write; a change that
    took it earlier but reached the row later (another worker's, or a clock stepped back) keeps the
    later time. Compared in the UPDATE itself, on the row as it is when the write lands."""
    now = utcnow()
    return case((ConnectAttempt.updated_at > now, ConnectAttempt.updated_at), else_=now)


def _transition(attempt: ConnectAttempt, allowed_from: tuple[str, ...], **fields) -> bool:
    """Change the state atomically: the UPDATE matches only while the row is still in an allowed
    state, so two concurrent outcomes (a webhook and a userInfo check, say) cannot both win, in one
    process or across several."""
    if attempt.status not in allowed_from:
        return False
    db.session.flush()
    result = db.session.execute(
        update(ConnectAttempt)
        .where(ConnectAttempt.id == attempt.id, ConnectAttempt.status.in_(allowed_from))
        .values(**fields, version=ConnectAttempt.version + 1, updated_at=_updated_now())
        .execution_options(synchronize_session=False)
    )
    attempt_states.noted_change(db.session(), attempt.id)
    db.session.expire(attempt)
    return result.rowcount == 1


def record_hint(
    attempt: ConnectAttempt, hint: AttemptHint, terra_user_id: str | None = None, resource: str | None = None
) -> None:
    """What the browser said happened. Recorded for display and polling, never as an outcome."""
    fields: dict = {}
    if attempt.hint != hint:
        fields.update(hint=hint, hinted_at=utcnow())
    if terra_user_id and attempt.redirect_terra_user_id != terra_user_id:
        fields["redirect_terra_user_id"] = fit(ConnectAttempt.redirect_terra_user_id, terra_user_id)
    if resource and attempt.resource != resource:
        fields["resource"] = resource
    if fields:
        _change(attempt, **fields)


def record_browser_closed(attempt: ConnectAttempt) -> None:
    """The app says its in-app browser closed. Advisory: the user may have finished just before."""
    if attempt.status == AttemptStatus.PENDING and attempt.browser_closed_at is None:
        _change(attempt, hint=AttemptHint.BROWSER_CLOSED, browser_closed_at=utcnow())


def cancel_if_abandoned(attempt: ConnectAttempt) -> bool:
    """No verified outcome within the grace period after the browser closed, or came back through
    the failure URL (whose webhook may name no attempt we know): the user gave up. A late verified
    success still turns it into `connected`."""
    if attempt.status != AttemptStatus.PENDING or not _abandoned(attempt):
        return False
    reason = "browser_closed" if attempt.browser_closed_at is not None else "returned_failure"
    return _transition(attempt, (AttemptStatus.PENDING,), status=AttemptStatus.CANCELLED, error=reason)


def mark_connected(attempt: ConnectAttempt, connection: Connection) -> bool:
    # A late verified success still wins over the "browser closed" guess and over "use the SDK".
    return _transition(
        attempt,
        (AttemptStatus.PENDING, AttemptStatus.CANCELLED, AttemptStatus.SDK_REQUIRED),
        status=AttemptStatus.CONNECTED,
        connection_id=connection.id,
        error=None,
    )


def mark_failed(attempt: ConnectAttempt, reason: str | None) -> bool:
    return _transition(
        attempt,
        (AttemptStatus.PENDING,),
        status=AttemptStatus.FAILED,
        error=fit(ConnectAttempt.error, reason or "auth_failed"),
    )


def _abandoned(attempt) -> bool:
    return _passed(_abandoned_at(attempt, current_app.config))


def _abandoned_at(attempt, config: Mapping) -> datetime | None:
    given_up_at = attempt.browser_closed_at
    if given_up_at is None and attempt.hint == AttemptHint.RETURNED_FAILURE:
        given_up_at = attempt.hinted_at
    if given_up_at is None:
        return None
    return given_up_at + timedelta(seconds=config["BROWSER_CLOSED_GRACE_SECONDS"])


def _expired(attempt) -> bool:
    return _passed(attempt.expires_at)


def expire_if_due(attempt: ConnectAttempt) -> bool:
    if not _expired(attempt):
        return False
    return _transition(attempt, (AttemptStatus.PENDING,), status=AttemptStatus.EXPIRED, error="session_expired")


def find_attempt_for_event(user: User, session_ids: tuple[str, ...]) -> ConnectAttempt | None:
    """The one attempt an auth event answers, by Terra's widget session / flow id (or, for
    authenticateUser, the Terra user id it announced). None when the event names no attempt of
    `user`, or more than one: such an event never ends an attempt (nothing in Terra's contract says
    `flow_id` is the widget session id); the return redirect, browser-closed and expiry still can."""
    if not session_ids:
        return None
    matches = db.session.scalars(
        select(ConnectAttempt)
        .where(ConnectAttempt.user_id == user.id, ConnectAttempt.terra_session_id.in_(session_ids))
        .limit(2)
    ).all()
    return matches[0] if len(matches) == 1 else None


def refresh(attempt: ConnectAttempt) -> ConnectAttempt:
    """Bring a pending attempt up to date before showing it: expiry, an abandoned browser, then the
    userInfo check. Each change is committed before Terra is asked anything."""
    if expire_if_due(attempt) or cancel_if_abandoned(attempt):
        db.session.commit()
    if attempt.status == AttemptStatus.PENDING and _userinfo_check_due(attempt):
        if confirm_redirect_user(attempt):
            db.session.commit()
    return attempt


def _userinfo_check_due(attempt) -> bool:
    return _passed(_userinfo_check_at(attempt, current_app.config))


def _userinfo_check_at(attempt, config: Mapping) -> datetime | None:
    if not attempt.redirect_terra_user_id or attempt.hinted_at is None:
        return None
    return attempt.hinted_at + timedelta(seconds=config["USERINFO_CHECK_AFTER_SECONDS"])


def confirm_redirect_user(attempt: ConnectAttempt) -> bool:
    """The webhook is late: ask Terra whether the redirect's user id is really this user's."""
    try:
        terra_user: TerraUser | None = terra.client.user_info(attempt.redirect_terra_user_id)
    except TerraError:
        current_app.logger.warning("userInfo check failed for attempt %s; waiting for the webhook", attempt.id)
        return False
    owner = db.session.get(User, attempt.user_id)
    if terra_user is None or terra_user.active is False or terra_user.reference_id != owner.reference_id:
        # Not confirmed: forget the claim so we do not ask again on every poll.
        _change(attempt, redirect_terra_user_id=None)
        return True
    connection = upsert_connection(owner, terra_user)
    return mark_connected(attempt, connection)
