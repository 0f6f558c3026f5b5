"""webhook events: unique SHA-256 of the signed payload, so a replayed delivery is a duplicate

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signed_payload_sha256", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_webhook_events_signed_payload_sha256"), ["signed_payload_sha256"]
        )


def downgrade():
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_webhook_events_signed_payload_sha256"), type_="unique")
        batch_op.drop_column("signed_payload_sha256")
