"""connections: the X-Terra-Ordering-Timestamp of the event whose scope set is stored, so that an
older event (replayed, reordered) never overwrites the set a newer one stated

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scopes_ordering_timestamp", sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_column("scopes_ordering_timestamp")
