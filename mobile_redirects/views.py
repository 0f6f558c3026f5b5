"""Routes of the mobile return leg: the return pages `/mobile/return/<outcome>/<token>`, the pages
behind the universal links (`<link base path>/connect/<outcome>`) and the `.well-known` files."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, current_app, g, render_template, request

from extensions import csrf
from mobile_redirects import association
from mobile_redirects.deep_links import app_link, is_webview, replaces_the_page, universal_link, universal_link_path
from models.connect_attempt import ATTEMPT_ID, AttemptHint, AttemptStatus
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
    """Record the hint, try the app once if that cannot lose this page, and always offer a "Return
    to app" link of the kind the app said it catches.

    The automatic try can be dropped silently (Chrome needs a user gesture for app launches after a
    while; iOS ignores universal links to the page's own domain), so the link is the real way back:
    tapping it is a fresh gesture. Both return pages follow one rule for whose attempt it is
    (services/return_visits.py); the app link stays either way, since the app
    asks the API, as its own user, what happened.
    """
    try:
        attempt = return_visits.record_visit(token, hint, request.args)
    except return_visits.InvalidReturnLink as invalid:
        return _invalid_link_page(token, outcome, invalid)
    link = app_link(
        current_app.config,
        # Attempts made before the app named its callback follow the configured default.
        attempt.callback or current_app.config["MOBILE_CALLBACK"],
        outcome,
        attempt.id,
        request.user_agent.string,
        fallback_url=_tried_once(attempts.return_page_url("mobile", outcome, token)),
        resource=attempt.resource if attempt.status == AttemptStatus.SDK_REQUIRED else None,
    )
    return _page(outcome, link, another_account=return_visits.signed_in_as_someone_else(attempt, g.user))


def universal_link_page(outcome: str):
    """What a universal link shows when no app claims it (a desktop browser, an app not installed,
    an association file not fetched yet): the outcome, said as a hint, and the app's scheme link as
    the way back. It knows no attempt state and records nothing: the link carries no token."""
    attempt_id = request.args.get("attempt_id", "")
    attempt_id = attempt_id if ATTEMPT_ID.fullmatch(attempt_id) else None  # passed on only if it is one
    link = app_link(
        current_app.config,
        "scheme",
        outcome,
        attempt_id,
        request.user_agent.string,
        fallback_url=_tried_once(universal_link(current_app.config, outcome), attempt_id),
    )
    return _page(outcome, link, another_account=False)


def _invalid_link_page(token: str, outcome: str, invalid: return_visits.InvalidReturnLink) -> Response:
    """A return link whose token is forged, expired (older than ATTEMPT_TOKEN_MAX_AGE) or names no
    attempt: a 404 that still leads back into the app, which asks the API where its connection
    stands. Every configured way back is offered, since the link no longer says which one the app
    catches; none is tried by itself, nor does any name an attempt."""
    config = current_app.config
    links = [
        link
        for link in (
            app_link(
                config,
                "scheme",
                outcome,
                None,
                request.user_agent.string,
                fallback_url=_tried_once(attempts.return_page_url("mobile", outcome, token)),
            ),
            universal_link(config, outcome),
        )
        if link
    ]
    response = _page(
        outcome,
        links[0] if links else None,
        another_account=False,
        problem=invalid.description,
        other_link=links[1] if len(links) > 1 else None,
    )
    response.status_code = 404
    return response


# What Terra's redirect appends (its docs: user_id, resource, reference_id); no other parameter is read.
TERRA_REDIRECT_PARAMETERS = ("user_id", "resource", "reference_id")


def _tried_once(page_url: str, attempt_id: str | None = None) -> str:
    """Where Chrome comes back to when the `intent:` link cannot open the app: this same page, with
    its `attempt_id` if it has one, Terra's parameters as it was opened with them (a return without
    them would read as another answer) and `tried=1`, so that it does not try the app again."""
    terras = [(name, value) for name in TERRA_REDIRECT_PARAMETERS for value in request.args.getlist(name)]
    own = [("attempt_id", attempt_id)] if attempt_id else []
    return f"{page_url}?{urlencode([*own, *terras, ('tried', '1')])}"


def _page(
    outcome: str, link: str | None, another_account: bool, problem: str | None = None, other_link: str | None = None
) -> Response:
    """The return page. The app link is tried once by itself unless that could lose the page: an
    https link, a second visit through Chrome's fallback, a WebView (`is_webview`; the page then says
    to open it in the browser), or a link that is no longer valid (`problem`)."""
    tried_already = request.args.get("tried") == "1"  # Chrome came back through the intent's fallback
    webview = is_webview(request.user_agent.string)
    nonce = secrets.token_urlsafe(16)
    html = render_template(
        "mobile/return.html",
        outcome=outcome,
        app_link=link,
        other_link=other_link,
        try_app=bool(link) and not replaces_the_page(link) and not (tried_already or webview or problem),
        webview=webview,
        problem=problem,
        nonce=nonce,
        another_account=another_account,
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


@bp.record
def _serve_the_universal_link_paths(state) -> None:
    """The universal-link paths answer on every host this app serves, so the links host can be this
    same app under another name (docs/mobile.md, "Hosting the links")."""
    config = state.app.config
    if not config["MOBILE_UNIVERSAL_LINK_BASE"]:
        return
    for outcome in ("success", "failure"):
        state.add_url_rule(
            universal_link_path(config, outcome),
            f"universal_link_{outcome}",
            lambda outcome=outcome: universal_link_page(outcome),
            methods=["GET"],
        )


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
