"""Which event loop ``crmroute serve`` runs on (``server.event_loop``).

uvloop (``pip install 'crmroute[fast]'``) does the same work as asyncio's own
loop for less CPU per call. It is optional: ``"auto"`` takes it when it is
installed and asyncio's loop when it is not, ``"asyncio"`` never takes it,
and ``"uvloop"`` insists on it, so a machine where it is missing fails at
start with an error naming the key rather than running slower unnoticed.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Callable, Coroutine, TypeVar

from .config import EVENT_LOOPS, ConfigError

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_installed() -> bool:
    """True when uvloop can be imported (found without importing it)."""
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: str) -> LoopFactory:
    """The factory of the loop ``choice`` names; ConfigError naming the key when
    ``"uvloop"`` is asked for and not installed.

    asyncio's own is its selector loop (the default on Unix), made directly rather
    than through the event loop policy: "asyncio" stays asyncio in a process that
    set uvloop's policy (an embedding program, the test suite under uvloop).
    """
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return asyncio.SelectorEventLoop
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"server.event_loop: must be {', '.join(EVENT_LOOPS)}, got {choice!r}")
    try:
        import uvloop
    except ImportError as exc:
        raise ConfigError(
            f'server.event_loop: "uvloop" is not installed or cannot be loaded here ({exc}); '
            "install it (pip install 'crmroute[fast]') or set event_loop to \"auto\" or \"asyncio\""
        ) from None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (see :func:`loop_factory`)."""
    try:
        factory = loop_factory(choice)
    except ConfigError:
        main.close()  # never to run: no "coroutine was never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what the "listening" line says the server runs on."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
