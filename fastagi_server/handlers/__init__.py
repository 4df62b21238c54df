"""The AGI entry points, by script name, and the one place a session is run.

``agi://router:4573/route`` runs :func:`route_call`, ``.../outcome`` (from the
hangup handler) :func:`record_outcome`; a script name nobody
registered gets ``CRM_ROUTE_STATUS=ERROR`` so the dialplan falls through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

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

Handler = Callable[[AgiSession, "App"], Awaitable[dict[str, str]]]

HANDLERS: dict[str, Handler] = {
    "route": route_call,
    "outcome": record_outcome,
}
# How long a call the server stops serving may take to get the fallback answer.
FALLBACK_TIMEOUT_S = 1.0
# Served even past server.max_sessions: recording an outcome never waits on the
# CRM, and turning it away would lose the call's outcome.
ALWAYS_SERVED = frozenset({"outcome"})


async def answer_fallback(session: AgiSession, reason: str) -> dict[str, str]:
    """Set the whole contract with ``ERROR`` so the dialplan takes its own route."""
    await session.set_variables(fallback_variables(RouteStatus.ERROR, reason))
    return {"status": RouteStatus.ERROR.value, "reason": reason}


async def run_session(session: AgiSession, app: App, *, over_capacity: bool = False, observer: CallObserver | None = None) -> None:
    """Run the handler the script names and log one line for the session (and tell ``observer``).

    Never raises: AGI errors, limits and bugs all end here with a log line,
    and, where the channel can still hear us, a safe fallback route.
    """
    started = time.perf_counter()
    script = session.script
    try:
        if over_capacity and script not in ALWAYS_SERVED:
            result = await answer_fallback(session, "server busy: max_sessions reached")
        elif script in HANDLERS:
            result = await HANDLERS[script](session, app)
        else:
            logger.warning("unknown AGI script %r from peer=%s (known: %s)", script, session.peer, ", ".join(sorted(HANDLERS)))
            result = await answer_fallback(session, f"unknown AGI script {script!r}")
    except asyncio.CancelledError:
        reason = getattr(session, "end_reason", "") or "cancelled"
        if session.fallback_on_cancel and script not in ALWAYS_SERVED:
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
    try:
        await asyncio.wait_for(answer_fallback(session, reason), FALLBACK_TIMEOUT_S)
    except (AgiError, TimeoutError, asyncio.CancelledError):
        pass  # the server drops the connection next: the dialplan goes on without our variables


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
