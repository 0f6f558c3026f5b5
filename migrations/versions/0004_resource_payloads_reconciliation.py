"""the provider a return redirect named, kept on the connect attempt; the sandbox's ping-mode
payloads; when a user's connections were last reconciled

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("connect_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resource", sa.String(length=64), nullable=True))
    op.create_table(
        "sandbox_payloads",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_payloads")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("connections_reconciled_at", sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("connections_reconciled_at")
    op.drop_table("sandbox_payloads")
    with op.batch_alter_table("connect_attempts", schema=None) as batch_op:
        batch_op.drop_column("resource")
