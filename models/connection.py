import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from models.time import utcnow


class ConnectionStatus(enum.StrEnum):
    ACTIVE = "active"
    DEGRADED = "degraded"  # connection_error: the provider rejected Terra's token; reconnect
    REVOKED = "revoked"  # deauth, access_revoked, or disconnected from the app


class Connection(db.Model):
    """One Terra user: a provider account linked to one of our users."""

    __tablename__ = "connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # Unique: whatever order and however often events arrive, one row per Terra user.
    terra_user_id: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ConnectionStatus.ACTIVE)
    scopes: Mapped[str] = mapped_column(Text, default="")
    # X-Terra-Ordering-Timestamp (unix ms) of the event whose scope set `scopes` holds; null when
    # none said (services.connections.take_scopes).
    scopes_ordering_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    status_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_event_at: Mapped[datetime | None]
    # When the newest data event (daily, activity, sleep, body, athlete...) for it was received.
    last_data_at: Mapped[datetime | None]

    @property
    def scope_list(self) -> list[str]:
        return [scope for scope in self.scopes.split(",") if scope]

    def to_dict(self) -> dict:
        from models.time import isoformat

        return {
            "id": self.id,
            "terra_user_id": self.terra_user_id,
            "provider": self.provider,
            "status": self.status,
            "status_reason": self.status_reason,
            "scopes": self.scope_list,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }


class ReplacedTerraUser(db.Model):
    """A Terra user id that a user_reauth replaced. Events still naming it are stale: a late or
    replayed `auth` for it must not bring back a second connection."""

    __tablename__ = "replaced_terra_users"

    old_terra_user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"), index=True)
    replaced_at: Mapped[datetime] = mapped_column(default=utcnow)
