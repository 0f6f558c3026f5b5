"""the sandbox's own tables, in its own branch (label `sandbox`) of the app's migrations: widget
flows, Terra users, ping-mode payloads

Revision ID: sandbox_0001
Revises:
Create Date: 2026-12-04 10:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "sandbox_0001"
down_revision = None
branch_labels = ("sandbox",)
# After the app's 0006, which drops the copies its own history made unless the sandbox already used them.
depends_on = "0006"


def upgrade():
    # A database the sandbox used before it had its own branch has these tables: they are adopted as they are.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "sandbox_sessions" not in existing:
        op.create_table(
            "sandbox_sessions",
            sa.Column("id", sa.String(length=36), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("reference_id", sa.String(length=255), nullable=True),
            sa.Column("success_url", sa.String(length=2048), nullable=True),
            sa.Column("failure_url", sa.String(length=2048), nullable=True),
            sa.Column("providers", sa.String(length=512), nullable=True),
            sa.Column("language", sa.String(length=35), nullable=False),
            sa.Column("user_id", sa.String(length=36), nullable=True),
            sa.Column("state", sa.String(length=8), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("expires_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_sessions")),
        )
        op.create_index(op.f("ix_sandbox_sessions_created_at"), "sandbox_sessions", ["created_at"], unique=False)
    if "sandbox_users" not in existing:
        op.create_table(
            "sandbox_users",
            sa.Column("user_id", sa.String(length=36), nullable=False),
            sa.Column("provider", sa.String(length=32), nullable=False),
            sa.Column("account", sa.String(length=100), nullable=False),
            sa.Column("reference_id", sa.String(length=255), nullable=True),
            sa.Column("scopes", sa.Text(), nullable=False),
            sa.Column("active", sa.Boolean(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("last_webhook_update", sa.DateTime(), nullable=True),
            sa.PrimaryKeyConstraint("user_id", name=op.f("pk_sandbox_users")),
        )
        op.create_index(
            "ix_sandbox_users_identity", "sandbox_users", ["provider", "account", "reference_id"], unique=False
        )
        op.create_index(op.f("ix_sandbox_users_reference_id"), "sandbox_users", ["reference_id"], unique=False)
    if "sandbox_payloads" not in existing:
        op.create_table(
            "sandbox_payloads",
            sa.Column("id", sa.String(length=36), nullable=False),
            sa.Column("body", sa.Text(), nullable=False),
            sa.Column("expires_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_payloads")),
        )


def downgrade():
    for name in ("sandbox_payloads", "sandbox_users", "sandbox_sessions"):
        op.drop_table(name)
