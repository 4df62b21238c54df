"""The ``[mirror]`` section: the local copy of the CRM's phone index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..state import state_directory
from ..settings import bounded, check_bounds

MIRROR_FILE = "zoho-mirror.sqlite"


@dataclass(frozen=True)
class MirrorSettings:
    """How the mirror of the CRM is kept. Used only with ``crm.backend = "zoho"``."""

    # Calls are answered from the mirror once its first load is done; off: every
    # lookup asks the CRM (behind the cache).
    enabled: bool = True
    # The SQLite file; empty: zoho-mirror.sqlite in the state directory. Only
    # `crmroute serve` (and `crmroute mirror sync`) write it; every other
    # command reads it.
    path: str = ""
    # How often the changes since the last refresh are asked for.
    refresh_s: int = bounded(60, 5, 86_400)
    # How often the whole CRM is listed again to repair anything a refresh missed.
    reconcile_s: int = bounded(86_400, 600, 30 * 86_400)
    # Changes are asked for from this long before the last refresh began, so a
    # clock difference between Zoho and us loses nothing.
    overlap_s: int = bounded(120, 0, 86_400)
    # A number the mirror does not know may be a record created since the last
    # refresh: the next refresh comes at most this long after the last one (0: as usual).
    miss_refresh_s: int = bounded(30, 0, 86_400)
    # How long a call from a number the mirror does not know waits for the CRM
    # asked live (what it finds goes into the mirror); 0: not at all.
    miss_wait_ms: int = bounded(0, 0, 60_000)
    # Past this age (no successful refresh), the route reason says how old the mirror is.
    stale_after_s: int = bounded(600, 10, 30 * 86_400)
    # After failed refreshes the next attempt waits longer, up to this.
    retry_max_s: int = bounded(900, 5, 86_400)

    def __post_init__(self) -> None:
        check_bounds(self)

    @property
    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else state_directory() / MIRROR_FILE
