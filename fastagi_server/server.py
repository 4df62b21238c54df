"""The FastAGI server: accepts Asterisk's connections and runs one session each."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import TYPE_CHECKING, Callable

from .app import App
from .config import Config, address_allowed, load_config
from .calllog import call_logger
from .connection import FastAgiConnection, format_peer
from .event_loop import loop_name
from .listener import Listener, bind, connection_budget, raise_open_file_limit
from .notify import SystemdNotifier
from .logs import RepeatedWarning
from .call_counts import CallCounts
from .handlers import FALLBACK_TIMEOUT_S, Handler, Routes, builtin_routes, run_session
from .limits import limit_name
from .signals import ServerSignals
from .version import build_info

if TYPE_CHECKING:
    from .metrics import ServerMetrics
    from .monitor import MonitorServer

logger = logging.getLogger("crmroute.server")

# After the grace period (or a second stop signal), how long sessions still
# running may take to give the fallback answer before they are dropped.
FALLBACK_S = FALLBACK_TIMEOUT_S + 0.5

# How a server makes its app, at start and on each reload: App.from_config
# unless an embedding program brings its own backend, writer or history.
AppBuilder = Callable[..., App]


class FastAgiServer:
    """Listens for FastAGI connections; see :func:`serve` for the signal handling.

    A connection first sends its header block: until it is complete it counts
    against ``server.max_connecting`` only (the one that has waited longest is
    dropped past it), then as a session against ``server.max_sessions``. All
    connections together stay within a budget under the open-file limit
    (:mod:`.listener`).
    """

    def __init__(
        self,
        app: App,
        *,
        delivery_worker: bool = False,
        warning_interval_s: float = 10.0,
        routes: Routes | None = None,
        build_app: AppBuilder = App.from_config,
    ):
        self.app = app
        # The AGI scripts served, by name (route and outcome, and any added).
        self.routes = routes or builtin_routes()
        self._build_app = build_app
        # Whether each app (the first, and each one a reload builds) runs the outbox's delivery worker.
        self._delivery_worker = delivery_worker
        self._sessions: set[FastAgiConnection] = set()  # header block complete
        self._connecting: dict[FastAgiConnection, None] = {}  # header block not complete yet, oldest first
        self._served = 0  # sessions counted against max_sessions
        self._open = 0  # connections accepted and not yet closed
        self._budget = 0  # connections allowed open at once (set at start)
        self._listener: Listener | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it serves on, once started
        self._allowed = app.config.server.allowed_networks
        self._admitted: dict[str, bool] = {}
        # Warnings a peer can make come by the thousand: the first few, then a summary per interval.
        self.refused_peers = RepeatedWarning(logger, "refused peers", interval_s=warning_interval_s)
        self.ended_sessions = RepeatedWarning(call_logger, "session-ended", interval_s=warning_interval_s)
        self._accept_errors = RepeatedWarning(logger, "accept errors", interval_s=warning_interval_s)
        self.stopping = False
        self.build = build_info()
        # Sessions and connections ended by a limit, by the limit's setting (for the metrics).
        self.limits_hit: Counter[str] = Counter()
        # The metrics and health listener, when [metrics] listen names one.
        self.metrics: ServerMetrics | None = None
        self.call_counts: CallCounts | None = None  # counted per call only while the metrics are served
        self.monitor: MonitorServer | None = None
        self.refused_on_monitor = RepeatedWarning(logger, "refused metrics peers", interval_s=warning_interval_s)

    def add_route(self, name: str, handler: Handler, *, always_served: bool = False) -> None:
        """Serve ``agi://host/<name>`` with ``handler``; a name already served is refused (:class:`~.handlers.RouteExists`)."""
        self.routes.add(name, handler, always_served=always_served)

    # -- connection bookkeeping (called by FastAgiConnection) ----------------

    def admits(self, peername: object) -> bool:
        """True when the peer's address is in ``server.allowed_peers``."""
        if not isinstance(peername, tuple):
            return False
        host = str(peername[0])
        # The same few PBXs connect for every call: decide once per address.
        admitted = self._admitted.get(host)
        if admitted is None:
            admitted = self._in_allowed_networks(host)
            if len(self._admitted) >= 1024:
                self._admitted.clear()
            self._admitted[host] = admitted
        return admitted

    def _in_allowed_networks(self, host: str) -> bool:
        return address_allowed(host, self._allowed)

    def limit_hit(self, reason: str) -> None:
        """A session's limit ended it (or its command): counted by the setting behind it."""
        self.limits_hit[limit_name(reason)] += 1

    def connection_opened(self, connection: FastAgiConnection) -> None:
        """An admitted connection, still to send its header block."""
        self._connecting[connection] = None
        limit = self.app.config.server.max_connecting
        if len(self._connecting) > limit:
            self.limits_hit["max_connecting"] += 1
            self._drop_oldest_connecting(f"more than {limit} connections still sending their header block")

    def headers_received(self, session: FastAgiConnection) -> bool:
        """The header block is complete: count the session; False when it is over
        ``max_sessions`` (answered at once, not queued)."""
        self._connecting.pop(session, None)
        self._sessions.add(session)
        if self._served >= self.app.config.server.max_sessions:
            self.limits_hit["max_sessions"] += 1
            return False
        self._served += 1
        return True

    def connection_closed(self, connection: FastAgiConnection) -> None:
        """Called once per accepted connection, whatever ended it."""
        self._connecting.pop(connection, None)
        if connection in self._sessions:
            self._sessions.discard(connection)
            if not connection.over_capacity:
                self._served -= 1
        self._open -= 1
        if self._listener is not None and self._open < self._budget:
            self._listener.resume()

    def _drop_oldest_connecting(self, reason: str) -> None:
        oldest = next(iter(self._connecting))
        del self._connecting[oldest]
        oldest.drop(reason)

    def _accepted(self, sock: socket.socket) -> None:
        """A new connection from the listener: within the budget, or the listener pauses."""
        self._open += 1
        if self._open >= self._budget:
            assert self._listener is not None
            self._listener.pause()  # resumed as connections close
            self.limits_hit["max_connections"] += 1
            if self._connecting:  # a peer still sending headers gives way to a call that may be waiting
                self._drop_oldest_connecting(f"{self._budget} connections open (server.max_connections or the open-file limit)")
        assert self.loop is not None
        self.loop.create_task(self._connect(sock))

    async def _connect(self, sock: socket.socket) -> None:
        assert self.loop is not None
        try:
            await self.loop.connect_accepted_socket(lambda: FastAgiConnection(self), sock)
        except OSError as exc:  # the peer left before the transport was made
            logger.debug("connection lost while being set up: %s", exc)
            sock.close()
            self._open -= 1
            if self._listener is not None and self._open < self._budget:
                self._listener.resume()

    async def dispatch(self, session: FastAgiConnection) -> None:
        await run_session(session, session.app, over_capacity=session.over_capacity, routes=self.routes, observer=self.call_counts)

    # -- life cycle -------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Bind and start accepting (``port=0`` picks a free port; see :attr:`port`)."""
        settings = self.app.config.server
        loop = self.loop = asyncio.get_running_loop()
        self._budget = connection_budget(settings.max_connections)
        sockets = bind(host if host is not None else settings.host, port if port is not None else settings.port)
        self._listener = Listener(loop, sockets, self._accepted, self._accept_errors)
        if self.app.config.metrics.listen:
            self._start_monitor()  # before anything runs in the background: one that cannot bind stops the start
        if self._delivery_worker:
            self.app.start_delivery_worker()
        self.app.start_mirror()
        logger.info(
            "listening on %s (backend=%s, event loop=%s, peers allowed: %s; at most %d connections open)",
            ", ".join(self.addresses), self.app.backend.name, loop_name(loop), ", ".join(settings.allowed_peers), self._budget,
        )
        if self._budget < settings.max_sessions + settings.max_connecting:
            logger.warning(
                "the open-file limit allows %d connections open at once, fewer than max_sessions + max_connecting (%d)",
                self._budget, settings.max_sessions + settings.max_connecting,
            )

    def _start_monitor(self) -> None:
        """Serve /metrics, /healthz and /readyz on ``metrics.listen``; one that cannot bind stops the start."""
        from .metrics import ServerMetrics
        from .monitor import MonitorServer

        settings = self.app.config.metrics
        self.metrics = ServerMetrics(self, self.build)
        try:
            self.monitor = MonitorServer(settings.address, self.metrics, settings.allowed_networks, self.refused_on_monitor)
        except OSError as exc:
            if self._listener is not None:
                self._listener.close()
            raise OSError(exc.errno, f"metrics.listen {settings.listen}: {exc.strerror}") from None
        self.monitor.start()
        self.call_counts = CallCounts(self.routes.names())  # the scripts registered by now (add_route comes before start)
        logger.info("metrics and health on %s (/metrics, /healthz, /readyz; peers allowed: %s)", self.monitor.url, ", ".join(settings.allowed_peers))

    @property
    def sessions_in_flight(self) -> int:
        """Sessions being served (header block complete)."""
        return len(self._sessions)

    @property
    def connections_connecting(self) -> int:
        return len(self._connecting)

    @property
    def addresses(self) -> list[str]:
        """Where it listens (empty once it stopped listening)."""
        if self._listener is None or self.stopping:
            return []
        return [format_peer(s.getsockname()) for s in self._listener.sockets]

    @property
    def port(self) -> int:
        assert self._listener is not None, "server not started"
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    @property
    def active_sessions(self) -> int:
        """Connections open: sessions, and connections still sending their header block."""
        return len(self._sessions) + len(self._connecting)

    async def shutdown(self, grace_ms: int | None = None, now: asyncio.Event | None = None) -> None:
        """Stop accepting, let sessions in flight finish within the grace period, then end the rest.

        ``now`` set (a second stop signal) cuts the grace period short. Sessions
        still running then get the fallback answer if they have not answered
        (within :data:`FALLBACK_S`), and are dropped.
        """
        if grace_ms is None:
            grace_ms = self.app.config.server.shutdown_grace_ms
        self.stopping = True  # /readyz says so from now on
        if self._listener is not None:
            self._listener.close()
        tasks = self._running_tasks()
        if tasks:
            logger.info("shutting down: waiting up to %d ms for %d session(s)", grace_ms, len(tasks))
            await _wait_for_tasks(tasks, grace_ms / 1000, now)
        tasks = self._running_tasks()
        if tasks:
            self.stop_now()
            await _wait_for_tasks(tasks, FALLBACK_S, None)
        for connection in [*self._sessions, *self._connecting]:
            connection.abort()
        for repeated in (self.refused_peers, self.ended_sessions, self._accept_errors, self.refused_on_monitor):
            repeated.flush()  # what was being counted is told before the server goes
        await self.app.aclose()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.stop)

    def stop_now(self) -> None:
        """End every session now; those that have not answered give the fallback answer first."""
        for session in list(self._sessions):
            session.stop_now()

    def _running_tasks(self) -> list[asyncio.Task[None]]:
        return [s.task for s in self._sessions if s.task is not None and not s.task.done()]

    async def reload(self, path: str | None) -> bool:
        """Re-read the config and swap the app; on any error keep the old one."""
        try:
            config = load_config(path)
            new_app = self._build_app(config, serving=self.app.serving)
        except Exception as exc:  # a bad reload must never stop the server
            logger.error("reload failed, keeping the running configuration: %s", exc)
            return False
        if self._delivery_worker:
            try:
                new_app.start_delivery_worker()
            except Exception as exc:
                logger.error("reload failed, keeping the running configuration: %s", exc)
                await new_app.aclose()
                return False
        old_app, self.app = self.app, new_app
        new_app.adopt(old_app)
        new_app.start_mirror()
        self._allowed = new_app.config.server.allowed_networks
        self._admitted = {}
        if (config.server.host, config.server.port) != (old_app.config.server.host, old_app.config.server.port):
            logger.warning("server.host/server.port changes take effect on restart only")
        if config.server.event_loop != old_app.config.server.event_loop:
            logger.warning("server.event_loop changes take effect on restart only")
        if config.metrics != old_app.config.metrics:
            logger.warning("[metrics] changes take effect on restart only")
        logger.info("configuration reloaded from %s", config.source or "built-in defaults")
        asyncio.get_running_loop().create_task(self._close_when_idle(old_app))
        return True

    async def _close_when_idle(self, app: App) -> None:
        """Close a replaced app once no session uses it any more."""
        limit = app.config.limits.session_timeout_ms / 1000
        waited = 0.0
        while waited < limit and any(s.app is app for s in self._sessions):
            await asyncio.sleep(0.05)
            waited += 0.05
        await app.aclose()


async def serve(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[FastAgiServer], None] | None = None,
    hangup_seen: bool = False,
    exiting: bool = False,
    routes: Routes | None = None,
    build_app: AppBuilder = App.from_config,
) -> None:
    """Run the server until SIGTERM or SIGINT; SIGHUP reloads the config file (see :mod:`.signals`).

    ``routes``: the AGI scripts served (route and outcome when None).
    ``build_app(config, serving=True)`` makes the app at start and on each
    reload (an embedding program's own backend, writer or history).
    ``hangup_seen``: a SIGHUP came before the event loop ran (it is carried out once serving).
    ``exiting``: the process ends with the server, so those signals are ignored
    from the end of the shutdown on (a late one would turn a clean stop into
    "killed by a signal").
    Under systemd (``Type=notify``) it says READY once listening, STOPPING
    when the shutdown starts, and keeps the watchdog fed (:mod:`.notify`).
    """
    loop = asyncio.get_running_loop()
    signals = ServerSignals(loop, hangup_seen=hangup_seen)  # before anything slow
    raise_open_file_limit()  # more connections fit under a higher limit (see .listener)
    systemd = SystemdNotifier()
    try:
        server = FastAgiServer(build_app(config, serving=True), delivery_worker=True, routes=routes, build_app=build_app)
        if signals.stop.is_set():
            await server.app.aclose()
            return
        await server.start(host, port)

        async def reload() -> None:
            systemd.reloading()
            await server.reload(config.source or None)
            systemd.ready(f"serving on {', '.join(server.addresses)}")

        def start_reload() -> None:
            loop.create_task(reload())

        signals.serving(start_reload, server.stop_now)
        systemd.ready(f"serving on {', '.join(server.addresses)}")
        stopped = asyncio.Event()  # fed through the shutdown too: sessions may take the grace period
        watchdog = loop.create_task(systemd.keep_alive(stopped), name="systemd watchdog")
        if on_ready is not None:
            on_ready(server)
        await signals.stop.wait()
        systemd.stopping()
        await server.shutdown(now=signals.now)
        stopped.set()
        await watchdog
        logger.info("stopped")
    finally:
        systemd.close()
        signals.remove(ignore=exiting)


async def _wait_for_tasks(tasks: list[asyncio.Task[None]], timeout: float, now: asyncio.Event | None) -> None:
    """Until every task is done, ``timeout`` seconds pass, or ``now`` is set; never cancels the tasks."""
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(asyncio.wait(tasks))]
    if now is not None:
        waiters.append(asyncio.ensure_future(now.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
