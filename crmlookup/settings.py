"""CRM settings: which backend answers lookups, and its own section."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("local",)


@dataclass(frozen=True)
class CrmSettings:
    """The ``[crm]`` section."""

    # local: the SQLite directory (embedded default).
    backend: str = "local"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class DirectorySettings:
    """The ``[directory]`` section: the local directory file."""

    # Path to the SQLite file; empty means the packaged demo directory (in memory).
    path: str = ""
