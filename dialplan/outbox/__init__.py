"""Call outcomes on their way to the CRM: the durable outbox and its delivery worker.

Only the settings load with the package (the configuration needs them on every
start); the store and the worker load on first use, so a process that only
routes a call does not pay for them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .settings import OutboxSettings, OutcomeSettings, StoreSettings, default_outbox_path

if TYPE_CHECKING:
    from .history import OutboxCallHistory
    from .interface import OutboxStore, open_store
    from .keeper import OutboxKeeper, Recording
    from .store import Outbox, OutboxError, OutboxState
    from .worker import FlushSummary, DeliveryWorker

_LAZY = {
    "OutboxCallHistory": ".history",
    "OutboxStore": ".interface",
    "open_store": ".interface",
    "OutboxKeeper": ".keeper",
    "Recording": ".keeper",
    "Outbox": ".store",
    "OutboxError": ".store",
    "OutboxState": ".store",
    "FlushSummary": ".worker",
    "DeliveryWorker": ".worker",
}

__all__ = [
    "FlushSummary",
    "Outbox",
    "OutboxCallHistory",
    "OutboxError",
    "OutboxKeeper",
    "OutboxSettings",
    "OutboxState",
    "OutboxStore",
    "OutcomeSettings",
    "Recording",
    "StoreSettings",
    "DeliveryWorker",
    "default_outbox_path",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups find it without coming here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
