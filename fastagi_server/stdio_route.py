"""The classic AGI's ``route`` without an event loop.

A process AGI starts a Python for every call, and every module it imports is
paid for on every call: asyncio alone (with ssl, socket and selectors) costs
about as much as the rest of the route. With the local directory there is
nothing to wait for at once, so here the same routing code runs on no event
loop at all:

* the directory is read on the calling thread (:class:`DirectoryNow`);
* each command is written and its reply read in place (:class:`SyncStdioSession`);
* the routing deadline is kept by an interval timer (:class:`AlarmDeadlines`),
  under the session's own limit that :func:`.stdio.main` sets;
* the coroutines of the router and the handlers, which then never wait on
  anything, are run to their end by :func:`run_now`.

Backends that talk to a CRM over the network (and policies that read the call
history) take the asyncio path of :mod:`.stdio` as before.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Coroutine, Sequence, TypeVar, cast

from crmlookup.phone import PhoneNumber
from crmlookup.records import LookupResult

from .stdio_session import StdioSession

if TYPE_CHECKING:
    from crmlookup.local_directory import LocalDirectory
    from dialplan import Router

    from .app import App
    from .config import Config

T = TypeVar("T")


class EventLoopNeeded(RuntimeError):
    """A coroutine of the route path waited on something only an event loop can finish (a bug)."""


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, and return its result.

    Every await on the event-loop-free route path reaches a plain function
    (a directory query, a blocking read), so the first ``send`` finishes it.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise EventLoopNeeded("the classic AGI's route path waited on something that needs an event loop")


def _deadline_passed(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("routing deadline")


class _AlarmScope:
    """``async with``: its body is cut off with TimeoutError at ``deadline_at`` (time.monotonic)."""

    def __init__(self, deadline_at: float):
        self._deadline_at = deadline_at
        self._armed = False
        self._session_left = 0.0
        self._entered = 0.0
        self._previous: Any = None

    async def __aenter__(self) -> None:
        remaining = self._deadline_at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("routing deadline")
        self._session_left = signal.getitimer(signal.ITIMER_REAL)[0]
        self._entered = time.monotonic()
        if self._session_left and self._session_left <= remaining:
            return  # the session's own limit comes first, and ends the session
        self._previous = signal.signal(signal.SIGALRM, _deadline_passed)
        signal.setitimer(signal.ITIMER_REAL, remaining)
        self._armed = True

    async def __aexit__(self, *exc: object) -> None:
        if not self._armed:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        if self._session_left:  # the session's limit again, less the time spent here
            left = self._session_left - (time.monotonic() - self._entered)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


class AlarmDeadlines:
    """The routing deadline on ``time.monotonic``, each wait cut off by ``SIGALRM``
    (the :class:`~dialplan.deadlines.Deadlines` of a process with no event loop)."""

    def now(self) -> float:
        return time.monotonic()

    def within(self, deadline_at: float) -> _AlarmScope:
        return _AlarmScope(deadline_at)


class DirectoryNow:
    """The local directory read on the calling thread: a process per call has nothing else to do meanwhile."""

    def __init__(self, directory: LocalDirectory):
        self._directory = directory
        self.name = directory.name

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        return self._directory.lookup_sync(number, modules)

    async def aclose(self) -> None:
        self._directory.close()


class SyncStdioSession(StdioSession):
    """The classic AGI session with each reply read in place (no thread, no event loop).

    A reply whose wait the routing deadline cut off is still owed: it is read,
    and dropped, before the next command is written (one command, one reply).
    """

    _reply_owed = False

    async def _exchange(self, command: str) -> str:
        if self._reply_owed:
            self._read_reply()  # under the session's limit, like every read
            self._reply_owed = False
        self._send(command)
        self._reply_owed = True
        reply = self._read_reply()
        self._reply_owed = False
        return reply


class RouteOnlyApp:
    """What ``route`` uses of :class:`~.app.App`: the router, and the call events
    (the local directory has none)."""

    def __init__(self, config: Config, router: Router):
        self.config = config
        self.router = router

    def call_ringing(self, call: object, decision: object) -> None:
        return None


def routes_without_event_loop(config: Config, script: str) -> bool:
    """True when this call can take the event-loop-free path: ``route`` on the local
    directory, with no policy reading the call history (the outbox's)."""
    from dialplan.router import last_agent_keys

    return script == "route" and config.crm.backend == "local" and not last_agent_keys(config.routing)


def route_now(session: SyncStdioSession, config: Config) -> None:
    """Route one call on the local directory, without an event loop (see the module's doc)."""
    import logging

    from crmlookup.local_directory import LocalDirectory
    from dialplan.router import Router

    from .handlers import answer_fallback, run_session

    try:
        directory = LocalDirectory.open(config.directory.path)
    except Exception as exc:  # e.g. the directory file is missing: the call still gets its fallback route
        logging.getLogger("crmroute.stdio").error("cannot open the CRM backend: %s", exc)
        run_now(answer_fallback(session, f"backend unavailable: {exc}"))
        return
    try:
        router = Router(config.routing, DirectoryNow(directory), deadlines=AlarmDeadlines(), explain=False)
        app = cast("App", RouteOnlyApp(config, router))  # route_call reads only the router and call_ringing
        run_now(run_session(session, app))
    finally:
        directory.close()
