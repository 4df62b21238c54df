"""CRM settings: which backend answers lookups, its own section, and the cache in front of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


def check_ranges(settings: object, bounds: Iterable[tuple[str, float, float]]) -> None:
    """Raise ValueError naming the first field of ``settings`` outside its ``(name, low, high)`` bounds."""
    for name, low, high in bounds:
        value = getattr(settings, name)
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}, got {value}")


@dataclass(frozen=True)
class CrmSettings:
    """The ``[crm]`` section."""

    # The CRM plugin that answers lookups: local (the SQLite directory, the
    # embedded default), zoho (Zoho CRM, the [zoho] section), retailcrm
    # (retailCRM, the [retailcrm] section), or an installed plugin's name.
    backend: str = "local"

    def __post_init__(self) -> None:
        from .plugins import PLUGIN_NAME

        if not PLUGIN_NAME.fullmatch(self.backend):
            raise ValueError(f"backend {self.backend!r} is not a plugin name (lower-case letters, digits, '_' or '-')")


@dataclass(frozen=True)
class DirectorySettings:
    """The ``[directory]`` section: the local directory file."""

    # Path to the SQLite file; empty means the packaged demo directory (in memory).
    path: str = ""


@dataclass(frozen=True)
class CacheSettings:
    """The ``[cache]`` section: the lookup cache in front of any backend."""

    # How long a lookup that found records is served without asking the CRM.
    ttl_s: int = 300
    # How long "this number is not in the CRM" is believed (shorter: a new lead should ring soon).
    negative_ttl_s: int = 60
    # How long after expiry an entry may still be served when the CRM fails or is slow.
    stale_ttl_s: int = 86_400
    # Numbers remembered at most (least recently used go first).
    max_entries: int = 10_000
    # How long a call with an expired entry waits for the CRM before the entry is
    # served as it is (the refresh goes on in the background). Capped below the
    # routing deadline so the expired entry always arrives in time.
    stale_wait_ms: int = 1000
    # A lookup running longer than this is abandoned (its callers were answered long ago).
    refresh_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        check_ranges(self, (
            ("ttl_s", 0, 7 * 86_400),
            ("negative_ttl_s", 0, 7 * 86_400),
            ("stale_ttl_s", 0, 30 * 86_400),
            ("max_entries", 1, 10_000_000),
            ("stale_wait_ms", 0, 60_000),
            ("refresh_timeout_ms", 100, 600_000),
        ))
