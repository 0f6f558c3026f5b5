"""The app's tables. Importing this package registers every model with SQLAlchemy."""

from models.api_token import ApiToken
from models.connect_attempt import AttemptStatus, ConnectAttempt
from models.connection import Connection, ConnectionStatus, ReplacedTerraUser
from models.data_request import DataRequest, DataRequestStatus
from models.health_data import Activity, DailyData, SleepSession
from models.user import User
from models.webhook_event import WebhookEvent

__all__ = [
    "Activity",
    "ApiToken",
    "AttemptStatus",
    "ConnectAttempt",
    "Connection",
    "ConnectionStatus",
    "DailyData",
    "DataRequest",
    "DataRequestStatus",
    "ReplacedTerraUser",
    "SleepSession",
    "User",
    "WebhookEvent",
]
