"""The app's tables. Importing this package registers every model with SQLAlchemy."""

from models.connect_attempt import AttemptStatus, ConnectAttempt
from models.connection import Connection, ConnectionStatus, ReplacedTerraUser
from models.user import User
from models.webhook_event import WebhookEvent

__all__ = [
    "AttemptStatus",
    "ConnectAttempt",
    "Connection",
    "ConnectionStatus",
    "ReplacedTerraUser",
    "User",
    "WebhookEvent",
]
