"""The AGI entry points, by script name, and the one place a session is run.

``agi://router:4573/route`` runs :func:`route_call`, ``.../outcome`` (from the
hangup handler) :func:`record_outcome`; an embedding program adds its own
scripts to a :class:`Routes` (``FastAgiServer.add_route``). A script name
nobody registered gets ``CRM_ROUTE_STATUS=ERROR`` so the dialplan falls through.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable

from crmlookup.errors import CrmrouteError
from dialplan import RouteStatus, fallback_variables

from ..call_observer import CallObserver
from ..calllog import log_call, log_session_error
from ..errors import AgiError
from ..session import AgiSession
from .outcome import record_outcome
from .route import route_call

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger("crmroute.server")

# A handler answers one AGI session: it sets what it sets on the channel and
# returns the fields of the session's log line.
Handler = Callable[[AgiSession, "App"], Awaitable[dict[str, str]]]

# How long a call the server stops serving may take to get the fallback answer.
FALLBACK_TIMEOUT_S = 1.0
# What an AGI script may be called: the path of agi://host:port/<name>.
SCRIPT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RouteExists(CrmrouteError, ValueError):
    """A script name is registered twice (the second handler would silently win)."""


class Routes:
    """AGI script name -> handler, the table a server dispatches sessions with."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._always_served: set[str] = set()

    def add(self, name: str, handler: Handler, *, always_served: bool = False) -> None:
        """Serve ``agi://host/<name>`` with ``handler``.

        ``always_served``: answered even past ``server.max_sessions`` (for a
        script that never waits on the CRM and must not be lost, like
        ``outcome``). Raises :class:`RouteExists` for a name already taken,
        ValueError for one a dialplan cannot write.
        """
        if not SCRIPT_NAME.fullmatch(name):
            raise ValueError(f"AGI script name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if name in self._handlers:
            raise RouteExists(f"AGI script {name!r} is already registered")
        self._handlers[name] = handler
        if always_served:
            self._always_served.add(name)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def always_served(self, name: str) -> bool:
        return name in self._always_served

    def names(self) -> Iterable[str]:
        return sorted(self._handlers)


def builtin_routes() -> Routes:
    """A new table with ``route`` and ``outcome``; the caller may add its own scripts."""
    routes = Routes()
    routes.add("route", route_call)
    # Served even past max_sessions: recording an outcome never waits on the
    # CRM, and turning it away would lose the call's outcome.
    routes.add("outcome", record_outcome, always_served=True)
    return routes


_BUILTIN = builtin_routes()


class _NeverRaised(BaseException):
    """Stands for asyncio's CancelledError where asyncio is not loaded (nothing can be cancelled then)."""


def _cancelled_error() -> type[BaseException]:
    """asyncio's CancelledError once asyncio is loaded. Looked up, not imported: the
    classic AGI runs a session without an event loop and without loading asyncio."""
    asyncio = sys.modules.get("asyncio")
    return _NeverRaised if asyncio is None else asyncio.CancelledError


async def answer_fallback(session: AgiSession, reason: str) -> dict[str, str]:
    """Set the whole contract with ``ERROR`` so the dialplan takes its own route."""
    await session.set_variables(fallback_variables(RouteStatus.ERROR, reason))
    return {"status": RouteStatus.ERROR.value, "reason": reason}


async def run_session(
    session: AgiSession, app: App, *, over_capacity: bool = False, routes: Routes | None = None, observer: CallObserver | None = None
) -> None:
    """Run the handler the script names in ``routes`` (``route`` and ``outcome``
    when None) and log one line for the session (and tell ``observer``).

    Never raises: AGI errors, limits and bugs all end here with a log line,
    and, where the channel can still hear us, a safe fallback route.
    """
    started = time.perf_counter()
    script = session.script
    routes = routes or _BUILTIN
    handler = routes.get(script)
    always = routes.always_served(script)
    try:
        if over_capacity and not always:
            result = await answer_fallback(session, "server busy: max_sessions reached")
        elif handler is not None:
            result = await handler(session, app)
        else:
            logger.warning("unknown AGI script %r from peer=%s (known: %s)", script, session.peer, ", ".join(routes.names()))
            result = await answer_fallback(session, f"unknown AGI script {script!r}")
    except _cancelled_error():
        reason = getattr(session, "end_reason", "") or "cancelled"
        if session.fallback_on_cancel and not always:
            await _last_fallback(session, reason)
        log_session_error(session, reason, _ms_since(started))
        if observer is not None:
            observer.call_failed(script)
        return
    except AgiError as exc:
        log_session_error(session, str(exc) or type(exc).__name__, _ms_since(started))
        if observer is not None:
            observer.call_failed(script)
        return
    except Exception as exc:  # a bug must not leave the call without a route
        logger.exception("handler %r failed for peer=%s", script, session.peer)
        try:
            await answer_fallback(session, f"internal error: {type(exc).__name__}")
        except (AgiError, ValueError):
            pass
        log_session_error(session, f"internal error: {exc!r}", _ms_since(started))
        if observer is not None:
            observer.call_failed(script)
        return
    elapsed = time.perf_counter() - started
    log_call(session, result, elapsed * 1000)
    if observer is not None:
        observer.call_answered(script, result, elapsed)


async def _last_fallback(session: AgiSession, reason: str) -> None:
    """The fallback answer for a call the server stops serving, if it can be given in time."""
    import asyncio  # a cancelled session: an event loop runs it

    try:
        await asyncio.wait_for(answer_fallback(session, reason), FALLBACK_TIMEOUT_S)
    except (AgiError, TimeoutError, asyncio.CancelledError):
        pass  # the server drops the connection next: the dialplan goes on without our variables


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
