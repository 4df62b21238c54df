"""Build the configured backend, with the lookup cache in front of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import CrmBackend
from .cache import CachedBackend
from .local_directory import LocalDirectory
from .settings import CacheSettings, CrmSettings, DirectorySettings
from .zoho.settings import ZohoSettings

if TYPE_CHECKING:
    from .writer import CrmWriter

# The share of the routing deadline a call with an expired cache entry may
# spend waiting for the CRM before it is answered from that entry.
STALE_WAIT_SHARE_OF_DEADLINE = 0.7


def open_backend(
    crm: CrmSettings,
    directory: DirectorySettings,
    zoho: ZohoSettings | None = None,
    cache: CacheSettings | None = None,
    *,
    deadline_ms: int = 1500,
) -> CrmBackend:
    """The backend ``crm.backend`` names, behind the cache, ready for lookups.

    ``deadline_ms`` is the routing deadline: an expired entry must be served
    before it. Raises :class:`~crmlookup.errors.CrmError` when the backend
    cannot be opened (a missing directory file, missing Zoho credentials).
    """
    cache = cache or CacheSettings()
    stale_wait_ms = min(cache.stale_wait_ms, deadline_ms * STALE_WAIT_SHARE_OF_DEADLINE)
    return CachedBackend(_open_inner(crm, directory, zoho or ZohoSettings()), cache, stale_wait_s=stale_wait_ms / 1000)


def _open_inner(crm: CrmSettings, directory: DirectorySettings, zoho: ZohoSettings) -> CrmBackend:
    if crm.backend == "local":
        return LocalDirectory.open(directory.path)
    if crm.backend == "zoho":
        from .zoho.backend import ZohoBackend  # httpx is loaded only for Zoho

        return ZohoBackend.open(zoho)
    raise ValueError(f"unknown CRM backend {crm.backend!r}")


def open_writer(backend: CrmBackend) -> CrmWriter:
    """The writer for the CRM ``backend`` looks callers up in, sharing its connection and token."""
    # Writers load only here: a lookup (a process AGI above all) never writes.
    inner = backend.inner if isinstance(backend, CachedBackend) else backend
    if isinstance(inner, LocalDirectory):
        from .local_directory.writer import LocalDirectoryWriter

        return LocalDirectoryWriter(inner)
    if inner.name == "zoho":
        from .zoho.writer import ZohoWriter

        return ZohoWriter(inner.api, inner.settings, inner.active_users)
    raise ValueError(f"no writer for the {backend.name!r} backend")
