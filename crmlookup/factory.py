"""Build the configured backend, with the lookup cache in front of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import CrmBackend
from .cache import CachedBackend
from .local_directory import LocalDirectory
from .mirror.settings import MirrorSettings
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
    mirror: MirrorSettings | None = None,
    region: str = "",
    keep_mirror: bool = False,
) -> CrmBackend:
    """The backend ``crm.backend`` names, behind the cache, ready for lookups.

    ``deadline_ms`` is the routing deadline: an expired entry must be served
    before it. For Zoho with ``mirror.enabled``, the mirror answers first
    (``region`` is the one its phones are normalised in); ``keep_mirror``:
    this process keeps it up to date (``crmroute serve``), others only read it.
    Raises :class:`~crmlookup.errors.CrmError` when the backend cannot be
    opened (a missing directory file, missing Zoho credentials, a mirror file
    that cannot be written).
    """
    cache = cache or CacheSettings()
    stale_wait_ms = min(cache.stale_wait_ms, deadline_ms * STALE_WAIT_SHARE_OF_DEADLINE)
    inner = _open_inner(crm, directory, zoho or ZohoSettings())
    cached = CachedBackend(inner, cache, stale_wait_s=stale_wait_ms / 1000)
    mirror = mirror or MirrorSettings()
    if crm.backend != "zoho" or not mirror.enabled:
        return cached
    from .mirror.backend import MirroredBackend
    from .zoho.backend import ZohoBackend

    assert isinstance(inner, ZohoBackend)
    mirrored = MirroredBackend.open(mirror, cached, region, feed=inner.feed if keep_mirror else None)
    if keep_mirror:
        inner.on_found = mirrored.remember
    return mirrored


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
    inner = live_backend(backend)
    if isinstance(inner, LocalDirectory):
        from .local_directory.writer import LocalDirectoryWriter

        return LocalDirectoryWriter(inner)
    if inner.name == "zoho":
        from .zoho.writer import ZohoWriter

        return ZohoWriter(inner.api, inner.settings, inner.active_users)
    raise ValueError(f"no writer for the {backend.name!r} backend")


def live_backend(backend: CrmBackend) -> CrmBackend:
    """The CRM client itself, below the mirror and the cache."""
    live = getattr(backend, "live", None)
    if live is not None:
        backend = live
    return backend.inner if isinstance(backend, CachedBackend) else backend
