from extensions import db
from terra_integration.models import WebhookEventColumns


class WebhookEvent(WebhookEventColumns, db.Model):
    """The webhook inbox (terra_integration.inbox), declared in the app's tables and migrations."""

    __tablename__ = "webhook_events"
