import enum
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


class AttemptHint(enum.StrEnum):
    """What the browser told us. Advisory only: a hint never decides an outcome."""

    RETURNED_SUCCESS = "returned_success"
    RETURNED_FAILURE = "returned_failure"
    BROWSER_CLOSED = "browser_closed"


def new_attempt_id() -> str:
    return secrets.token_urlsafe(16)  # 128 bits


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
    status: Mapped[str] = mapped_column(String(16), default=AttemptStatus.PENDING)
    hint: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(String(255))
    # The Terra user id a redirect claimed; checked server-side before it is believed.
    redirect_terra_user_id: Mapped[str | None] = mapped_column(String(64))
    hinted_at: Mapped[datetime | None]
    connection_id: Mapped[int | None] = mapped_column(
        ForeignKey("connections.id", ondelete="SET NULL")
    )
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    connection: Mapped[Connection | None] = relationship()

    @property
    def terminal(self) -> bool:
        return self.status != AttemptStatus.PENDING

    def to_dict(self) -> dict:
        connection = self.connection
        return {
            "attempt_id": self.id,
            "status": self.status,
            "terminal": self.terminal,
            "hint": self.hint,
            "provider": connection.provider if connection else self.requested_provider,
            "connection": connection.to_dict() if connection else None,
            "error": self.error,
            "version": self.version,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "expires_at": isoformat(self.expires_at),
        }
