"""webhook events are applied in the background: each pending row is a job with a claim (attempts,
claimed_until), found through partial indexes over the pending rows

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 13:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PENDING = sa.text("outcome = 'received'")


def upgrade():
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_webhook_events_pending", "webhook_events", ["id"], sqlite_where=PENDING, postgresql_where=PENDING
    )
    op.create_index(
        "ix_webhook_events_pending_user",
        "webhook_events",
        ["reference_id", "id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade():
    op.drop_index("ix_webhook_events_pending_user", table_name="webhook_events")
    op.drop_index("ix_webhook_events_pending", table_name="webhook_events")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("attempts")
