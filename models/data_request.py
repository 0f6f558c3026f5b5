import enum
from datetime import date, datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from models.time import isoformat, utcnow


class DataRequestStatus(enum.StrEnum):
    PENDING = "pending"  # being sent to Terra now
    SENT = "sent"  # Terra accepted every type; the data arrives by webhook
    THROTTLED = "throttled"  # Terra's hourly budget is spent: the rest is asked again at retry_at
    FAILED = "failed"  # Terra refused or could not be asked; `detail` says why


class DataRequest(db.Model):
    """One "send me this connection's history" asked of Terra (services/data_requests.py): which days
    and data types, which types Terra has accepted, and where the request stands."""

    __tablename__ = "data_requests"
    # The retry command's question: which throttled requests are due.
    __table_args__ = (Index("ix_data_requests_status_retry_at", "status", "retry_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"), index=True)
    start_date: Mapped[date]
    end_date: Mapped[date]  # not included, as Terra counts days: end_date − start_date
    types: Mapped[str] = mapped_column(String(64))  # comma-separated, in the order they are asked
    sent_types: Mapped[str] = mapped_column(String(64), default="")  # those Terra accepted
    status: Mapped[str] = mapped_column(String(16), default=DataRequestStatus.PENDING)
    retry_at: Mapped[datetime | None]  # when throttled: Terra's Retry-After from the 429
    detail: Mapped[str | None] = mapped_column(String(255))
    terra_status: Mapped[int | None]  # when failed: Terra's HTTP status if it answered (4xx: it refused)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def type_list(self) -> list[str]:
        return [kind for kind in self.types.split(",") if kind]

    @property
    def sent_list(self) -> list[str]:
        return [kind for kind in self.sent_types.split(",") if kind]

    @property
    def days(self) -> int:
        return (self.end_date - self.start_date).days

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "connection_id": self.connection_id,
            "days": self.days,
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
            "types": self.type_list,
            "sent_types": self.sent_list,
            "status": self.status,
            "retry_at": isoformat(self.retry_at),
            "detail": self.detail,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }
