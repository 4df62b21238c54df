"""The systemd notify protocol (``Type=notify``), spoken directly on ``$NOTIFY_SOCKET``.

systemd hands a service the address of a datagram socket; each datagram is
newline-separated ``KEY=value`` lines (sd_notify(3)). ``READY=1`` once the
server listens (systemd starts what is ordered after it only then),
``STOPPING=1`` when it starts shutting down, ``RELOADING=1`` around a SIGHUP's
reload, and ``WATCHDOG=1`` every half ``WatchdogSec=`` while the event loop
runs (a loop that hangs stops sending, and systemd restarts the service).
Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Mapping

logger = logging.getLogger("crmroute.server")


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace: its address starts with a NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self.watchdog_s = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> bool:
        """Send one datagram; False (logged once at DEBUG) when it cannot be sent: never an error for the server."""
        if not self._address:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            logger.debug("systemd notify (%s) not sent: %s", ", ".join(lines), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: sessions in flight finish first")

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """``WATCHDOG=1`` every half watchdog interval until ``stop`` (nothing without ``WatchdogSec=``)."""
        if self.watchdog_s is None or not self._address:
            return
        while not stop.is_set():
            self.notify("WATCHDOG=1")
            try:
                await asyncio.wait_for(stop.wait(), self.watchdog_s / 2)
            except TimeoutError:
                pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, when it is meant for this process (``$WATCHDOG_PID``, if set, is ours)."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())
