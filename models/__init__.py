"""The app's tables. Importing this package registers every model with SQLAlchemy."""

from models.api_token import ApiToken
from models.connect_attempt import AttemptStatus, ConnectAttempt
from models.connection import Connection, ConnectionStatus, ReplacedTerraUser
from models.user import User
from models.webhook_event import WebhookEvent

__all__ = [
    "ApiToken",
    "AttemptStatus",
    "ConnectAttempt",
    "Connection",
    "ConnectionStatus",
    "ReplacedTerraUser",
    "User",
    "WebhookEvent",
]
