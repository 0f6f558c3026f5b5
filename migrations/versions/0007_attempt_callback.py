"""connect attempts: the callback the app's in-app browser catches (`scheme` or `https`)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 10:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable: web attempts have none, and attempts made before it fall back to MOBILE_CALLBACK.
    with op.batch_alter_table("connect_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback", sa.String(length=8), nullable=True))


def downgrade():
    with op.batch_alter_table("connect_attempts", schema=None) as batch_op:
        batch_op.drop_column("callback")
