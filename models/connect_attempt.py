import enum
import re
import secrets
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from extensions import db
from models.connection import Connection
from models.time import isoformat, utcnow


class AttemptStatus(enum.StrEnum):
    PENDING = "pending"
    CONNECTED = "connected"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # Terra's widget handed the user back with no Terra user: the provider (Apple Health, Samsung
    # Health, Health Connect) is connected through Terra's mobile SDK, in the app, not on the web.
    SDK_REQUIRED = "sdk_required"


class AttemptHint(enum.StrEnum):
    """What the browser told us. Advisory only: a hint never decides an outcome."""

    RETURNED_SUCCESS = "returned_success"
    RETURNED_FAILURE = "returned_failure"
    BROWSER_CLOSED = "browser_closed"


# What a person reads for each failure reason; an unknown one (Terra may add some) is shown as words,
# "invalid_credentials" as "Invalid credentials.", never as a code.
REASON_TEXT = {
    "access_denied": "You declined the permissions the app asked for.",
    "auth_cancelled": "The connection was cancelled before it finished.",
    "auth_failed": "The provider did not complete the connection.",
    "browser_closed": "The browser was closed before the connection finished.",
    "returned_failure": "The connection was not completed.",
    "user_limit_reached": "This Terra test environment has reached its limit of 50 users.",
    "session_expired": "The connection link expired before it was used.",
    "session_used": "That connection link was already used.",
    "terra_unavailable": "Terra could not be reached. Please try again in a moment.",
    "terra_rejected": "Terra refused the request; the app's Terra settings need checking.",
    "terra_error": "Terra gave an answer the app could not use.",
    "legacy_widget_endpoint_gone": "This Terra account cannot use the legacy widget endpoint.",
    # Why a connection ended (Connection.status_reason).
    "relinked_elsewhere": "This provider account was connected to another account of this app, so it was "
    "disconnected here.",
    "disconnected": "You disconnected it.",
    "deauth": "It was disconnected at Terra.",
    "access_revoked": "Access was withdrawn in the provider's own settings.",
    "not_at_terra": "Terra no longer has this connection.",
}


def reason_text(reason: str | None) -> str:
    if not reason:
        return ""
    return REASON_TEXT.get(reason) or reason.replace("_", " ").strip().capitalize() + "."


def new_attempt_id() -> str:
    return secrets.token_urlsafe(16)  # 128 bits


ATTEMPT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # what new_attempt_id makes (match whole values: fullmatch)


class ConnectAttempt(db.Model):
    """One press of "connect": what the status page and the mobile status endpoint report."""

    __tablename__ = "connect_attempts"
    __table_args__ = (Index("ix_connect_attempts_user_status", "user_id", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_attempt_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8), default="web")  # web | mobile
    # Terra's widget session id (or the authenticateUser flow's user id): how webhooks find us.
    terra_session_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    widget_url: Mapped[str | None] = mapped_column(String(2048))
    requested_provider: Mapped[str | None] = mapped_column(String(64))
    # The provider Terra's redirect named (`resource`); a hint, like the user id it claimed.
    resource: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=AttemptStatus.PENDING)
    hint: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(String(255))
    # The Terra user id a redirect claimed; checked server-side before it is believed.
    redirect_terra_user_id: Mapped[str | None] = mapped_column(String(64))
    hinted_at: Mapped[datetime | None]
    # Mobile: where Terra sends the browser back ("page": our HTTPS return page, "app": the deep link).
    return_mode: Mapped[str | None] = mapped_column(String(8))
    # Mobile: the link the app's in-app browser catches ("scheme" or "https"), as the app said.
    callback: Mapped[str | None] = mapped_column(String(8))
    # The app said its in-app browser closed; without a verified outcome soon after, it is cancelled.
    browser_closed_at: Mapped[datetime | None]
    connection_id: Mapped[int | None] = mapped_column(ForeignKey("connections.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    connection: Mapped[Connection | None] = relationship()

    @property
    def terminal(self) -> bool:
        return self.status != AttemptStatus.PENDING

    def to_dict(self) -> dict:
        return attempt_dict(self, self.connection)


def attempt_dict(attempt, connection: Connection | None) -> dict:
    """The JSON of an attempt: of the model, or of a row with the same columns (the status fast path)."""
    return {
        "attempt_id": attempt.id,
        "status": attempt.status,
        "terminal": attempt.status != AttemptStatus.PENDING,
        "hint": attempt.hint,
        "provider": connection.provider if connection else (attempt.resource or attempt.requested_provider),
        "resource": attempt.resource,
        "connection": connection.to_dict() if connection else None,
        "error": {"code": attempt.error, "message": reason_text(attempt.error)} if attempt.error else None,
        "version": attempt.version,
        "created_at": isoformat(attempt.created_at),
        "updated_at": isoformat(attempt.updated_at),
        "expires_at": isoformat(attempt.expires_at),
    }
