"""Call outcomes on their way to the CRM: the durable outbox and its sync worker."""

from .history import OutboxCallHistory
from .settings import OutboxSettings, OutcomeSettings, default_outbox_path
from .store import Outbox, OutboxError, OutboxState
from .worker import FlushSummary, SyncWorker

__all__ = [
    "FlushSummary",
    "Outbox",
    "OutboxCallHistory",
    "OutboxError",
    "OutboxSettings",
    "OutboxState",
    "OutcomeSettings",
    "SyncWorker",
    "default_outbox_path",
]
