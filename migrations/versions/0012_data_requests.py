"""data requests: history asked of Terra for a connection, with where each request stands (pending,
sent, throttled until Terra's Retry-After, failed)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:30:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "data_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=False),
        sa.Column("types", sa.String(length=64), nullable=False),
        sa.Column("sent_types", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("retry_at", sa.DateTime(), nullable=True),
        sa.Column("detail", sa.String(length=255), nullable=True),
        sa.Column("terra_status", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_data_requests_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_requests")),
    )
    with op.batch_alter_table("data_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_data_requests_connection_id"), ["connection_id"], unique=False)
        # The retry command's question: which throttled requests are due.
        batch_op.create_index("ix_data_requests_status_retry_at", ["status", "retry_at"], unique=False)


def downgrade():
    op.drop_table("data_requests")
