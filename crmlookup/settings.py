"""CRM settings: which backend answers lookups, its own section, and the cache in front of it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Iterable, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Value = TypeVar("_Value", int, float)
# The metadata key of a settings field's allowed range.
BOUNDS = "bounds"


def bounded(default: _Value, low: float, high: float) -> _Value:
    """A settings field whose value must lie in ``low..high``, said beside the field
    itself; the class's ``__post_init__`` calls :func:`check_bounds`."""
    return field(default=default, metadata={BOUNDS: (low, high)})


def check_bounds(settings: DataclassInstance) -> None:
    """Raise ValueError naming the first field of ``settings`` outside its :func:`bounded` range."""
    for each in fields(settings):
        if BOUNDS in each.metadata:
            low, high = each.metadata[BOUNDS]
            _check_range(each.name, getattr(settings, each.name), low, high)


def check_ranges(settings: object, bounds: Iterable[tuple[str, float, float]]) -> None:
    """Raise ValueError naming the first field of ``settings`` outside its ``(name, low, high)`` bounds
    (for a class that is not a dataclass; a dataclass's fields use :func:`bounded`)."""
    for name, low, high in bounds:
        _check_range(name, getattr(settings, name), low, high)


def _check_range(name: str, value: float, low: float, high: float) -> None:
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
    ttl_s: int = bounded(300, 0, 7 * 86_400)
    # How long "this number is not in the CRM" is believed (shorter: a new lead should ring soon).
    negative_ttl_s: int = bounded(60, 0, 7 * 86_400)
    # How long after expiry an entry may still be served when the CRM fails or is slow.
    stale_ttl_s: int = bounded(86_400, 0, 30 * 86_400)
    # Numbers remembered at most (least recently used go first).
    max_entries: int = bounded(10_000, 1, 10_000_000)
    # How long a call with an expired entry waits for the CRM before the entry is
    # served as it is (the refresh goes on in the background). Capped below the
    # routing deadline so the expired entry always arrives in time.
    stale_wait_ms: int = bounded(1000, 0, 60_000)
    # A lookup running longer than this is abandoned (its callers were answered long ago).
    refresh_timeout_ms: int = bounded(30_000, 100, 600_000)

    def __post_init__(self) -> None:
        check_bounds(self)
