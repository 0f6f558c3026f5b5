"""A whole host app in one file: what docs/copy-into-your-app.md asks of an app around the copied
terra_integration/ folder. tests/test_terra_integration.py copies both into an empty folder and runs it:
`python tiny_host.py PORT`, settings from FLASK_* environment variables (Flask's from_prefixed_env), the
ones `flask --app app sandbox serve` prints.
"""

from __future__ import annotations

import sys

from flask import Flask, jsonify, redirect, url_for
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from terra_integration.events import AUTH_SUCCESS, TerraEvent
from terra_integration.extension import TerraIntegration
from terra_integration.host import Outcome
from terra_integration.models import USER_ID_LENGTH, EventOutcome, WebhookEventColumns
from terra_integration.reference_ids import new_reference_id


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
terra = TerraIntegration()


class Member(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    reference_id: Mapped[str] = mapped_column(String(64), unique=True, default=new_reference_id)
    terra_user_id: Mapped[str | None] = mapped_column(String(USER_ID_LENGTH))


class WebhookEvent(WebhookEventColumns, db.Model):
    __tablename__ = "webhook_events"


class MemberEvents:
    """The host interface (terra_integration.host.TerraHost): a member has at most one device."""

    webhook_event_model = WebhookEvent

    def find_owner(self, reference_id: str) -> Member | None:
        return db.session.scalars(select(Member).where(Member.reference_id == reference_id)).first()

    def apply_account_event(self, owner: Member, event: TerraEvent) -> Outcome:
        if event.kind == AUTH_SUCCESS:
            owner.terra_user_id = event.terra_user_id
            return EventOutcome.APPLIED, "linked"
        if event.kind == "deauth" and owner.terra_user_id == event.terra_user_id:
            owner.terra_user_id = None
            return EventOutcome.APPLIED, "unlinked"
        return EventOutcome.IGNORED, None

    def apply_data_event(self, event: TerraEvent) -> Outcome:
        return EventOutcome.RECORDED, None


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env()
    db.init_app(app)
    terra.init_app(app, host=MemberEvents())
    with app.app_context():
        db.create_all()  # a real app adds a migration instead

    @app.get("/healthz")
    def health():
        return jsonify(status="ok")

    @app.post("/members")
    def add_member():
        member = Member()
        db.session.add(member)
        db.session.commit()
        return jsonify(id=member.id, reference_id=member.reference_id), 201

    @app.post("/members/<int:member_id>/connect")
    def connect(member_id: int):
        member = db.get_or_404(Member, member_id)
        # docs/copy-into-your-app.md, "Trying your copy against the sandbox", as written there:
        session = terra.client.create_widget_session(
            reference_id=member.reference_id,
            success_url=url_for("connected", _external=True),
            failure_url=url_for("not_connected", _external=True),
        )
        return redirect(session.url)

    @app.get("/connected")
    def connected():
        return "Connected: the device is linked once Terra's signed webhook arrives."

    @app.get("/not-connected")
    def not_connected():
        return "Not connected."

    @app.get("/members/<int:member_id>")
    def show_member(member_id: int):
        return jsonify(terra_user_id=db.get_or_404(Member, member_id).terra_user_id)

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(sys.argv[1]))
