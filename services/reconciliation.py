"""Reconciliation: converge a user's connections to what Terra's `userInfo?reference_id=` says.

Terra's own guidance is never to trust webhooks alone: a delivery can be lost, rejected (a retry past
the signature tolerance) or late. Reconciling reads the Terra users under the user's reference_id and
applies the same rules as the webhook handlers, so the two reach the same state in any order:

- a returned user that is active (or whose `active` is unknown) gets a connection if it has none;
  an existing connection keeps its status (a revocation by webhook or by the user is final, a
  `degraded` one waits for the user to reconnect, which makes a new Terra user), except one that
  reconciliation itself revoked (`not_at_terra`): Terra lists it again, so it is active again;
- a re-authentication whose webhooks were lost (one of the user's connections has gone from Terra's
  list, and Terra lists a user of that provider) is applied as `user_reauth` is, through the same
  code: the connection keeps its row and takes the new Terra user id;
- a returned user that is inactive, and any connection Terra no longer returns, is revoked;
- a Terra user that a re-authentication replaced never comes back.

It acts only on Terra's own answer: an answer that is not one (an HTML page, Terra's error JSON for a
bad dev-id, 401, 5xx, a timeout) raises TerraError from the client and nothing is changed.

It runs when the user opens their connections (web dashboard, mobile list) and on the success return
page, throttled per user, and for everyone from `flask terra reconcile` on a schedule.
"""

from __future__ import annotations

from datetime import timedelta

from flask import current_app
from sqlalchemy import or_, select, update

from extensions import db
from models import Connection, ConnectionStatus, User
from models.time import utcnow
from services import connections
from terra_integration.client import TerraClient, TerraError, TerraUser

NOT_AT_TERRA = "not_at_terra"  # Terra no longer returns the user, or returns it inactive


def reconcile(user: User, terra: TerraClient) -> int:
    """Converge `user`'s connections to Terra and commit; returns how many rows changed.
    Raises TerraError when Terra could not be asked (nothing is changed then)."""
    returned = {
        each.user_id: each
        for each in terra.users_by_reference(user.reference_id)
        if each.reference_id == user.reference_id
    }
    changed = _apply_reauthentications(user, returned)
    for terra_user in returned.values():
        if connections.was_replaced(terra_user.user_id):
            continue
        connection = connections.by_terra_user_id(terra_user.user_id)
        if connection is not None and connection.user_id != user.id:
            continue  # not this user's row: only webhooks move connections between owners
        if terra_user.active is False:
            if connection is None or connection.status != ConnectionStatus.REVOKED:
                connections.set_status(user, terra_user, ConnectionStatus.REVOKED, reason=NOT_AT_TERRA)
                changed += 1
        elif connection is None:
            connections.upsert_connection(user, terra_user)
            changed += 1
        elif connection.status == ConnectionStatus.REVOKED and connection.status_reason == NOT_AT_TERRA:
            connection.status, connection.status_reason = ConnectionStatus.ACTIVE, None
            changed += 1
    for connection in _live_connections(user):
        if connection.terra_user_id not in returned:
            connections.revoke(connection, NOT_AT_TERRA)
            changed += 1
    user.connections_reconciled_at = utcnow()
    db.session.commit()
    return changed


def _apply_reauthentications(user: User, returned: dict[str, TerraUser]) -> int:
    """Re-authentications whose webhooks never came. Terra deletes the earlier Terra user of a
    re-authentication, so a live connection gone from Terra's list while Terra lists a user of the same
    provider was replaced by that user: the newest active one, else the newest ("newest" is last in
    Terra's list; the sandbox lists oldest first, Terra documents no order, which matters only with
    several users of one provider). Returns how many connections took a new Terra user id."""
    gone = [connection for connection in _live_connections(user) if connection.terra_user_id not in returned]
    listed = list(returned.values())
    changed = 0
    for old in gone:
        candidates = [
            (each.active is not False, position, each)
            for position, each in enumerate(listed)
            if each.provider == old.provider and not connections.was_replaced(each.user_id)
        ]
        if not candidates:
            continue  # nothing replaced it: `reconcile` revokes it
        *_, new = max(candidates, key=lambda candidate: candidate[:2])
        holder = connections.by_terra_user_id(new.user_id)
        if holder is not None and holder.user_id != user.id:
            continue  # only webhooks move connections between owners
        replaced = TerraUser(
            user_id=old.terra_user_id,
            provider=old.provider,
            reference_id=user.reference_id,
            scopes=old.scopes,
            active=False,
        )
        connections.replace_terra_user(user, replaced, new)
        db.session.flush()
        changed += 1
    return changed


def _live_connections(user: User) -> list[Connection]:
    return db.session.scalars(
        select(Connection).where(Connection.user_id == user.id, Connection.status != ConnectionStatus.REVOKED)
    ).all()


def reconcile_if_due(user: User, terra: TerraClient) -> TerraError | None:
    """Reconcile for a page, at most once per RECONCILE_INTERVAL_SECONDS per user across processes
    (the claim is one UPDATE that only matches when the last run is old enough). A Terra failure is
    logged and returned, so the page can say it shows the last known state."""
    cutoff = utcnow() - timedelta(seconds=current_app.config["RECONCILE_INTERVAL_SECONDS"])
    claimed = (
        db.session.execute(
            update(User)
            .where(
                User.id == user.id,
                or_(User.connections_reconciled_at.is_(None), User.connections_reconciled_at <= cutoff),
            )
            .values(connections_reconciled_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    db.session.commit()
    if not claimed:
        return None
    try:
        reconcile(user, terra)
    except TerraError as error:
        db.session.rollback()
        current_app.logger.warning("reconciling user %s failed: %s", user.id, error)
        return error
    return None


def users_to_sweep() -> list[int]:
    """Every user with a connection that is not revoked: what the scheduled sweep reconciles."""
    return db.session.scalars(
        select(Connection.user_id)
        .where(Connection.status != ConnectionStatus.REVOKED)
        .distinct()
        .order_by(Connection.user_id)
    ).all()
