"""The webhook inbox's columns, and the longest values the integration hands on.

The host declares the inbox table with its own `db`, so it lives in the host's metadata and migrations:

    class WebhookEvent(WebhookEventColumns, db.Model):
        __tablename__ = "webhook_events"
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Index, String, Text, text
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

# The longest values the integration stores or hands on; longer ones are refused (user ids) or cut. A
# host's own columns for them (a connection's Terra user id and provider, say) must be at least this long.
USER_ID_LENGTH = 64  # Terra user ids (Terra's are UUIDs, 36 characters)
PROVIDER_LENGTH = 64  # provider codes, short upper-case words
TEXT_LENGTH = 255  # reference ids, reasons, session ids, outcome details
TRACE_ID_LENGTH = 128  # the X-Terra-Trace-Id and terra-reference headers
SHA256_HEX_LENGTH = 64
SUMMARY_ID_LENGTH = 128  # an activity's or sleep's metadata.summary_id (Terra's are UUIDs)
EVENT_TYPE_LENGTH = 64


def utcnow() -> datetime:
    # Naive UTC, so SQLite and PostgreSQL compare the timestamps the same way.
    return datetime.now(UTC).replace(tzinfo=None)


class EventOutcome(enum.StrEnum):
    RECEIVED = "received"  # stored, not yet applied: a job for the applier (terra_integration.applier)
    APPLIED = "applied"  # changed (or confirmed) the host's state
    RECORDED = "recorded"  # kept for the record only: data and informational events
    IGNORED = "ignored"  # nothing of the host's to change (unknown reference_id, stale Terra user)
    FAILED = "failed"  # applying raised; `detail` says why and the event can be replayed


PENDING = text(f"outcome = '{EventOutcome.RECEIVED}'")


class WebhookEventColumns:
    """The inbox: every verified delivery, once per trace id and once per signed payload, with what
    applying it did. A row that is still `received` is a job of the applier (`applier`)."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple:
        # Partial indexes over the pending rows only, however long the inbox grows: the applier's
        # oldest-first scan, and its check for an older pending event of the same user (reference_id).
        return (
            Index(f"ix_{cls.__tablename__}_pending", "id", sqlite_where=PENDING, postgresql_where=PENDING),
            Index(
                f"ix_{cls.__tablename__}_pending_user",
                "reference_id",
                "id",
                sqlite_where=PENDING,
                postgresql_where=PENDING,
            ),
        )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: the atomic de-duplication of Terra's at-least-once delivery.
    trace_id: Mapped[str] = mapped_column(String(TRACE_ID_LENGTH), unique=True)
    # Unique too: SHA-256 of the signed payload ("<t>.<body>"), so a captured delivery replayed within
    # the signature's tolerance under a fresh trace id is a duplicate as well. Null on older rows.
    signed_payload_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LENGTH), unique=True)
    event_type: Mapped[str] = mapped_column(String(EVENT_TYPE_LENGTH), index=True)
    terra_user_id: Mapped[str | None] = mapped_column(String(USER_ID_LENGTH), index=True)
    reference_id: Mapped[str | None] = mapped_column(String(TEXT_LENGTH))
    # Shared by every chunk of one large request: never a de-duplication key.
    terra_reference: Mapped[str | None] = mapped_column(String(TRACE_ID_LENGTH))
    # X-Terra-Ordering-Timestamp (unix milliseconds, the same on every retry): applying a data event
    # overwrites stored data only when this is newer or equal. Null when Terra sent none.
    ordering_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16), default=EventOutcome.RECEIVED)
    detail: Mapped[str | None] = mapped_column(String(TEXT_LENGTH))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]
    # The applier's claim: how many times it was taken, and until when the last taker holds it. A
    # taker that died (a crash, kill -9) leaves a lease that runs out, and the row is taken again.
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    claimed_until: Mapped[datetime | None]
