"""the sandbox's tables leave the app's history: from here on the sandbox's own migration branch
(sandbox/migrations, branch label `sandbox`) creates them, so an app without the sandbox has none

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 10:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = ("app",)  # the app's own history: `flask db migrate --head app@head`
depends_on = None

SANDBOX_TABLES = ("sandbox_payloads", "sandbox_users", "sandbox_sessions")


def upgrade():
    # New and live databases: the tables 0001 and 0004 made are empty, and go. A database the sandbox
    # has used keeps them, rows included; the sandbox's branch, which runs after this one, adopts them.
    connection = op.get_bind()
    if any(connection.execute(sa.text(f"SELECT 1 FROM {name} LIMIT 1")).first() for name in SANDBOX_TABLES):
        return
    for name in SANDBOX_TABLES:
        op.drop_table(name)


def downgrade():
    # 0004 and 0001 drop these tables on the way down: put back, empty, those the sandbox's branch removed.
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
