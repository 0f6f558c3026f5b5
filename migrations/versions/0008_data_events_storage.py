"""data events: the small summary kept per connection (daily by day, activities and sleep by
summary_id, each with the ordering timestamp that wrote it), the inbox's ordering timestamp, and
when a connection's data last arrived

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 13:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _data_table(name: str, *columns: sa.Column, key: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=False),
        *columns,
        sa.Column("ordering_timestamp", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"], ["connections.id"], name=op.f(f"fk_{name}_connection_id_connections"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sa.UniqueConstraint("connection_id", key, name=op.f(f"uq_{name}_connection_id")),
    )


def upgrade():
    _data_table(
        "daily_data",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("distance_meters", sa.Double(), nullable=True),
        sa.Column("calories", sa.Double(), nullable=True),
        key="day",
    )
    for name, measure in (("activities", "activity_type"), ("sleep_sessions", "asleep_seconds")):
        _data_table(
            name,
            sa.Column("summary_id", sa.String(length=128), nullable=False),
            sa.Column("start_time", sa.DateTime(), nullable=True),
            sa.Column("end_time", sa.DateTime(), nullable=True),
            sa.Column(measure, sa.Integer(), nullable=True),
            key="summary_id",
        )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ordering_timestamp", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_data_at", sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_column("last_data_at")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_column("ordering_timestamp")
    for name in ("sleep_sessions", "activities", "daily_data"):
        op.drop_table(name)
