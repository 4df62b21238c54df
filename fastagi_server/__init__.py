"""FastAGI server: the AGI wire protocol, sessions, the entry points and the CLI.

The public surface for a program that embeds crmroute (docs/extending.md):
build an :class:`App` (``App.from_config``, with your own backend, writer,
history or call events if you like), serve it with :func:`serve` or a
:class:`FastAgiServer`, and add AGI scripts by name (``add_route``; a
handler takes an :class:`AgiSession` and the app). Names load on first use:
a process AGI that routes one call pays only for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "AgiSession": "session",
    "App": "app",
    "AppBuilder": "server",
    "Config": "config",
    "ConfigError": "config",
    "FastAgiServer": "server",
    "Handler": "handlers",
    "RouteExists": "handlers",
    "Routes": "handlers",
    "builtin_routes": "handlers",
    "config_from_dict": "config",
    "load_config": "config",
    "serve": "server",
}

__all__ = ["__version__", *sorted(_PUBLIC)]

if TYPE_CHECKING:
    from .app import App
    from .config import Config, ConfigError, config_from_dict, load_config
    from .handlers import Handler, RouteExists, Routes, builtin_routes
    from .server import AppBuilder, FastAgiServer, serve
    from .session import AgiSession


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
