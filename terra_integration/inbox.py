"""The webhook inbox: record each verified delivery exactly once; apply it later, from its row.

De-duplication is the unique `trace_id` (Terra's `X-Terra-Trace-Id`, stable across retries; a hash
of the body when absent), and the unique hash of the signed payload (`t` and body): the same signed
delivery sent again within the signature's tolerance under a fresh trace id is a replay, not a new
event. The insert decides (ON CONFLICT DO NOTHING): no check-then-insert.

Recording is the receiver's whole job: `receive` has the row committed as `received` (by `recorder`,
together with other deliveries arriving at the same time), this process's applier is woken, and
Terra gets its 200. Applying is the applier's (`applier`): `apply_recorded`
has the host change its state, notes the outcome on the row and commits once. A failure is rolled
back alone (the event applied again inside a SAVEPOINT), so the row keeps the failure, for a replay.

What an event does is the host's (`host.TerraHost`); what is generic is decided here: an account
event is applied to the owner of its signed reference_id, a data event as it is, an unknown type is
recorded, and an event that should name a Terra user and does not is kept as failed.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from flask import current_app
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

from terra_integration import signature
from terra_integration.events import (
    ACCOUNT_EVENT_KINDS,
    AUTH_FAILURE,
    DATA_TYPES,
    INFORMATIONAL_TYPES,
    PING_TYPE,
    USERLESS_TYPES,
    EventParseError,
    TerraEvent,
    parse_event,
)
from terra_integration.host import Outcome, bound
from terra_integration.models import (
    EVENT_TYPE_LENGTH,
    TEXT_LENGTH,
    EventOutcome,
    WebhookEventColumns,
    utcnow,
)
from terra_integration.payloads import PayloadUnavailable, download_payload
from terra_integration.reference_ids import owner_of
from terra_integration.write_turns import write_turn

DUPLICATE = "duplicate"  # what `receive` answers for a trace id or signed payload already recorded
UNREADABLE = "unreadable"  # the event_type of a verified body that is not an event we can read
# A row to apply, with its event as `_event_of` read it, or why there is none.
Read = tuple[WebhookEventColumns, TerraEvent | None, Exception | None]


@dataclass(frozen=True)
class Delivery:
    """A verified delivery, read (`webhooks.read_delivery`): its inbox keys (`signed_at` is the
    signature's `t`), its ordering timestamp, and its event or why the body is not one."""

    body: bytes
    signed_at: int
    trace_id: str
    terra_reference: str | None
    event: TerraEvent | None
    problem: str | None = None
    ordering_timestamp: int | None = None


def receive(delivery: Delivery) -> str:
    """Record the delivery, once per trace id and signed payload, and commit it; returns its outcome
    so far (`received`: recorded, to be applied by the applier; `failed`: a body that is not an
    event), or DUPLICATE when this trace id, or this body signed at this time, was already recorded
    (a duplicate delivery, or a replay of one: nothing is recorded or applied again). The row is
    committed together with the rows of other deliveries arriving at the same time (`recorder`),
    which then wakes the applier."""
    if delivery.event is None:
        values = _unreadable_row(delivery)
    else:
        event = delivery.event
        values = _row(
            delivery,
            event_type=event.type[:EVENT_TYPE_LENGTH],
            terra_user_id=event.terra_user_id,
            # Cut to the column: an over-long reference_id is never one of ours, but it is kept for the record.
            reference_id=event.reference_id and event.reference_id[:TEXT_LENGTH],
            body=delivery.body.decode("utf-8"),
        )
    if not bound().recorder.record(values):
        return DUPLICATE
    return values["outcome"]


def _row(delivery: Delivery, **columns) -> dict:
    """Every column of a new inbox row (one batch's rows must name the same columns)."""
    return {
        "trace_id": delivery.trace_id,
        "signed_payload_sha256": _signed_payload_sha256(delivery),
        "terra_reference": delivery.terra_reference,
        "ordering_timestamp": delivery.ordering_timestamp,
        "terra_user_id": None,
        "reference_id": None,
        "outcome": EventOutcome.RECEIVED,
        "detail": None,
        "received_at": utcnow(),
        "applied_at": None,
        "attempts": 0,
        "claimed_until": None,
        **columns,
    }


def _signed_payload_sha256(delivery: Delivery) -> str:
    return hashlib.sha256(signature.signed_payload(delivery.body, delivery.signed_at)).hexdigest()


def _unreadable_row(delivery: Delivery) -> dict:
    """A verified body that is not a readable event (no user, bad JSON, nesting...), kept as a failed
    row.

    Terra's guidance is to log and acknowledge such deliveries: an error answer would only make
    Terra retry them for hours. The row is there to look at, and to replay once the code reads it.
    """
    current_app.logger.warning("webhook %s kept as failed: %s", delivery.trace_id, delivery.problem)
    return _row(
        delivery,
        event_type=UNREADABLE,
        # Kept as close to the bytes as text allows: invalid UTF-8 and NUL as backslash escapes.
        body=delivery.body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"),
        outcome=EventOutcome.FAILED,
        detail=delivery.problem[:TEXT_LENGTH],
        applied_at=utcnow(),
    )


# Losing a race to a concurrent delivery shows up as one of these (a unique constraint, a deadlock or
# lock timeout, a row another delivery just replaced); the next try sees the winner's rows.
RACE_ERRORS = (IntegrityError, OperationalError, StaleDataError)
APPLY_TRIES = 4
# Claims of an s3_payload whose download may yet work: fewer than the applier's MAX_ATTEMPTS, so
# that the last one's failure is kept as it is, not as an abandoned claim. Waits of 5, 10 and 20 s
# between them: all within the 300 s Terra gives a payload URL.
DOWNLOAD_TRIES = 4
DOWNLOAD_BACKOFF_SECONDS = 5


def apply_recorded(row: WebhookEventColumns, read: tuple[TerraEvent | None, Exception | None] | None = None) -> str:
    """Apply a recorded event from its row, note the outcome on it, commit, and return the outcome:
    the applier's job, and `flask webhooks replay`'s (again, which is safe because applying is
    idempotent).

    A try that lost a race (a unique constraint, a deadlock) is simply run again, each try in its
    own savepoint. Any other failure is kept on the row, and logged, for a later replay; the row
    itself is committed either way. `read`: the row's event as `_event_of` gave it, when the caller
    has it already (an s3_payload's, downloaded).
    """
    event, problem = read or _event_of(row)
    return _apply_in_one_transaction([(row, event, problem)])[0]


def apply_together(rows: list[WebhookEventColumns]) -> None:
    """`apply_recorded` for several rows (of different users) in one transaction: one commit for them
    all, a failure still kept on its own row. An s3_payload is applied alone, after them (`apply_download`):
    its download must not hold the transaction open."""
    downloads = [row for row in rows if row.event_type == PING_TYPE]
    _apply_in_one_transaction([(row, *_event_of(row)) for row in rows if row.event_type != PING_TYPE])
    for row in downloads:
        apply_download(row)


def _apply_in_one_transaction(reads: list[Read]) -> list[str]:
    """Apply each (row, event, problem) in one transaction that renews the rows' claims first
    (`_hold`) and writes their outcomes last, in one statement for them all; commit; return the
    outcomes.

    The events are applied one after the other as they are, since nearly always each one succeeds.
    When one raises instead, the transaction is rolled back and they are applied again, each in a
    savepoint of its own (`_apply_or_fail`), so that the one fails alone, kept on its row, and a
    lost race is tried again."""
    if not reads:
        return []
    session = bound().db.session
    ids = [row.id for row, _, _ in reads]
    with write_turn():
        try:
            outcomes = _apply_and_note(ids, reads, _apply_as_it_is)
        except Exception:  # noqa: BLE001 (applied again below, where each failure is kept on its row)
            session.rollback()
            outcomes = _apply_and_note(ids, reads, _apply_or_fail)
        session.commit()
    return [outcome for outcome, _ in outcomes]


def _apply_and_note(ids: list[int], reads: list[Read], apply_one: Callable[..., Outcome]) -> list[Outcome]:
    """Renew the rows' claims, apply each read with `apply_one`, and set each row's outcome; flushed
    together (the last changes of the events flush too)."""
    _hold(ids)
    outcomes = [apply_one(*read) for read in reads]
    applied_at = utcnow()
    for (row, _, _), (outcome, detail) in zip(reads, outcomes, strict=True):
        # A detail can quote the event (an unknown type, a failure reason): cut it to fit its column.
        row.outcome, row.detail, row.applied_at = outcome, detail and detail[:TEXT_LENGTH], applied_at
    bound().db.session.flush()
    return outcomes


def _apply_as_it_is(row: WebhookEventColumns, event: TerraEvent | None, problem: Exception | None) -> Outcome:
    """The event's outcome, applied in the current transaction; what it raises is the caller's."""
    return _failure(row, problem) if problem is not None else apply_event(event)


def apply_download(row: WebhookEventColumns) -> str:
    """An s3_payload's row, for the applier: download its data, then apply it as `apply_recorded`
    does. A download that failed in a way that may pass (the deadline, the connection, a 5xx) leaves
    the row pending, with the reason in `detail`, not to be claimed again before a backoff
    (DOWNLOAD_BACKOFF_SECONDS, doubling) has passed; after DOWNLOAD_TRIES claims it is kept as
    failed like any other failure. A refused URL fails at once: trying again cannot help."""
    event, problem = _event_of(row)
    if not isinstance(problem, PayloadUnavailable) or row.attempts >= DOWNLOAD_TRIES:
        return apply_recorded(row, (event, problem))
    wait = DOWNLOAD_BACKOFF_SECONDS * 2 ** (row.attempts - 1)
    detail = f"download try {row.attempts} of {DOWNLOAD_TRIES}: {problem}; next in {wait:g} s"[:TEXT_LENGTH]
    current_app.logger.warning("webhook event %s: %s; trying again in %g s", row.id, problem, wait)
    session = bound().db.session
    session.rollback()  # what was read above ends here: the write is its transaction's first statement (`_hold`)
    with write_turn():
        row.claimed_until, row.detail = utcnow() + timedelta(seconds=wait), detail
        session.commit()
    return EventOutcome.RECEIVED


def _event_of(row: WebhookEventColumns) -> tuple[TerraEvent | None, Exception | None]:
    """The row's event, an s3_payload's downloaded, and what the delivery said beside its body, for
    the host to order data by; or why there is none (a failure like any other, kept on the row)."""
    try:
        event = parse_event(row.body.encode("utf-8"))
        if event.type == PING_TYPE:
            event = _downloaded(row, event)
        return replace(event, ordering_timestamp=row.ordering_timestamp, received_at=row.received_at), None
    except Exception as error:  # noqa: BLE001 (kept on the row by _apply_or_fail)
        return None, error


def _apply_or_fail(row: WebhookEventColumns, event: TerraEvent | None, problem: Exception | None) -> Outcome:
    """What applying the event came to: its outcome, or the failure that stopped it (kept on the row)."""
    try:
        if problem is not None:
            raise problem
        return _apply_with_retries(event)
    except Exception as error:  # noqa: BLE001 (kept on the row; see apply_recorded)
        return _failure(row, error)


def _hold(ids: list[int]) -> None:
    """Renew the claims of the rows `ids` (`applier`) as the first statement of the transaction that
    applies them. The lease then runs from now, and on SQLite that transaction holds the write lock from its start:
    one that read first could not take it once another connection had committed since ("database is
    locked" at once, without waiting)."""
    integration = bound()
    model = integration.host.webhook_event_model
    integration.db.session.execute(
        update(model)
        .where(model.id.in_(ids))
        .values(claimed_until=utcnow() + timedelta(seconds=current_app.config["WEBHOOK_CLAIM_LEASE_SECONDS"]))
        .execution_options(synchronize_session=False)
    )


def _downloaded(row: WebhookEventColumns, ping: TerraEvent) -> TerraEvent:
    """The data event an `s3_payload` points at, fetched (payloads.py: a checked address, a total
    deadline shorter than the claim's lease, a size limit) and parsed as if it had arrived inline.
    The row's claim is renewed and committed first: no transaction stays open, and no write turn is
    held, across the download, and the lease outlasts it."""
    with write_turn():
        _hold([row.id])
        bound().db.session.commit()
    if not ping.download_url:
        raise EventParseError("s3_payload without a url")
    config = current_app.config
    event = parse_event(
        download_payload(
            ping.download_url,
            deadline=config["TERRA_PAYLOAD_TIMEOUT_SECONDS"],
            max_bytes=config["TERRA_PAYLOAD_MAX_BYTES"],
            allow_loopback=config["TERRA_PAYLOAD_ALLOW_LOOPBACK"],
        )
    )
    if event.type == PING_TYPE:
        raise EventParseError("an s3_payload must not point at another s3_payload")
    return event


def _apply_with_retries(event: TerraEvent) -> Outcome:
    session = bound().db.session
    for attempt_number in itertools.count(1):
        try:
            with session.begin_nested():
                return apply_event(event)
        except RACE_ERRORS:
            if attempt_number == APPLY_TRIES:
                raise
            # Rolling back a savepoint expires only what it changed; rows it merely read must be
            # read again too, or the next try would act on what the winner has since changed.
            session.expire_all()
            time.sleep(0.01 * attempt_number)


def apply_event(event: TerraEvent) -> Outcome:
    """What `event` does, through the host: an account event to the owner of its reference_id, a data
    or informational event as it is."""
    host = bound().host
    if event.type in DATA_TYPES or event.type in INFORMATIONAL_TYPES:
        if event.terra_user_id is None and event.type not in USERLESS_TYPES:
            return _without_user(event)
        return host.apply_data_event(event)
    if event.kind not in ACCOUNT_EVENT_KINDS:
        # Terra adds event types over time: kept for the record, never an error (forward compatible).
        return EventOutcome.RECORDED, f"unknown event type {event.type!r}"
    if event.terra_user_id is None and event.kind != AUTH_FAILURE:  # only a failed auth has no user
        return _without_user(event)
    owner = owner_of(event.reference_id)
    if owner is None:
        return EventOutcome.IGNORED, "reference_id is not one of ours"
    return host.apply_account_event(owner, event)


def _without_user(event: TerraEvent) -> Outcome:
    """A verified event that should name a Terra user and does not: kept as failed, for a replay."""
    return EventOutcome.FAILED, f"{event.type} event without a user"


def _failure(row: WebhookEventColumns, error: Exception) -> Outcome:
    current_app.logger.error("applying webhook event %s failed: %s", row.id, type(error).__name__, exc_info=error)
    return EventOutcome.FAILED, f"{type(error).__name__}: {error}"
