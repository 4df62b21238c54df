"""Build the configured backend."""

from __future__ import annotations

from .backend import CrmBackend
from .local_directory import LocalDirectory
from .settings import CrmSettings, DirectorySettings


def open_backend(crm: CrmSettings, directory: DirectorySettings) -> CrmBackend:
    """The backend ``crm.backend`` names, ready for lookups.

    Raises :class:`~crmlookup.errors.CrmError` when it cannot be opened.
    """
    if crm.backend == "local":
        return LocalDirectory.open(directory.path)
    raise ValueError(f"unknown CRM backend {crm.backend!r}")
