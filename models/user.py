from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from models.time import utcnow


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # Opaque and signed (terra_integration.reference_ids); it is what Terra echoes back in every event.
    reference_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Copied into the session cookie at login and compared on every request; raising it ends every
    # web session of the user at once, including copies of the cookie (blueprints/auth.py).
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    # When this user's connections were last checked against Terra's userInfo (services.reconciliation).
    connections_reconciled_at: Mapped[datetime | None]
