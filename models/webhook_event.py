import enum
from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from models.time import utcnow


class EventOutcome(enum.StrEnum):
    RECEIVED = "received"  # stored, not yet applied
    APPLIED = "applied"  # changed (or confirmed) our state
    RECORDED = "recorded"  # kept for the record only: data and informational events
    IGNORED = "ignored"  # nothing of ours to change (unknown reference_id, unknown type)
    FAILED = "failed"  # applying raised; `error` says why and the event can be replayed


class WebhookEvent(db.Model):
    """The inbox: every verified delivery, once per trace id, with what applying it did."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: the atomic de-duplication of Terra's at-least-once delivery.
    trace_id: Mapped[str] = mapped_column(String(128), unique=True)
    # Unique too: SHA-256 of the signed payload ("<t>.<body>"), so a captured delivery replayed within
    # the signature's tolerance under a fresh trace id is a duplicate as well. Null on older rows.
    signed_payload_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    terra_user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reference_id: Mapped[str | None] = mapped_column(String(255))
    terra_reference: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16), default=EventOutcome.RECEIVED)
    detail: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]
