"""CRM plugins: one object per CRM, registered by name, found through entry points.

A plugin is what ``[crm] backend = "<name>"`` picks. It says which TOML
section holds its settings (a frozen dataclass, read and checked like every
built-in section: unknown keys refused, errors naming the key), opens the
lookup backend and the writer, may offer a change feed for the mirror, and
can check itself against the live CRM (``crmroute check-config --online``).

Third-party plugins are found through the ``crmroute.backends`` entry-point
group: a package that declares ``mycrm = "crmroute_mycrm:plugin"`` there is
all an admin installs. The built-in ones (the local directory, Zoho CRM,
retailCRM) are declared in the same group and loaded the same way, from the
same ``module:attribute`` texts, without scanning every installed package
(``crmroute-agi`` starts once per call). A :class:`PluginRegistry` is an
object a process builds; nothing is registered at import.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from .errors import CrmrouteError

if TYPE_CHECKING:
    from .backend import CrmBackend
    from .mirror.feed import ChangeFeed
    from .writer import CrmWriter

ENTRY_POINT_GROUP = "crmroute.backends"
# The built-in plugins, as ``setup.cfg`` declares them in ENTRY_POINT_GROUP.
BUILTIN_PLUGINS: Mapping[str, str] = {
    "local": "crmlookup.local_directory.plugin:plugin",
    "zoho": "crmlookup.zoho.plugin:plugin",
    "retailcrm": "crmlookup.retailcrm.plugin:plugin",
}
# What a backend name and a settings section may be called (a TOML bare key, lower case).
PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


class PluginError(CrmrouteError):
    """A plugin cannot be found, loaded or registered (the message says which and why)."""


@dataclass(frozen=True)
class OpenContext:
    """What a plugin's backend may need to know of the rest of the configuration."""

    # Region (ISO 3166) that numbers without a country code are read in.
    region: str = "US"
    # The routing deadline, in milliseconds: a lookup slower than this routes nobody.
    deadline_ms: int = 1500
    # True in ``crmroute serve``: the process that keeps background state (a mirror) fresh.
    serving: bool = False


# The context of a backend opened on its own (a script, a test): every default.
NO_CONTEXT = OpenContext()


@runtime_checkable
class CrmPlugin(Protocol):
    """A CRM, as ``crm.backend`` names it.

    ``settings_type`` is a frozen dataclass whose every field has a default;
    ``settings_type()`` is what an absent section means. Fields declared with
    ``repr=False`` are credentials: errors about them never quote the value.
    """

    # The ``crm.backend`` value.
    name: str
    # The TOML section holding the settings ("" when the plugin has none).
    section: str
    settings_type: type
    # The record kinds a lookup can match, as ``routing.lookup_order`` names them.
    modules: tuple[str, ...]

    def open_backend(self, settings: Any, context: OpenContext) -> CrmBackend:
        """The lookup backend (the cache is put in front of it by the caller).

        Raises :class:`~crmlookup.errors.CrmError` when it cannot open
        (missing credentials, a missing file).
        """
        ...

    def open_writer(self, backend: CrmBackend, settings: Any) -> CrmWriter:
        """The writer for call outcomes, sharing ``backend``'s connection (the one :meth:`open_backend` made)."""
        ...

    def change_feed(self, backend: CrmBackend) -> ChangeFeed | None:
        """The CRM's change feed, so the mirror can serve it; None: no mirror for this CRM."""
        ...

    async def check_online(self, backend: CrmBackend, settings: Any) -> list[str]:
        """Prove the CRM takes our credentials with one cheap request, and check
        the configured names it must know: the problems found (empty: fine).

        Raises :class:`~crmlookup.errors.CrmError` when the CRM cannot be asked.
        """
        ...

    def describe(self, settings: Any) -> str:
        """A few words on where lookups go, for ``check-config`` and ``lookup``."""
        ...


def check_plugin(plugin: object, origin: str) -> CrmPlugin:
    """``plugin`` if it has what a CRM plugin needs; :class:`PluginError` naming ``origin`` and the gap."""
    if not isinstance(plugin, CrmPlugin):
        missing = [name for name in ("name", "section", "settings_type", "modules", "open_backend", "open_writer",
                                     "change_feed", "check_online", "describe") if not hasattr(plugin, name)]
        raise PluginError(f"{origin}: not a CRM plugin (it lacks {', '.join(missing)})")
    if not isinstance(plugin.name, str) or not PLUGIN_NAME.fullmatch(plugin.name):
        raise PluginError(f"{origin}: plugin name {plugin.name!r} must be lower-case letters, digits, '_' or '-'")
    if plugin.section and not PLUGIN_NAME.fullmatch(plugin.section):
        raise PluginError(f"{origin}: settings section {plugin.section!r} must be lower-case letters, digits, '_' or '-'")
    if not (isinstance(plugin.settings_type, type) and is_dataclass(plugin.settings_type)):
        raise PluginError(f"{origin}: settings_type must be a dataclass")
    if not plugin.modules or not all(isinstance(m, str) and m for m in plugin.modules):
        raise PluginError(f"{origin}: modules must name at least one record kind")
    return plugin


def load_reference(reference: str) -> object:
    """The object ``module:attribute`` names (as an entry point's value does)."""
    module_name, _, attribute = reference.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            target = getattr(target, part)
    except Exception as exc:  # a broken plugin package must not read as "unknown backend"
        raise PluginError(f"{reference}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    return target


class PluginRegistry:
    """The CRM plugins one process knows, by name.

    ``register`` refuses a second plugin of the same name or settings
    section. ``get`` loads a built-in on first use, then looks in the
    ``crmroute.backends`` entry points (only for a name no built-in has).
    """

    def __init__(self, plugins: Iterable[CrmPlugin] = (), *, builtins: Mapping[str, str] = BUILTIN_PLUGINS, entry_points: bool = True):
        self._plugins: dict[str, CrmPlugin] = {}
        self._builtins = dict(builtins)
        self._entry_points = entry_points
        self._discovered: dict[str, str] | None = None
        for plugin in plugins:
            self.register(plugin)

    def register(self, plugin: CrmPlugin) -> None:
        """Add ``plugin``; :class:`PluginError` when its name or section is taken."""
        plugin = check_plugin(plugin, f"plugin {getattr(plugin, 'name', plugin)!r}")
        if plugin.name in self._plugins:
            raise PluginError(f"a CRM plugin named {plugin.name!r} is already registered")
        owner = self._section_owner_loaded(plugin.section)
        if owner is not None:
            raise PluginError(f"plugin {plugin.name!r}: section [{plugin.section}] already belongs to plugin {owner.name!r}")
        self._plugins[plugin.name] = plugin

    def get(self, name: str) -> CrmPlugin:
        """The plugin called ``name``; :class:`PluginError` listing the known names when none is."""
        plugin = self._plugins.get(name) or self._load(name)
        if plugin is None:
            raise PluginError(
                f"{name!r} is not a known CRM backend (known: {', '.join(self.names())}; a plugin package "
                f"registers its name in the {ENTRY_POINT_GROUP!r} entry-point group)"
            )
        return plugin

    def names(self) -> list[str]:
        """Every name ``get`` can answer, built-in ones first."""
        names = dict.fromkeys([*self._builtins, *self._plugins])
        names.update(dict.fromkeys(self._entry_point_names()))
        return list(names)

    def section_owner(self, section: str) -> CrmPlugin | None:
        """The plugin whose settings live in ``[section]``, loading plugins until one does."""
        owner = self._section_owner_loaded(section)
        if owner is not None:
            return owner
        for name in self.names():
            if name not in self._plugins:
                plugin = self._load(name)
                if plugin is not None and plugin.section == section:
                    return plugin
        return None

    def _section_owner_loaded(self, section: str) -> CrmPlugin | None:
        if not section:
            return None
        return next((p for p in self._plugins.values() if p.section == section), None)

    def _load(self, name: str) -> CrmPlugin | None:
        reference = self._builtins.get(name) or self._entry_point_names().get(name)
        if reference is None:
            return None
        plugin = check_plugin(load_reference(reference), f"{ENTRY_POINT_GROUP} entry point {name} = {reference}")
        if plugin.name != name:
            raise PluginError(f"{ENTRY_POINT_GROUP} entry point {name} = {reference}: the plugin calls itself {plugin.name!r}")
        self.register(plugin)
        return plugin

    def _entry_point_names(self) -> dict[str, str]:
        """name -> ``module:attribute`` of the installed entry points (read once; built-ins win)."""
        if not self._entry_points:
            return {}
        if self._discovered is None:
            from importlib.metadata import entry_points

            self._discovered = {
                ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in self._builtins
            }
        return self._discovered


def default_plugins(extra: Sequence[CrmPlugin] = ()) -> PluginRegistry:
    """A new registry of the built-in plugins, the installed ones, and ``extra``."""
    return PluginRegistry(extra)
