"""Connections (one row per Terra user) and the changes Terra's events make to them.

Every function here is idempotent and order-independent: the unique `terra_user_id` decides which
row an event touches, and an insert that loses a race re-reads the winner's row instead of failing.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from extensions import db
from models import ConnectAttempt, Connection, ConnectionStatus, ReplacedTerraUser, User
from models.time import utcnow
from services import data_events
from terra_integration.client import TerraClient, TerraNotFound, TerraUser

# Why a connection ended, for its owner to read (models.connect_attempt.REASON_TEXT).
RELINKED_ELSEWHERE = "relinked_elsewhere"

# The largest value of an `integer` primary key (32 bits on PostgreSQL). A larger id in a URL names
# nothing; handed to the database it would be an error (PostgreSQL: out of range, SQLite: overflow).
MAX_ROW_ID = 2**31 - 1


class ConnectionNotFound(LookupError):
    pass


def owned_connections(user_id: int) -> list[Connection]:
    """`user_id`'s connections, newest first: the dashboard and the API's list show these."""
    return list(
        db.session.scalars(
            select(Connection).where(Connection.user_id == user_id).order_by(Connection.created_at.desc())
        )
    )


def owned_connection(user_id: int, connection_id: int) -> Connection:
    """The connection `connection_id` of `user_id`: the web's disconnect and the API's delete ask here.
    ConnectionNotFound for an id that is not theirs: never reveal that someone else's exists."""
    connection = db.session.get(Connection, connection_id) if connection_id <= MAX_ROW_ID else None
    if connection is None or connection.user_id != user_id:
        raise ConnectionNotFound("no such connection")
    return connection


def by_terra_user_id(terra_user_id: str) -> Connection | None:
    return db.session.scalars(select(Connection).where(Connection.terra_user_id == terra_user_id)).first()


def for_terra_user(terra_user_id: str) -> Connection | None:
    """The connection that holds `terra_user_id` now: its own row, or the row a re-authentication
    moved it to (data sent under the old id before Terra switched still belongs there)."""
    return by_terra_user_id(terra_user_id) or _replacement_of(terra_user_id)


def was_replaced(terra_user_id: str) -> bool:
    return db.session.get(ReplacedTerraUser, terra_user_id) is not None


def _replacement_of(terra_user_id: str) -> Connection | None:
    replaced = db.session.get(ReplacedTerraUser, terra_user_id)
    return db.session.get(Connection, replaced.connection_id) if replaced else None


def _insert_or_get(
    owner: User, terra_user: TerraUser, status: str, ordering_timestamp: int | None = None
) -> tuple[Connection, bool]:
    """The row for this Terra user, inserting it if absent (with the scopes `terra_user` states, as of
    `ordering_timestamp`). Returns (row, inserted)."""
    connection = by_terra_user_id(terra_user.user_id)
    if connection is not None:
        return connection, False
    try:
        with db.session.begin_nested():
            connection = Connection(
                user_id=owner.id,
                terra_user_id=terra_user.user_id,
                provider=terra_user.provider,
                scopes=terra_user.scopes,
                scopes_ordering_timestamp=ordering_timestamp,
                status=status,
                last_event_at=utcnow(),
            )
            db.session.add(connection)
        return connection, True
    except IntegrityError:
        # Another delivery inserted it between our read and our write: use theirs.
        return by_terra_user_id(terra_user.user_id), False


def upsert_connection(owner: User, terra_user: TerraUser, ordering_timestamp: int | None = None) -> Connection:
    """A successful authentication: the Terra user is linked and active. `ordering_timestamp`: the
    event's X-Terra-Ordering-Timestamp (None for a userInfo answer or an event without one).

    An existing row keeps its status: Terra issues a new user id on every authentication, so an
    `auth` for a known id is a late or replayed delivery, and must not undo a `deauth` or a
    `connection_error` that was sent after it but arrived first; nor the scopes a newer event stated.
    """
    replacement = _replacement_of(terra_user.user_id)
    if replacement is not None:  # a later re-authentication already replaced this id (events out of order)
        return replacement
    return activate(owner, terra_user, ordering_timestamp)


def activate(owner: User, terra_user: TerraUser, ordering_timestamp: int | None = None) -> Connection:
    """`upsert_connection` for a Terra user the caller knows no re-authentication replaced."""
    connection, inserted = _insert_or_get(owner, terra_user, ConnectionStatus.ACTIVE, ordering_timestamp)
    if not inserted and connection.status != ConnectionStatus.REVOKED:
        connection.provider = terra_user.provider or connection.provider
        if terra_user.scopes:
            take_scopes(connection, terra_user.scopes, ordering_timestamp)
        connection.last_event_at = utcnow()
    return connection


def set_status(owner: User, terra_user: TerraUser, status: str, reason: str) -> Connection:
    """deauth, access_revoked, connection_error. A revocation for a user we have not seen yet still
    leaves a revoked row, so an `auth` delivered after it cannot bring the connection back."""
    connection, inserted = _insert_or_get(owner, terra_user, status)
    if inserted or connection.status != ConnectionStatus.REVOKED:
        connection.status = status
        connection.status_reason = reason
    connection.last_event_at = utcnow()
    return connection


def change_scopes(
    owner: User,
    terra_user: TerraUser,
    stated: list[str] | None,
    added: list[str],
    removed: list[str],
    ordering_timestamp: int | None,
) -> Connection:
    """permission_change: the event states the user's whole scope set (`stated`, from `user.scopes`),
    which is stored as it is; only an event that states none (None) has its added and removed lists
    applied. Deltas drift when one is lost, replayed or reordered; a whole set does not."""
    connection, inserted = _insert_or_get(owner, terra_user, ConnectionStatus.ACTIVE, ordering_timestamp)
    if not inserted:
        if stated is None:
            stated = [scope for scope in connection.scope_list if scope not in removed]
            stated += [scope for scope in added if scope not in stated]
        take_scopes(connection, ",".join(stated), ordering_timestamp)
    connection.last_event_at = utcnow()
    return connection


def take_scopes(connection: Connection, scopes: str, ordering_timestamp: int | None) -> None:
    """Store `scopes` unless the stored set came from a newer event: by X-Terra-Ordering-Timestamp
    (an equal one replaces it, as Terra's guidance for overwrites says); a set without one never
    replaces one that had one. The events of one user are applied one at a time
    (terra_integration.applier), so reading and writing the row here cannot race."""
    stored = connection.scopes_ordering_timestamp
    if stored is not None and (ordering_timestamp is None or ordering_timestamp < stored):
        return
    connection.scopes = scopes
    connection.scopes_ordering_timestamp = ordering_timestamp


def revoke(connection: Connection, reason: str) -> None:
    if connection.status != ConnectionStatus.REVOKED:
        connection.status = ConnectionStatus.REVOKED
        connection.status_reason = reason
    connection.last_event_at = utcnow()


def replace_terra_user(
    owner: User,
    old_user: TerraUser | None,
    new_user: TerraUser,
    old_owner: User | None = None,
    ordering_timestamp: int | None = None,
) -> Connection:
    """user_reauth: the same provider account got a new Terra user id.

    Within one owner the row is kept and its id swapped in place, in either order relative to the
    `auth` for the new id: if that `auth` already created a row, the older row absorbs it (attempts
    are re-pointed, and it takes that row's status) so the connection keeps its id. When another
    app user re-linked the account (the old row, or the old user's reference_id, is `old_owner`'s),
    nothing moves between owners: the old owner's connection ends revoked (created so, if its `auth`
    has not arrived yet), and `owner` gets a connection of their own.
    """
    old = by_terra_user_id(old_user.user_id) if old_user else None
    if old is None and old_owner is not None and old_owner.id != owner.id:
        # The old owner's `auth` has not arrived yet (and now never counts): their row starts ended.
        old = set_status(old_owner, old_user, ConnectionStatus.REVOKED, RELINKED_ELSEWHERE)
        db.session.flush()
    if old is None or old.user_id != owner.id:
        if old is not None:
            revoke(old, RELINKED_ELSEWHERE)
        connection = upsert_connection(owner, new_user, ordering_timestamp)
        if old_user is not None:
            # Remembered even when we never saw it: its `auth` may still be on its way.
            db.session.add(ReplacedTerraUser(old_terra_user_id=old_user.user_id, connection_id=(old or connection).id))
        return connection
    db.session.add(ReplacedTerraUser(old_terra_user_id=old.terra_user_id, connection_id=old.id))
    # The new id's row; or, when a later re-authentication already replaced the new id too (events
    # out of order), the row that holds the newest id.
    new = by_terra_user_id(new_user.user_id) or _replacement_of(new_user.user_id)
    status, reason, newest_id = ConnectionStatus.ACTIVE, None, new_user.user_id
    # The old Terra user's scope set says nothing about the new one's: only the new id's events count.
    old.scopes_ordering_timestamp = None
    if new is not None and new.id != old.id:
        # A deauth or connection_error for the new id may have arrived first: keep what it said.
        status, reason, newest_id = new.status, new.status_reason, new.terra_user_id
        old.scopes, old.scopes_ordering_timestamp = new.scopes, new.scopes_ordering_timestamp
        for model in (ConnectAttempt, ReplacedTerraUser):
            db.session.execute(update(model).where(model.connection_id == new.id).values(connection_id=old.id))
        data_events.move_data(new.id, old.id)
        old.last_data_at = max(filter(None, (old.last_data_at, new.last_data_at)), default=None)
        # A plain DELETE: a concurrent delivery of the same swap may already have removed the row,
        # which is fine (the retry in the inbox converges), so no "expected one row" check.
        db.session.execute(delete(Connection).where(Connection.id == new.id))
        db.session.expunge(new)
    old.terra_user_id = newest_id
    old.provider = new_user.provider or old.provider
    if new_user.scopes:
        take_scopes(old, new_user.scopes, ordering_timestamp)
    old.status, old.status_reason = status, reason
    old.last_event_at = utcnow()
    return old


def disconnect(connection: Connection, terra: TerraClient) -> Connection:
    """The user asked to disconnect: tell Terra first, then mark the connection revoked.

    Raises TerraError when Terra could not be told; the connection is then left as it was.
    """
    if connection.status != ConnectionStatus.REVOKED:
        try:
            terra.deauthenticate_user(connection.terra_user_id)
        except TerraNotFound:
            pass  # already gone on Terra's side: revoking locally is the right outcome
        revoke(connection, "disconnected")
        db.session.commit()
    return connection
