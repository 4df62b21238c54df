"""Everything that talks to a CRM: numbers, backends, records, writers, plugins.

Knows nothing about channels or dial strings: it answers "who owns this
number?" and writes what happened on the phone. A CRM is added as a
:class:`CrmPlugin` (docs/extending.md): a lookup :class:`CrmBackend`, a
:class:`CrmWriter` for call outcomes, and optionally :class:`CallEvents`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .backend import CrmBackend
from .errors import (
    CrmAuthError,
    CrmBadResponse,
    CrmError,
    CrmrouteError,
    CrmRateLimited,
    CrmTimeout,
    CrmUnavailable,
    DirectoryError,
    DirectoryImportError,
)
from .phone import InvalidNumber, PhoneNumber, normalise
from .records import MODULES, LookupResult, Match, Owner

# Loaded on first use (every process AGI imports this package; few need these).
_LAZY = {
    "CachedBackend": "cache",
    **dict.fromkeys(("CallEnded", "CallEvents", "CallRinging"), "events"),
    **dict.fromkeys(("ENTRY_POINT_GROUP", "CrmPlugin", "OpenContext", "PluginError", "PluginRegistry", "default_plugins"), "plugins"),
    **dict.fromkeys(("Secret", "read_secret"), "secrets"),
    **dict.fromkeys(
        ("ALL_KINDS", "CallEntry", "CrmWriter", "Entry", "LeadEntry", "RecordRef", "TaskEntry", "WriteKind", "WriteResult"), "writer"
    ),
}

if TYPE_CHECKING:
    from .cache import CachedBackend
    from .events import CallEnded, CallEvents, CallRinging
    from .plugins import ENTRY_POINT_GROUP, CrmPlugin, OpenContext, PluginError, PluginRegistry, default_plugins
    from .secrets import Secret, read_secret
    from .writer import ALL_KINDS, CallEntry, CrmWriter, Entry, LeadEntry, RecordRef, TaskEntry, WriteKind, WriteResult

__all__ = [
    "ALL_KINDS",
    "CachedBackend",
    "CallEnded",
    "CallEntry",
    "CallEvents",
    "CallRinging",
    "CrmPlugin",
    "CrmWriter",
    "ENTRY_POINT_GROUP",
    "Entry",
    "LeadEntry",
    "OpenContext",
    "PluginError",
    "PluginRegistry",
    "RecordRef",
    "Secret",
    "TaskEntry",
    "WriteKind",
    "WriteResult",
    "default_plugins",
    "read_secret",
    "CrmBackend",
    "CrmAuthError",
    "CrmBadResponse",
    "CrmError",
    "CrmrouteError",
    "CrmRateLimited",
    "CrmTimeout",
    "CrmUnavailable",
    "DirectoryError",
    "DirectoryImportError",
    "InvalidNumber",
    "PhoneNumber",
    "normalise",
    "MODULES",
    "LookupResult",
    "Match",
    "Owner",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
