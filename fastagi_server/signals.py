"""The server's signals, for its whole life: start, serving and shutdown.

* SIGTERM or SIGINT: stop. Sessions in flight may finish within
  ``server.shutdown_grace_ms``.
* A second SIGTERM or SIGINT: stop now. Sessions that have not answered yet
  get the fallback answer (``CRM_ROUTE_STATUS=ERROR``), then every
  connection closes.
* SIGHUP: reload the configuration. One that comes while the server is
  starting is carried out once it serves; one during shutdown is ignored.

The handlers are installed before anything slow happens at start and are
kept until the shutdown is complete: a signal's default action (ending the
process at once) would cut every call in flight.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    # Loaded by the server anyway; a process AGI needs EarlyHangup before asyncio is loaded.
    import asyncio

logger = logging.getLogger("crmroute.server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class EarlyHangup:
    """Records a SIGHUP that arrives before the real handler is in place.

    Asterisk sends a process AGI SIGHUP when the caller hangs up, which may
    be while it is still starting (before pyst2 installs its handler); an
    admin may send ``serve`` one right after starting it. The default action
    would end the process at once.
    """

    def __init__(self) -> None:
        self.seen = False
        signal.signal(signal.SIGHUP, self._record)

    def _record(self, signum: int, frame: object) -> None:
        self.seen = True


class ServerSignals:
    """Turns signals into :attr:`stop` and :attr:`now` (events) and reloads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, hangup_seen: bool = False):
        import asyncio

        self._loop = loop
        self.stop = asyncio.Event()
        self.now = asyncio.Event()
        self._reload: Callable[[], None] | None = None
        self._stop_now: Callable[[], None] | None = None
        self._reload_pending = hangup_seen  # a SIGHUP came before this was installed
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._hangup_signal)

    def serving(self, reload: Callable[[], None], stop_now: Callable[[], None]) -> None:
        """Start-up is over: SIGHUP now reloads (at once, if one came meanwhile);
        a second stop signal calls ``stop_now`` as it comes."""
        self._reload = reload
        self._stop_now = stop_now
        if self._reload_pending and not self.stop.is_set():
            self._reload_pending = False
            logger.info("SIGHUP received while starting: reloading now")
            reload()

    def _stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.stop.is_set():
            logger.info("%s received: stopping (a second one stops at once)", name)
            self.stop.set()
        elif not self.now.is_set():
            self.now.set()
            if self._stop_now is not None:
                self._stop_now()  # at once: no reply that comes in meanwhile is taken as an answer
            logger.warning("second stop signal (%s): stopping now; calls not yet answered get the fallback answer", name)

    def _hangup_signal(self) -> None:
        if self.stop.is_set():
            logger.info("SIGHUP ignored: the server is shutting down")
        elif self._reload is None:
            self._reload_pending = True
        else:
            self._reload()

    def remove(self, *, ignore: bool = False) -> None:
        """Give the signals back their default action, or (``ignore``) have them ignored."""
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            self._loop.remove_signal_handler(signum)
            if ignore:
                signal.signal(signum, signal.SIG_IGN)
