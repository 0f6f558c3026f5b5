"""A browser back from Terra on one of our return pages, web (blueprints/connect.py) or mobile
(mobile_redirects/views.py): both follow the one rule written here.

The signed attempt token in the URL is the capability: it alone names the attempt, and a browser
with no session at all (an in-app browser) is served in full. Whoever holds it may record the
return hint, which is advisory: an outcome needs a verified webhook or a userInfo check against the
attempt owner's reference_id, so a visit cannot move a connection to anyone. The pages hand in the
redirect's query string and the signed-in user; nothing here reads the request.
"""

from __future__ import annotations

from collections.abc import Mapping

from werkzeug.exceptions import NotFound

from models import ConnectAttempt, User
from models.connect_attempt import AttemptHint
from services import attempts
from services.providers import is_provider_code
from terra_integration.text_checks import storable_text


class InvalidReturnLink(NotFound):
    """404: the link's attempt token is forged, expired or names no attempt the browser may see."""

    def __init__(self, problem: object):
        super().__init__(description=f"This connection link is not valid ({problem}).")


def record_visit(token: str, hint: AttemptHint, query: Mapping[str, str]) -> ConnectAttempt:
    """What both return pages do first: note the hint and what Terra's redirect claims."""
    try:
        return attempts.record_return(token, hint, claimed_terra_user_id(query), claimed_resource(query))
    except attempts.AttemptNotFound as error:
        raise InvalidReturnLink(error) from None


def signed_in_as_someone_else(attempt: ConnectAttempt, user: User | None) -> bool:
    """A browser signed in as another account than the attempt's owner is told the link is not
    theirs and shown none of the attempt's state: someone who finished an attacker's widget or
    followed an attacker's link must not read "Connected" as news about their own account."""
    return user is not None and user.id != attempt.user_id


def claimed_terra_user_id(query: Mapping[str, str]) -> str | None:
    """The Terra user id a return redirect claims (a hint, checked later), or None when it is not
    text the database can keep (`%00`)."""
    value = query.get("user_id")
    return value if value is not None and storable_text(value) else None


def claimed_resource(query: Mapping[str, str]) -> str | None:
    """The provider code a return redirect names (`resource`), or None when it does not look like one."""
    value = query.get("resource", "").upper()
    return value if is_provider_code(value) else None
