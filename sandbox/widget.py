"""The hosted widget: provider picker → fake provider login → consent (allow, deny, cancel).

Plain HTML forms, no scripts. The automation endpoint at the end finishes a flow the same way
through `flows.complete_flow`, for tests and walkthroughs that do not click.
"""

from __future__ import annotations

from flask import current_app, redirect, render_template, request, url_for

from sandbox import providers as catalogue
from sandbox.blueprint import bp
from sandbox.errors import sandbox_error
from sandbox.flows import (
    FlowProblem,
    complete_flow,
    ensure_open,
    failure_return_url,
    get_session,
    normalise_account,
    offered_provider,
    offered_providers,
)
from sandbox.models import FlowKind, SandboxSession

DECISION_OUTCOMES = {"allow": "success", "deny": "denied", "cancel": "cancelled"}
# How each FlowProblem is answered: HTTP status, JSON error code, page title, `reason` for the app.
_PROBLEMS = {
    "not_found": (404, "session_not_found", "Sign-in link not found", None),
    "used": (409, "session_used", "This link was already used", "session_used"),
    "expired": (410, "session_expired", "This link has expired", "session_expired"),
    "bad_input": (400, "invalid_request", "Cannot continue", None),
}


@bp.errorhandler(FlowProblem)
def flow_problem_page(problem: FlowProblem):
    status, _, title, reason = _PROBLEMS[problem.code]
    back_url = (
        failure_return_url(problem.session, reason, current_app.config)
        if problem.session is not None and reason
        else None
    )
    page = render_template(
        "sandbox/message.html", title=title, message=problem.message, back_url=back_url, back_label="Back to the app"
    )
    return page, status


def _open_session(session_id: str) -> SandboxSession:
    session = get_session(session_id)
    ensure_open(session)
    return session


@bp.get("/widget/<session_id>")
def widget_page(session_id: str):
    session = _open_session(session_id)
    offered = offered_providers(session)
    # One provider skips the picker, as Terra's widget does (authenticateUser's auth_url is the login step itself).
    if session.kind == FlowKind.AUTHENTICATE or len(offered) == 1:
        return redirect(url_for("sandbox.widget_login", session_id=session.id, provider=offered[0].code), 303)
    return render_template("sandbox/picker.html", flow=session, providers=offered)


@bp.get("/widget/<session_id>/login")
def widget_login(session_id: str):
    session = _open_session(session_id)
    provider = offered_provider(session, request.args.get("provider"))
    return _login_page(session, provider)


@bp.get("/widget/<session_id>/consent")
def widget_consent(session_id: str):
    session = _open_session(session_id)
    provider = offered_provider(session, request.args.get("provider"))
    try:
        account = normalise_account(request.args.get("account"))
    except FlowProblem as problem:
        return _login_page(session, provider, error=problem.message), 400
    return render_template("sandbox/consent.html", flow=session, provider=provider, account=account)


def _login_page(session: SandboxSession, provider: catalogue.Provider, error: str | None = None) -> str:
    if provider.sdk_only:  # no web login: Terra's widget hands the user back to the app
        return render_template("sandbox/sdk_handoff.html", flow=session, provider=provider)
    can_choose_again = session.kind == FlowKind.WIDGET and len(offered_providers(session)) > 1
    return render_template(
        "sandbox/login.html", flow=session, provider=provider, error=error, can_choose_again=can_choose_again
    )


@bp.post("/widget/<session_id>/decision")
def widget_decision(session_id: str):
    outcome = DECISION_OUTCOMES.get(request.form.get("decision", ""))
    if outcome is None:
        raise FlowProblem("bad_input", "Choose Allow, Deny or Cancel.")
    completion = complete_flow(
        session_id,
        provider_code=request.form.get("provider"),
        account=request.form.get("account"),
        outcome=outcome,
        config=current_app.config,
    )
    return redirect(completion.redirect_url, 303)


@bp.get("/widget/<session_id>/result")
def widget_result(session_id: str):
    """Where the flow ends when the app gave no redirect URL (Terra's own result screen)."""
    get_session(session_id)
    provider = catalogue.find(request.args.get("resource"))
    return render_template(
        "sandbox/result.html",
        connected=request.args.get("user_id") not in (None, "", "null"),
        provider_name=provider.name if provider else request.args.get("resource"),
        reason=request.args.get("reason"),
    )


@bp.post("/widget/<session_id>/complete")
def complete_widget(session_id: str):
    """Automation: `{"provider", "account", "outcome"}` → `{"redirect_url"}`, exactly as the pages."""
    try:
        ensure_open(get_session(session_id))
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise FlowProblem("bad_input", "Send a JSON object: {provider, account, outcome}.")
        completion = complete_flow(
            session_id,
            provider_code=body.get("provider"),
            account=body.get("account"),
            outcome=body.get("outcome"),
            config=current_app.config,
        )
    except FlowProblem as problem:
        status, code, _, _ = _PROBLEMS[problem.code]
        return sandbox_error(status, code, problem.message)
    return {"redirect_url": completion.redirect_url}
