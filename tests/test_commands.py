"""Operator commands: list and replay the webhook inbox."""

from sqlalchemy import select

from extensions import db
from models import Connection, WebhookEvent
from tests.helpers import auth_event, create_user, deliver, terra_user


def test_list_and_replay_failed_events(app, client):
    with app.app_context():
        user = create_user()
        deliver(
            client,
            auth_event(user, terra_user(user, "tu-1")),
            secret=app.config["TERRA_SIGNING_SECRET"],
            trace_id="trace-replay",
        )
        # Pretend applying failed the first time (say the database was briefly down) and the row was lost.
        db.session.execute(WebhookEvent.__table__.update().values(outcome="failed", detail="OperationalError: down"))
        db.session.execute(Connection.__table__.delete())
        db.session.commit()

    runner = app.test_cli_runner()
    listed = runner.invoke(args=["webhooks", "list", "--failed"])
    assert listed.exit_code == 0 and "trace-replay" in listed.output and "OperationalError" in listed.output

    replayed = runner.invoke(args=["webhooks", "replay", "--failed"])
    assert replayed.exit_code == 0 and "trace-replay: applied" in replayed.output
    with app.app_context():
        assert db.session.scalars(select(Connection.terra_user_id)).all() == ["tu-1"]
        assert db.session.scalars(select(WebhookEvent.outcome)).one() == "applied"
    assert "trace-replay" not in runner.invoke(args=["webhooks", "list", "--failed"]).output


def test_replay_needs_a_selection(app):
    result = app.test_cli_runner().invoke(args=["webhooks", "replay"])
    assert result.exit_code != 0 and "name trace ids or pass --failed" in result.output
