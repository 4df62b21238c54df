"""Accepting connections without ever running out of file descriptors.

asyncio's own server accepts as long as the kernel has connections queued;
once the process hits its open-file limit, each failed accept logs a
traceback and schedules a retry (200,000 tracebacks in 18 s were seen), and
every descriptor the server needs for anything else fails too. Here the
server keeps a budget of connections under the limit (:func:`connection_budget`,
after :func:`raise_open_file_limit`), and :class:`Listener` stops accepting
while it is spent: further connections wait in the kernel's queue, and an
accept that fails all the same pauses accepting a moment, with one log line
per interval (:class:`~.logs.RepeatedWarning`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Callable

from .logs import RepeatedWarning

logger = logging.getLogger("crmroute.server")

# Connections taken per readiness event: small, so that connections accepted
# together never overshoot the budget by much before their bookkeeping runs.
ACCEPT_BURST = 32
# The kernel's queue of connections not yet accepted.
LISTEN_BACKLOG = 1024
# Descriptors kept for everything but connections (files, the CRM's HTTP
# connections, logs, the event loop), at most a quarter of the limit.
DESCRIPTOR_RESERVE = 128
# After an accept failed for want of a resource, how long before trying again.
ACCEPT_RETRY_S = 0.1
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft open-file limit to its hard limit; returns (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


def connection_budget(max_connections: int) -> int:
    """Connections open at once: ``server.max_connections``, capped below the open-file limit."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - min(DESCRIPTOR_RESERVE, soft // 4)))


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` names (``port=0``: a free port each)."""
    sockets = []
    try:
        for family, kind, proto, _name, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does: IPv4 has its own
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener:
    """Accepts on ``sockets`` and hands each connection to ``accepted``, until paused or closed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        accepted: Callable[[socket.socket], None],
        accept_errors: RepeatedWarning,
    ):
        self._loop = loop
        self.sockets = sockets
        self._accepted = accepted
        self._errors = accept_errors
        self._reading = False
        self._paused = False
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self.resume()

    def pause(self) -> None:
        """Stop accepting (the budget is spent); queued connections wait in the kernel."""
        self._paused = True
        self._stop_reading()

    def resume(self) -> None:
        self._paused = False
        if not self._closed and self._retry is None and not self._reading:
            for sock in self.sockets:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
            self._reading = True

    def close(self) -> None:
        self._closed = True
        self._stop_reading()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            sock.close()

    def _stop_reading(self) -> None:
        if self._reading:
            for sock in self.sockets:
                self._loop.remove_reader(sock.fileno())
            self._reading = False

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            if self._paused or self._closed:
                return
            try:
                connection, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._failed(exc)
                return
            connection.setblocking(False)
            self._accepted(connection)

    def _failed(self, exc: OSError) -> None:
        """One line per interval however often it fails; out of resources, a short pause."""
        self._errors.warning(exc.strerror or type(exc).__name__, "accept failed: %s", exc)
        if exc.errno in _OUT_OF_RESOURCES:
            self._stop_reading()
            self._retry = self._loop.call_later(ACCEPT_RETRY_S, self._retried)

    def _retried(self) -> None:
        self._retry = None
        if not self._paused:
            self.resume()
