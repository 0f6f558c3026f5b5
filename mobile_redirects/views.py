"""Routes of the mobile return leg: `/mobile/return/<outcome>` and the `.well-known` files."""

from __future__ import annotations

import secrets

from flask import Blueprint, Response, abort, current_app, g, render_template, request

from extensions import csrf
from mobile_redirects import association
from mobile_redirects.deep_links import return_page_link
from models.connect_attempt import AttemptHint, AttemptStatus
from services import attempts, return_visits

bp = Blueprint("mobile", __name__)
csrf.exempt(bp)


@bp.get("/mobile/return/success/<token>")
def return_success(token: str):
    return _return_page(token, "success", AttemptHint.RETURNED_SUCCESS)


@bp.get("/mobile/return/failure/<token>")
def return_failure(token: str):
    return _return_page(token, "failure", AttemptHint.RETURNED_FAILURE)


def _return_page(token: str, outcome: str, hint: AttemptHint):
    """Record the hint, try the app once, and always offer a "Return to app" link.

    The automatic try can be dropped silently (Chrome needs a user gesture for app launches after a
    while; iOS ignores universal links to the page's own domain), so the link is the real way back:
    tapping it is a fresh gesture. Both return pages follow one rule for whose attempt it is
    (services/return_visits.py); the app link stays either way, since the app
    asks the API, as its own user, what happened.
    """
    attempt = return_visits.record_visit(token, hint, request.args)

    tried_already = request.args.get("tried") == "1"  # Chrome came back through the intent's fallback
    fallback = attempts.return_page_url("mobile", outcome, token, tried="1")
    app_link = return_page_link(
        current_app.config,
        attempt.id,
        outcome,
        request.user_agent.string,
        fallback,
        resource=attempt.resource if attempt.status == AttemptStatus.SDK_REQUIRED else None,
    )

    nonce = secrets.token_urlsafe(16)
    html = render_template(
        "mobile/return.html",
        outcome=outcome,
        app_link=app_link,
        try_app=bool(app_link) and not tried_already,
        nonce=nonce,
        another_account=return_visits.signed_in_as_someone_else(attempt, g.user),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    # No forms here, and the URL carries the attempt token: send it to no one, not even ourselves.
    response.headers["Referrer-Policy"] = "no-referrer"
    # Strict: only this page's nonce'd script runs; navigating to the app link is not restricted by CSP.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return response


@bp.get("/.well-known/apple-app-site-association")
def apple_app_site_association():
    return _association_file(association.apple_app_site_association(current_app.config))


@bp.get("/.well-known/assetlinks.json")
def android_asset_links():
    return _association_file(association.android_asset_links(current_app.config))


def _association_file(document):
    if document is None:
        abort(404, description="App association is not configured.")
    response = Response(association.render(document), mimetype="application/json")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
