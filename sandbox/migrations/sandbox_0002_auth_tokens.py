"""the sandbox's generateAuthToken tokens for the mobile SDK's initConnection (single use, short-lived,
bound to a dev-id)

Revision ID: sandbox_0002
Revises: sandbox_0001
Create Date: 2026-12-06 09:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "sandbox_0002"
down_revision = "sandbox_0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "sandbox_auth_tokens",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("dev_id", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_sandbox_auth_tokens")),
    )
    op.create_index(op.f("ix_sandbox_auth_tokens_created_at"), "sandbox_auth_tokens", ["created_at"], unique=False)


def downgrade():
    op.drop_index(op.f("ix_sandbox_auth_tokens_created_at"), table_name="sandbox_auth_tokens")
    op.drop_table("sandbox_auth_tokens")
