"""History asked of Terra for a connection (terra_integration/data_requests.py), for the dashboard's
button and the API's `POST /connections/<id>/data-requests`.

One request is one row (models/data_request.py) and one Terra call per data type. Where it stands is
stored, so that the page and the API can say it: `sent` once Terra accepted every type; `throttled`
when Terra's hourly budget ran out (429, rule r2), with `retry_at` from Terra's Retry-After, after
which `flask terra send-data-requests` (run it every minute) asks for the types still missing;
`failed` when Terra refused or could not be asked (a person asks again). A request over Terra's span
is refused before Terra is asked (the caller's 400), not split: one button, one span.

Asking twice for the same days duplicates nothing: the data arrives as data events, stored by their
natural keys (services/data_events.py).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from extensions import db
from models import Connection, ConnectionStatus, DataRequest, DataRequestStatus
from models.time import utcnow
from terra_integration.client import TerraClient, TerraError
from terra_integration.data_requests import (
    HISTORY_TYPES,
    MAX_SPAN_DAYS,
    DataRequestThrottled,
    request_history,
)


class InvalidDataRequest(ValueError):
    """The days or types asked for are not ones Terra can be asked for; the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_request(days: object, types: object) -> tuple[int, list[str]]:
    """(days, types) from what a caller sent, or InvalidDataRequest saying what is wrong."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InvalidDataRequest("invalid_request", "days must be a whole number of days, at least 1")
    if days > MAX_SPAN_DAYS:
        raise InvalidDataRequest(
            "span_too_long",
            f"Terra sends at most {MAX_SPAN_DAYS} days of history per request (its rule r1); ask for fewer days",
        )
    if types is None:
        return days, list(HISTORY_TYPES)
    if (
        not isinstance(types, list)
        or not types
        or not all(isinstance(kind, str) and kind in HISTORY_TYPES for kind in types)
    ):
        raise InvalidDataRequest("invalid_request", "types must be a non-empty list of: " + ", ".join(HISTORY_TYPES))
    return days, [kind for kind in HISTORY_TYPES if kind in types]  # each once, in Terra's order


def ask_for_history(connection: Connection, days: int, types: list[str], client: TerraClient) -> DataRequest:
    """Record a request for the last `days` days of `types` (today included) and send it to Terra."""
    if connection.status == ConnectionStatus.REVOKED:
        raise InvalidDataRequest("connection_revoked", "this connection has ended: Terra sends none of its data")
    end = utcnow().date() + timedelta(days=1)
    request = DataRequest(
        connection_id=connection.id, start_date=end - timedelta(days=days), end_date=end, types=",".join(types)
    )
    db.session.add(request)
    db.session.commit()
    return send(request, client)


def send(request: DataRequest, client: TerraClient) -> DataRequest:
    """Ask Terra for the request's types not yet accepted, in order, until Terra throttles or refuses."""
    connection = db.session.get(Connection, request.connection_id)
    request.status, request.retry_at, request.detail, request.terra_status = DataRequestStatus.PENDING, None, None, None
    if connection.status == ConnectionStatus.REVOKED:  # ended while the request waited: Terra sends nothing
        request.status, request.detail = DataRequestStatus.FAILED, "the connection ended before Terra was asked"
        db.session.commit()
        return request
    for kind in request.type_list:
        if kind in request.sent_list:
            continue
        try:
            request_history(
                client,
                user_id=connection.terra_user_id,
                data_type=kind,
                start_date=request.start_date,
                end_date=request.end_date,
            )
        except DataRequestThrottled as error:
            request.status = DataRequestStatus.THROTTLED
            request.retry_at = utcnow() + timedelta(seconds=error.retry_after)
            request.detail = f"Terra's hourly limit of requested days is reached; {kind} onwards waits ({error})"[:255]
            break
        except TerraError as error:
            request.status, request.terra_status = DataRequestStatus.FAILED, error.status
            request.detail = f"Terra did not take the {kind} request: {error}"[:255]
            break
        request.sent_types = ",".join([*request.sent_list, kind])
        db.session.commit()  # each accepted type at once: a crash later must not ask for it again
    else:
        request.status = DataRequestStatus.SENT
    db.session.commit()
    return request


def send_due(client: TerraClient) -> list[DataRequest]:
    """Ask Terra again for every throttled request whose Retry-After has passed; the requests, after."""
    due = db.session.scalars(
        select(DataRequest)
        .where(DataRequest.status == DataRequestStatus.THROTTLED, DataRequest.retry_at <= utcnow())
        .order_by(DataRequest.retry_at)
    ).all()
    sent = []
    for request in due:
        # Claimed first, so that two workers running the command never ask Terra twice for one request.
        claimed = db.session.execute(
            update(DataRequest)
            .where(DataRequest.id == request.id, DataRequest.status == DataRequestStatus.THROTTLED)
            .values(status=DataRequestStatus.PENDING)
        ).rowcount
        db.session.commit()
        if claimed:
            db.session.refresh(request)
            sent.append(send(request, client))
    return sent


def latest(connection: Connection) -> DataRequest | None:
    return db.session.scalars(
        select(DataRequest).where(DataRequest.connection_id == connection.id).order_by(DataRequest.id.desc())
    ).first()
