"""Data events stored for their connection (models/health_data), by Terra's rules:

- one row per natural key (day; summary_id), written by one atomic upsert, so concurrent and
  repeated deliveries converge without check-then-insert;
- a row is overwritten only by a delivery whose X-Terra-Ordering-Timestamp is newer than or equal to
  the one that wrote it (equal: a redelivery of the same payload, harmless). A delivery without the
  header overwrites only rows that were written without one too;
- every chunk of a large request is its own delivery (its own trace id in the inbox), stored like any
  other: chunks share a terra-reference, never a key.

`store` runs inside the inbox's transaction, whenever the inbox applies the event (at once, in a
background worker, or in a replay), and never commits.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import date

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased
from sqlalchemy.sql.dml import Insert

from extensions import db
from models import Activity, Connection, DailyData, SleepSession
from models.time import utcnow
from terra_integration.data import ActivityItem, DailyItem, Item, SleepItem, read_items
from terra_integration.events import TerraEvent
from terra_integration.host import Outcome
from terra_integration.models import EventOutcome

# Each kind of item: its table and the column(s) besides connection_id that key it.
TABLES = {
    DailyItem: (DailyData, "day"),
    ActivityItem: (Activity, "summary_id"),
    SleepItem: (SleepSession, "summary_id"),
}


def store(connection: Connection, event: TerraEvent) -> Outcome:
    """Store what `event` (a data event for `connection`) carries; note when data last arrived.

    Outcome: applied when rows were written, recorded when there was nothing to keep (an empty chunk,
    a type the app does not keep, the `athlete` profile), failed when an item could not be read (the
    readable ones are stored; a replay after a fix stores the rest).
    """
    if event.data != []:  # an empty chunk brings no data, and writes nothing
        received = event.received_at or utcnow()
        if connection.last_data_at is None or connection.last_data_at < received:
            connection.last_data_at = received
    read = read_items(event)
    written = sum(_upsert(connection.id, item, event.ordering_timestamp) for item in read.items)
    kept_older = len(read.items) - written
    notes = [f"stored {written} {event.type} item(s)"] if read.items else []
    if kept_older:
        notes.append(f"{kept_older} older than what is stored, not applied")
    if read.problems:
        return EventOutcome.FAILED, "; ".join([*notes, *read.problems])
    if not read.items:
        return EventOutcome.RECORDED, None
    return EventOutcome.APPLIED, "; ".join(notes)


def carries_items(event: TerraEvent) -> bool:
    """Whether `event` has items to store (or that cannot be read, which is worth keeping too)."""
    read = read_items(event)
    return bool(read.items or read.problems)


def _upsert(connection_id: int, item: Item, ordering_timestamp: int | None) -> bool:
    """Insert or overwrite the row for `item`'s key; False when the stored row is newer (kept)."""
    values = {**vars(item), "connection_id": connection_id, "ordering_timestamp": ordering_timestamp}
    values["updated_at"] = utcnow()
    statement = _upsert_statement(db.session.get_bind().dialect.name, type(item))
    return db.session.execute(statement, values).first() is not None


@functools.cache
def _upsert_statement(dialect_name: str, item_type: type[Item]) -> Insert:
    """The upsert of one kind of item, built once per database kind: building it (its `excluded`
    columns most of all) cost more than running it, on every item. On the table, not the model:
    the ORM's bulk-insert path adds nothing here and costs a third as much again."""
    model, key = TABLES[item_type]
    columns = [field.name for field in dataclasses.fields(item_type)] + ["ordering_timestamp", "updated_at"]
    statement = (postgresql if dialect_name == "postgresql" else sqlite).insert(model.__table__)
    stored = model.__table__.c.ordering_timestamp
    return statement.on_conflict_do_update(
        index_elements=["connection_id", key],
        set_={name: statement.excluded[name] for name in columns if name != key},
        # NULL >= x is not true: a delivery without the header does not overwrite one that had it.
        where=or_(stored.is_(None), statement.excluded.ordering_timestamp >= stored),
    ).returning(model.__table__.c.id)


def move_data(source_id: int, target_id: int) -> None:
    """Hand connection `source_id`'s data to `target_id` (a re-authentication merging two rows for
    one provider account). Where both hold a row for one key, the newer by ordering timestamp stays."""
    for model, key in TABLES.values():
        other = aliased(model)
        same_key = getattr(other, key) == getattr(model, key)
        other_newer = func.coalesce(other.ordering_timestamp, -1) >= func.coalesce(model.ordering_timestamp, -1)
        db.session.execute(
            delete(model).where(
                model.connection_id == target_id,
                exists().where(other.connection_id == source_id, same_key, other_newer),
            )
        )
        db.session.execute(
            delete(model).where(
                model.connection_id == source_id, exists().where(other.connection_id == target_id, same_key)
            )
        )
        db.session.execute(update(model).where(model.connection_id == source_id).values(connection_id=target_id))


def latest_day(connection_id: int, up_to: date) -> date | None:
    """The newest day with daily data, no later than `up_to`."""
    return db.session.scalar(
        select(func.max(DailyData.day)).where(DailyData.connection_id == connection_id, DailyData.day <= up_to)
    )


def daily_steps(connection_id: int, first_day: date, last_day: date) -> dict[date, int | None]:
    """{day: steps} of the stored days from `first_day` to `last_day` (steps may be None)."""
    rows = db.session.execute(
        select(DailyData.day, DailyData.steps).where(
            DailyData.connection_id == connection_id, DailyData.day.between(first_day, last_day)
        )
    )
    return dict(rows.all())
