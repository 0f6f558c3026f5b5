"""PostgreSQL: every change to a connect attempt is announced with NOTIFY connect_attempt_changed
(its id), so each worker's copy of the attempts' poll state stays current (services/attempt_states.py).
A trigger rather than the app's writers: no writer, present or future, in any process, can forget it.
Nothing on SQLite, which has no such channel.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 13:00:00

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    # AFTER ... FOR EACH ROW: sent at commit, never for a rolled-back change; one transaction's
    # repeats of the same id are sent once.
    op.execute(
        """
        CREATE FUNCTION notify_connect_attempt_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('connect_attempt_changed', COALESCE(NEW.id, OLD.id));
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER connect_attempt_changed AFTER UPDATE OR DELETE ON connect_attempts
        FOR EACH ROW EXECUTE FUNCTION notify_connect_attempt_changed()
        """
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER connect_attempt_changed ON connect_attempts")
    op.execute("DROP FUNCTION notify_connect_attempt_changed()")
