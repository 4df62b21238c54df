"""The FastAGI server: accepts Asterisk's connections and runs one session each."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Callable

from .app import App
from .config import Config, load_config
from .connection import FastAgiConnection
from .handlers import FALLBACK_TIMEOUT_S, run_session
from .signals import ServerSignals

logger = logging.getLogger("crmroute.server")

# After the grace period (or a second stop signal), how long sessions still
# running may take to give the fallback answer before they are dropped.
FALLBACK_S = FALLBACK_TIMEOUT_S + 0.5


class FastAgiServer:
    """Listens for FastAGI connections; see :func:`serve` for the signal handling."""

    def __init__(self, app: App, *, sync_worker: bool = False):
        self.app = app
        # Whether each app (the first, and each one a reload builds) runs the outbox's sync worker.
        self._sync_worker = sync_worker
        self._sessions: set[FastAgiConnection] = set()
        self._served = 0  # sessions counted against max_sessions
        self._server: asyncio.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it serves on, once started
        self._allowed = app.config.server.allowed_networks
        self._admitted: dict[str, bool] = {}

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
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allowed)

    def session_opened(self, session: FastAgiConnection) -> bool:
        """Register a session; False when it is over ``max_sessions`` (answered at once, not queued)."""
        self._sessions.add(session)
        if self._served >= self.app.config.server.max_sessions:
            return False
        self._served += 1
        return True

    def session_closed(self, session: FastAgiConnection) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            if not session.over_capacity:
                self._served -= 1

    async def dispatch(self, session: FastAgiConnection) -> None:
        await run_session(session, session.app, over_capacity=session.over_capacity)

    # -- life cycle -------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Bind and start accepting (``port=0`` picks a free port; see :attr:`port`)."""
        settings = self.app.config.server
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FastAgiConnection(self),
            host if host is not None else settings.host,
            port if port is not None else settings.port,
            reuse_address=True,
            backlog=1024,
        )
        if self._sync_worker:
            self.app.start_sync_worker()
        logger.info(
            "listening on %s (backend=%s, peers allowed: %s)",
            ", ".join(self.addresses), self.app.backend.name, ", ".join(settings.allowed_peers),
        )

    @property
    def addresses(self) -> list[str]:
        if self._server is None:
            return []
        return [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self._server.sockets]

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def shutdown(self, grace_ms: int | None = None, now: asyncio.Event | None = None) -> None:
        """Stop accepting, let sessions in flight finish within the grace period, then end the rest.

        ``now`` set (a second stop signal) cuts the grace period short. Sessions
        still running then get the fallback answer if they have not answered
        (within :data:`FALLBACK_S`), and are dropped.
        """
        if grace_ms is None:
            grace_ms = self.app.config.server.shutdown_grace_ms
        if self._server is not None:
            self._server.close()
        tasks = self._running_tasks()
        if tasks:
            logger.info("shutting down: waiting up to %d ms for %d session(s)", grace_ms, len(tasks))
            await _wait_for_tasks(tasks, grace_ms / 1000, now)
        tasks = self._running_tasks()
        if tasks:
            self.stop_now()
            await _wait_for_tasks(tasks, FALLBACK_S, None)
        for session in list(self._sessions):
            session.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await self.app.aclose()

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
            new_app = App.from_config(config)
        except Exception as exc:  # a bad reload must never stop the server
            logger.error("reload failed, keeping the running configuration: %s", exc)
            return False
        if self._sync_worker:
            try:
                new_app.start_sync_worker()
            except Exception as exc:
                logger.error("reload failed, keeping the running configuration: %s", exc)
                await new_app.aclose()
                return False
        old_app, self.app = self.app, new_app
        self._allowed = new_app.config.server.allowed_networks
        self._admitted = {}
        if (config.server.host, config.server.port) != (old_app.config.server.host, old_app.config.server.port):
            logger.warning("server.host/server.port changes take effect on restart only")
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
) -> None:
    """Run the server until SIGTERM or SIGINT; SIGHUP reloads the config file (see :mod:`.signals`).

    ``hangup_seen``: a SIGHUP came before the event loop ran (it is carried out once serving).
    """
    loop = asyncio.get_running_loop()
    signals = ServerSignals(loop, hangup_seen=hangup_seen)  # before anything slow
    try:
        server = FastAgiServer(App.from_config(config), sync_worker=True)
        if signals.stop.is_set():
            await server.app.aclose()
            return
        await server.start(host, port)

        def reload() -> None:
            loop.create_task(server.reload(config.source or None))

        signals.serving(reload, server.stop_now)
        if on_ready is not None:
            on_ready(server)
        await signals.stop.wait()
        await server.shutdown(now=signals.now)
        logger.info("stopped")
    finally:
        signals.remove()


async def _wait_for_tasks(tasks: list[asyncio.Task[None]], timeout: float, now: asyncio.Event | None) -> None:
    """Until every task is done, ``timeout`` seconds pass, or ``now`` is set; never cancels the tasks."""
    waiters: list[asyncio.Future] = [asyncio.ensure_future(asyncio.wait(tasks))]
    if now is not None:
        waiters.append(asyncio.ensure_future(now.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
