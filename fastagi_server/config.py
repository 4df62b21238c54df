"""``crmroute.toml``: one file, every key optional, validated at load.

Each section is a dataclass owned by the package that uses it; this module
only reads TOML into them and names the key when a value is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from crmlookup.errors import CrmrouteError
from crmlookup.mirror.settings import MirrorSettings
from crmlookup.plugins import CrmPlugin, PluginError, PluginRegistry, default_plugins
from crmlookup.settings import CacheSettings, CrmSettings, DirectorySettings, bounded, check_bounds
from crmlookup.zoho.settings import ZohoSettings
from crmlookup.zoho_desk.settings import ZohoDeskSettings
from dialplan.outbox.settings import OutboxSettings, OutcomeSettings, StoreSettings
from dialplan.policy import unknown_rule
from dialplan.policy_settings import LAST_AGENT, TICKETS
from dialplan.recordings import RecordingSettings
from dialplan.router import ticket_keys
from dialplan.settings import RoutingSettings

from .limits import SessionLimits

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ENV_CONFIG = "CRMROUTE_CONFIG"
# Read when neither --config nor $CRMROUTE_CONFIG names a file, if it exists:
# a service started without either still gets the admin's configuration.
DEFAULT_CONFIG_PATH = Path("/etc/crmroute/crmroute.toml")


class ConfigError(CrmrouteError):
    """The configuration file is missing, unreadable or has a bad value (the key is named)."""


@dataclass(frozen=True)
class ServerSettings:
    """The ``[server]`` section."""

    host: str = "127.0.0.1"
    port: int = bounded(4573, 0, 65535)
    # Peers allowed to connect (addresses or networks); loopback only by default.
    allowed_peers: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Sessions served at once (counted once their header block is complete); past
    # this a call gets CRM_ROUTE_STATUS=ERROR at once.
    max_sessions: int = bounded(500, 1, 100_000)
    # Connections still sending their header block, at most: past it the one that
    # has waited longest is dropped (Asterisk sends its block at once; a peer that
    # trickles it, or says nothing, is not a call).
    max_connecting: int = bounded(128, 1, 100_000)
    # Connections open at once, at most; capped below the open-file limit (raised to
    # its hard limit at start). Past it, new connections wait in the kernel's queue.
    max_connections: int = bounded(4096, 1, 1_000_000)
    # On SIGTERM/SIGINT, how long in-flight sessions may take to finish.
    shutdown_grace_ms: int = bounded(5000, 0, 600_000)
    log_level: str = "INFO"
    # "text" (one line per record, key=value for calls) or "json" (one object per line, for log shippers).
    log_format: str = "text"
    # "auto" (uvloop when installed, else asyncio's own loop), "asyncio" or "uvloop"
    # (an error at start when it is not installed); see .event_loop.
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be {' or '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        check_peers(self.allowed_peers)

    @property
    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return networks(self.allowed_peers)


@dataclass(frozen=True)
class MetricsSettings:
    """The ``[metrics]`` section: Prometheus metrics and the health checks, on their own HTTP listener."""

    # host:port to serve /metrics, /healthz and /readyz on ("127.0.0.1:9464"); empty: not served.
    listen: str = ""
    # Peers allowed to connect (addresses or networks); loopback only by default.
    allowed_peers: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    def __post_init__(self) -> None:
        if self.listen:
            host_and_port(self.listen)
        check_peers(self.allowed_peers)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of ``listen``."""
        return host_and_port(self.listen)

    @property
    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return networks(self.allowed_peers)


LOG_FORMATS = ("text", "json")
# server.event_loop's values (fastagi_server.event_loop picks the loop).
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def host_and_port(listen: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``[::1]:9464`` as (host, port); ValueError naming the key otherwise."""
    host, colon, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be host:port (e.g. 127.0.0.1:9464), got {listen!r}")
    return host, int(port)


def check_peers(peers: tuple[str, ...]) -> None:
    for peer in peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            raise ValueError(f"allowed_peers: {peer!r} is not an IP address or network") from None


def networks(peers: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(peer, strict=False) for peer in peers)


def address_allowed(host: str, allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether a peer's address (``192.0.2.1``, ``fe80::1%eth0``, an IPv4-mapped IPv6 one) is in ``allowed``."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``Config()`` is the working default (demo directory)."""

    server: ServerSettings = field(default_factory=ServerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    limits: SessionLimits = field(default_factory=SessionLimits)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    crm: CrmSettings = field(default_factory=CrmSettings)
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    zoho: ZohoSettings = field(default_factory=ZohoSettings)
    # Zoho Desk, for the Tickets rule; beside whichever CRM crm.backend names.
    zoho_desk: ZohoDeskSettings = field(default_factory=ZohoDeskSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    mirror: MirrorSettings = field(default_factory=MirrorSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    outcomes: OutcomeSettings = field(default_factory=OutcomeSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    recordings: RecordingSettings = field(default_factory=RecordingSettings)
    # Where it was read from; empty for the built-in defaults. Not a TOML key.
    source: str = field(default="", metadata={"toml": False})
    # The settings of plugin sections that are not fields above ([retailcrm],
    # an installed plugin's), by section name, as their plugins' dataclasses.
    sections: dict[str, Any] = field(default_factory=dict, metadata={"toml": False})
    # The CRM plugins this configuration was read with (None: the default ones).
    plugins: PluginRegistry | None = field(default=None, compare=False, repr=False, metadata={"toml": False})

    @property
    def plugin(self) -> CrmPlugin:
        """The CRM plugin ``crm.backend`` names; raises PluginError when none is installed."""
        return (self.plugins or default_plugins()).get(self.crm.backend)

    def settings_of(self, plugin: CrmPlugin) -> Any:
        """``plugin``'s settings: its section as read, else its defaults."""
        section = plugin.section
        if section in _CONFIG_SECTIONS:
            return getattr(self, section)
        if section in self.sections:
            return self.sections[section]
        return plugin.settings_type()


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: ``explicit`` (``--config``), else ``$CRMROUTE_CONFIG``, else
    :data:`DEFAULT_CONFIG_PATH` when it exists; None: the built-in defaults."""
    chosen = explicit or os.environ.get(ENV_CONFIG)
    if chosen:
        return Path(chosen)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def searched_places() -> str:
    """Where a configuration is looked for, in order, as an admin reads it."""
    return f"--config, ${ENV_CONFIG}, {DEFAULT_CONFIG_PATH}"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the file :func:`config_path` chooses; none at all gives the defaults."""
    file = config_path(path)
    return replace(config_from_dict(read_toml(file)), source=str(file or ""))


def read_toml(file: Path | None) -> dict[str, Any]:
    """The parsed TOML of ``file`` (empty for None: the built-in defaults); raises ConfigError."""
    if file is None:
        return {}
    import tomllib  # only paid for when there is a file to read

    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None


def demo_mode_notice(config: Config) -> str:
    """The loud line for a configuration that routes calls from the packaged demo data; empty otherwise.

    A service that forgot its configuration must not look healthy.
    """
    if config.crm.backend != "local" or config.directory.path:
        return ""
    if not config.source:
        return (
            f"DEMO MODE: no configuration file found ({searched_places()}): calls are routed from the "
            f"packaged demo directory (a copy in the state directory), numbers read in region {config.routing.default_region}"
        )
    return f"DEMO MODE: {config.source} sets no directory.path: calls are routed from the packaged demo directory"


def config_from_dict(data: Mapping[str, Any], plugins: PluginRegistry | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML; raises :class:`ConfigError` naming the key.

    ``plugins`` are the CRM plugins whose sections may appear (the built-in
    and installed ones when None).
    """
    return _build_config(data, plugins or default_plugins(), None)


def config_problems(data: Mapping[str, Any], plugins: PluginRegistry | None = None) -> list[str]:
    """Every problem of parsed TOML that can be found in one pass (empty: it loads).

    A wrong value is reported and its default used in its place, so the keys
    after it are still checked; a section whose keys are each fine but do not
    fit together reports its first such problem.
    """
    problems: list[str] = []
    try:
        _build_config(data, plugins or default_plugins(), problems)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


# The sections that are fields of Config (the rest belong to plugins).
_CONFIG_SECTIONS = frozenset(f.name for f in fields(Config) if f.metadata.get("toml", True))


def _build_config(data: Any, plugins: PluginRegistry, problems: list[str] | None) -> Config:
    """The Config of ``data``: its own sections, the plugins' sections, and the
    checks that need both (the backend exists, its record kinds in lookup_order)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a table, got {_kind(data)}")
    plugin = _chosen_plugin(data, plugins, problems)
    own = {key: value for key, value in data.items() if key in _CONFIG_SECTIONS}
    if plugin is not None:
        own = _with_plugin_lookup_order(own, plugin)
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in _CONFIG_SECTIONS:
            continue
        owner = _section_owner(plugins, key, problems)
        if owner is not None:
            sections[key] = _build(owner.settings_type, value, key, problems)
    config = replace(_build(Config, own, "", problems), sections=sections, plugins=plugins)
    if plugin is not None:
        _check_plugin_fits(config, plugin, problems)
    return config


def _chosen_plugin(data: Mapping[str, Any], plugins: PluginRegistry, problems: list[str] | None) -> CrmPlugin | None:
    """The plugin ``crm.backend`` names, when it is a name (its type is checked with the section)."""
    crm = data.get("crm")
    name = crm.get("backend", CrmSettings.backend) if isinstance(crm, Mapping) else CrmSettings.backend
    if not isinstance(name, str):
        return None
    try:
        return plugins.get(name)
    except PluginError as exc:
        _problem(problems, ConfigError(f"crm.backend: {exc}"))
        return None


def _section_owner(plugins: PluginRegistry, key: str, problems: list[str] | None) -> CrmPlugin | None:
    try:
        owner = plugins.section_owner(key)
    except PluginError as exc:
        _problem(problems, ConfigError(f"{key}: {exc}"))
        return None
    if owner is None:
        known = sorted(_CONFIG_SECTIONS | {plugins.get(name).section for name in plugins.names()} - {""})
        _problem(problems, ConfigError(f"{key}: unknown key (known: {', '.join(known)})"))
    return owner


def _with_plugin_lookup_order(own: dict[str, Any], plugin: CrmPlugin) -> dict[str, Any]:
    """``own`` with the plugin's record kinds as the lookup order when [routing] names none
    (a retailCRM caller is an order's or a customer's, never a Zoho lead's)."""
    routing = own.get("routing", {})
    if not isinstance(routing, Mapping) or "lookup_order" in routing or tuple(plugin.modules) == RoutingSettings.lookup_order:
        return own
    return {**own, "routing": {**routing, "lookup_order": list(plugin.modules)}}


def _check_plugin_fits(config: Config, plugin: CrmPlugin, problems: list[str] | None) -> None:
    """The plugin's settings can be made, and lookup_order names only its record kinds."""
    if plugin.section and plugin.section not in _CONFIG_SECTIONS and plugin.section not in config.sections:
        try:
            config.sections[plugin.section] = plugin.settings_type()
        except ValueError as exc:
            _problem(problems, ConfigError(f"{plugin.section}: {exc}"))
    problem = unknown_rule(config.routing, tuple(plugin.modules))
    if problem:
        _problem(problems, ConfigError(f"routing: {problem}"))
    reserved = [kind for kind in plugin.modules if kind in (LAST_AGENT, TICKETS)]
    if reserved:
        _problem(problems, ConfigError(f"crm.backend: plugin {plugin.name!r} names a record kind {reserved[0]!r}, which is a built-in rule"))
    uses = ticket_keys(config.routing)
    if uses and not config.zoho_desk.org_id:
        _problem(problems, ConfigError(f"{uses[0]}: Tickets asks Zoho Desk, but zoho_desk.org_id is not set"))


_Settings = typing.TypeVar("_Settings", bound="DataclassInstance")


def _build(cls: type[_Settings], data: Any, where: str, problems: list[str] | None = None) -> _Settings:
    """``cls`` from ``data``. With ``problems``, a bad key is listed there and left at its default."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    settable = [f for f in fields(cls) if f.metadata.get("toml", True)]
    known = {f.name for f in settable}
    for key in data:
        if key not in known:
            _problem(problems, ConfigError(f"{_join(where, key)}: unknown key (known: {', '.join(sorted(known))})"))
    values: dict[str, Any] = {}
    for f in settable:
        if f.name not in data:
            continue
        try:
            # A field kept out of reprs holds a credential: its errors never quote the value.
            values[f.name] = _convert(hints[f.name], data[f.name], _join(where, f.name), problems, secret=not f.repr)
        except ConfigError as exc:
            _problem(problems, exc)
    try:
        return cls(**values)
    except ValueError as exc:
        error = ConfigError(f"{where or 'config'}: {exc}")
    if problems is None:
        raise error
    problems.append(str(error))
    return cls()  # the defaults, so the sections around it are still checked


def _problem(problems: list[str] | None, error: ConfigError) -> None:
    """Raise ``error``, or, when collecting, list it."""
    if problems is None:
        raise error
    problems.append(str(error))


def _convert(kind: Any, value: Any, where: str, problems: list[str] | None = None, *, secret: bool = False) -> Any:
    """``value`` as the setting type ``kind``; ConfigError naming ``where`` (and, unless
    ``secret``, quoting the value) when it is of another type."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if isinstance(kind, type) and is_dataclass(kind):
        return _build(kind, value, where, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where, problems, secret=secret)
    expected = _scalar_expected(kind, value)
    if expected:
        raise ConfigError(f"{where}: expected {expected}, got {_kind(value, secret)}")
    if kind is float:
        return float(value)
    if kind in (bool, int, str):
        return value
    if origin is tuple:
        item = args[0]
        if isinstance(value, str) and item is str:
            return (value,)  # a single value where a list is expected
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_kind(value)}")
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_kind, item = args
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {_kind(value)}")
        return {str(k): _convert(item, v, _join(where, str(k)), problems) for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported setting type {kind!r}")  # a bug in a settings class


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _scalar_expected(kind: Any, value: Any) -> str:
    """What a scalar setting of type ``kind`` expects, when ``value`` is not that; else ""."""
    if kind is bool:
        return "" if isinstance(value, bool) else "true or false"
    if kind is int:
        return "" if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if kind is float:
        return "" if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if kind is str:
        return "" if isinstance(value, str) else "a string"
    return ""


_TOML_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _kind(value: Any, secret: bool = False) -> str:
    """What ``value`` is, for an error: its type, and its text unless it is a credential's."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if secret:
        return f"{_TOML_KINDS.get(type(value), 'a ' + type(value).__name__)} (value not shown: a credential)"
    return f"{type(value).__name__} {value!r}"[:80]
