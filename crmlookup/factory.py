"""Build the configured backend."""

from __future__ import annotations

from .backend import CrmBackend
from .local_directory import LocalDirectory
from .local_directory.writer import LocalDirectoryWriter
from .settings import CrmSettings, DirectorySettings
from .writer import CrmWriter


def open_backend(crm: CrmSettings, directory: DirectorySettings) -> CrmBackend:
    """The backend ``crm.backend`` names, ready for lookups.

    Raises :class:`~crmlookup.errors.CrmError` when it cannot be opened.
    """
    if crm.backend == "local":
        return LocalDirectory.open(directory.path)
    raise ValueError(f"unknown CRM backend {crm.backend!r}")


def open_writer(crm: CrmSettings, backend: CrmBackend) -> CrmWriter:
    """The writer for ``crm.backend``, sharing the lookup backend's connection where it can."""
    if crm.backend == "local":
        if not isinstance(backend, LocalDirectory):
            raise ValueError("the local writer needs the local directory backend")
        return LocalDirectoryWriter(backend)
    raise ValueError(f"unknown CRM backend {crm.backend!r}")
