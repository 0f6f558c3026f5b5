"""The sandbox's own tables: the widget flows and mobile SDK tokens it hands out, and the Terra users it
has created.

Import-safe on purpose (no app, no request): the app imports this module at start-up so that
migrations include these tables even though the sandbox blueprint is only mounted without credentials.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from models.time import utcnow


class FlowKind(enum.StrEnum):
    WIDGET = "widget"  # from a widget session endpoint: the user picks a provider
    AUTHENTICATE = "authenticate"  # from authenticateUser: one provider, user id known in advance


class SessionState(enum.StrEnum):
    OPEN = "open"
    USED = "used"


def new_uuid() -> str:
    return str(uuid.uuid4())


def terra_timestamp(moment: datetime | None) -> str | None:
    """Terra's timestamp style: `2026-07-01T09:12:33.891000+00:00`."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC).isoformat(timespec="microseconds")


def split_csv(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]


class SandboxSession(db.Model):
    """One widget session or authenticateUser flow. Single use: deciding makes it `used`."""

    __tablename__ = "sandbox_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    kind: Mapped[str] = mapped_column(String(16))
    reference_id: Mapped[str | None] = mapped_column(String(255))
    success_url: Mapped[str | None] = mapped_column(String(2048))
    failure_url: Mapped[str | None] = mapped_column(String(2048))
    # Comma-separated provider codes; NULL means every enabled provider (Terra's dashboard selection).
    providers: Mapped[str | None] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(35), default="en")
    # authenticateUser returns the id of the user "being created" before the user logs in.
    user_id: Mapped[str | None] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(8), default=SessionState.OPEN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime]

    @property
    def provider_codes(self) -> list[str]:
        return split_csv(self.providers)

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.expires_at


class SandboxAuthToken(db.Model):
    """A token from generateAuthToken for the mobile SDK's initConnection: single use, short-lived,
    bound to the dev-id that asked for it. Kept as its SHA-256 only, as a careful service would."""

    __tablename__ = "sandbox_auth_tokens"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    dev_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(8), default=SessionState.OPEN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime]

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.expires_at


class SandboxPayload(db.Model):
    """A data event held for a ping-mode (`s3_payload`) delivery: what Terra puts in its S3 bucket."""

    __tablename__ = "sandbox_payloads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    body: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime]


class SandboxUser(db.Model):
    """A Terra user: one provider account connected under one reference_id."""

    __tablename__ = "sandbox_users"
    # Re-auth matching looks users up by exactly these columns.
    __table_args__ = (Index("ix_sandbox_users_identity", "provider", "account", "reference_id"),)

    user_id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    provider: Mapped[str] = mapped_column(String(32))
    # The fake provider account name typed on the login page: it decides identity.
    account: Mapped[str] = mapped_column(String(100))
    reference_id: Mapped[str | None] = mapped_column(String(255), index=True)
    scopes: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_webhook_update: Mapped[datetime | None]

    @property
    def scope_list(self) -> list[str]:
        return split_csv(self.scopes)

    def to_terra(self) -> dict:
        """The TerraUser object used in REST answers and webhook events."""
        return {
            "user_id": self.user_id,
            "provider": self.provider,
            "created_at": terra_timestamp(self.created_at),
            "last_webhook_update": terra_timestamp(self.last_webhook_update),
            "scopes": self.scopes,
            "reference_id": self.reference_id,
            "active": self.active,
        }
