"""retailCRM: the telephony API's manager lookup, the screen pop, the call history.

The backend (and with it httpx) is imported on first use, so reading the
``[retailcrm]`` settings costs a process on another backend nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import RetailCrmSettings

if TYPE_CHECKING:
    from .backend import RetailCrmBackend

__all__ = ["RetailCrmBackend", "RetailCrmSettings"]


def __getattr__(name: str) -> Any:
    if name == "RetailCrmBackend":
        from .backend import RetailCrmBackend

        return RetailCrmBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
