"""Build the configured backend, with the lookup cache (and the mirror) in front of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backend import CrmBackend
from .cache import CachedBackend
from .mirror.settings import MirrorSettings
from .plugins import NO_CONTEXT, CrmPlugin, OpenContext, PluginRegistry
from .settings import CacheSettings, CrmSettings, DirectorySettings
from .zoho.settings import ZohoSettings

if TYPE_CHECKING:
    from .writer import CrmWriter

# The share of the routing deadline a call with an expired cache entry may
# spend waiting for the CRM before it is answered from that entry.
STALE_WAIT_SHARE_OF_DEADLINE = 0.7


def open_plugin_backend(
    plugin: CrmPlugin,
    settings: Any,
    cache: CacheSettings | None = None,
    *,
    context: OpenContext = NO_CONTEXT,
    mirror: MirrorSettings | None = None,
) -> CrmBackend:
    """``plugin``'s backend behind the cache, ready for lookups.

    ``context.deadline_ms`` is the routing deadline: an expired entry must be
    served before it. When the plugin offers a change feed and
    ``mirror.enabled``, the mirror answers first (phones normalised in
    ``context.region``); ``context.serving``: this process keeps it up to
    date (``crmroute serve``), others only read it. Raises
    :class:`~crmlookup.errors.CrmError` when the backend cannot be opened (a
    missing directory file, missing credentials, a mirror file that cannot be
    written).
    """
    cache = cache or CacheSettings()
    stale_wait_ms = min(cache.stale_wait_ms, context.deadline_ms * STALE_WAIT_SHARE_OF_DEADLINE)
    inner = plugin.open_backend(settings, context)
    cached = CachedBackend(inner, cache, stale_wait_s=stale_wait_ms / 1000)
    mirror = mirror or MirrorSettings()
    feed = plugin.change_feed(inner) if mirror.enabled else None
    if feed is None:
        return cached
    from .mirror.backend import MirroredBackend

    mirrored = MirroredBackend.open(mirror, cached, context.region, feed=feed if context.serving else None)
    if context.serving and hasattr(inner, "on_found"):
        # Records a live lookup found reach the mirror at once.
        inner.on_found = mirrored.remember
    return mirrored


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
    """The built-in backend ``crm.backend`` names (local or zoho), as :func:`open_plugin_backend` opens it."""
    plugin = PluginRegistry(entry_points=False).get(crm.backend)
    settings = {"local": directory, "zoho": zoho or ZohoSettings()}.get(crm.backend)
    if settings is None:
        raise ValueError(f"open_backend opens the local and zoho backends; use open_plugin_backend for {crm.backend!r}")
    context = OpenContext(region=region or "US", deadline_ms=deadline_ms, serving=keep_mirror)
    return open_plugin_backend(plugin, settings, cache, context=context, mirror=mirror)


def open_writer(backend: CrmBackend, plugin: CrmPlugin | None = None, settings: Any = None) -> CrmWriter:
    """The writer for the CRM ``backend`` looks callers up in, sharing its connection and token.

    ``plugin`` (and its ``settings``) make it; without one, the built-in
    plugin of the backend's name does.
    """
    # Writers load only here: a lookup (a process AGI above all) never writes.
    inner = live_backend(backend)
    if plugin is None:
        plugin = PluginRegistry(entry_points=False).get(inner.name)
    return plugin.open_writer(inner, settings)


def live_backend(backend: CrmBackend) -> CrmBackend:
    """The CRM client itself, below the mirror and the cache."""
    live = getattr(backend, "live", None)
    if live is not None:
        backend = live
    return backend.inner if isinstance(backend, CachedBackend) else backend
