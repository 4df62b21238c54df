"""Zoho CRM: OAuth2, the phone search, deals through their contacts, users' extensions.

The backend (and with it httpx) is imported on first use, so reading the
``[zoho]`` settings costs a process on the local directory nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import DATA_CENTRES, ZohoSettings

if TYPE_CHECKING:
    from .backend import ZohoBackend

__all__ = ["DATA_CENTRES", "ZohoBackend", "ZohoSettings"]


def __getattr__(name: str) -> Any:
    if name == "ZohoBackend":
        from .backend import ZohoBackend

        return ZohoBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
