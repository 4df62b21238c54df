"""The configured application: settings, the CRM backend, the router, the outbox.

This is the one piece of state the server holds; a SIGHUP swaps it for a
freshly built one while calls in flight finish on the old.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crmlookup.backend import CrmBackend
from crmlookup.cache import CachedBackend
from crmlookup.factory import live_backend, open_backend, open_writer
from dialplan.history import CallHistory
from dialplan.router import Router, last_agent_keys, require_history

from .config import Config

if TYPE_CHECKING:
    # The outbox and the writers load on first use: a process AGI that only
    # routes a call never needs them (each costs milliseconds of import per call).
    from crmlookup.mirror.backend import MirroredBackend
    from crmlookup.writer import CrmWriter
    from dialplan.outbox import Outbox, OutboxCallHistory, SyncWorker

logger = logging.getLogger("crmroute.server")


@dataclass
class App:
    config: Config
    backend: CrmBackend
    router: Router
    # The server: it keeps the CRM's mirror fresh and reads the CRM's metadata ahead.
    serving: bool = False
    # Opened on first use: a lookup or a config check never touches the outbox file.
    _outbox: Outbox | None = field(default=None, repr=False)
    _writer: CrmWriter | None = field(default=None, repr=False)
    _worker: SyncWorker | None = field(default=None, repr=False)
    _worker_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _worker_stop: asyncio.Event | None = field(default=None, repr=False)
    _warming: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: Config, history: CallHistory | None = None, *, serving: bool = False) -> "App":
        """Open the backend and build the router.

        ``history`` (recorded call outcomes) serves the LastAgent rule; when a
        policy uses that rule and none is given, the outbox's own is opened.
        ``serving``: this is the server, which keeps the CRM's mirror up to
        date (:meth:`start_mirror`); every other process only reads it.
        Raises CrmError if the backend cannot open, OutboxError if the outbox
        cannot, ValueError if the routing policy needs something missing.
        """
        outbox = None
        if history is None and last_agent_keys(config.routing):
            from dialplan.outbox import Outbox, OutboxCallHistory

            outbox = Outbox.open(config.outbox.resolved_path)
            history = OutboxCallHistory(outbox)
        require_history(config.routing, history)  # before the backend is opened
        backend = open_backend(
            config.crm, config.directory, config.zoho, config.cache,
            deadline_ms=config.routing.deadline_ms, mirror=config.mirror, region=config.routing.default_region, keep_mirror=serving,
        )
        router = Router(config.routing, backend, history=history)
        return cls(config=config, backend=backend, router=router, serving=serving, _outbox=outbox)

    @property
    def outbox(self) -> Outbox:
        """The outbox file (opened now if need be); raises OutboxError."""
        if self._outbox is None:
            from dialplan.outbox import Outbox

            self._outbox = Outbox.open(self.config.outbox.resolved_path)
        return self._outbox

    @property
    def writer(self) -> CrmWriter:
        if self._writer is None:
            self._writer = open_writer(self.backend)
        return self._writer

    @property
    def sync_worker(self) -> SyncWorker:
        if self._worker is None:
            from dialplan.outbox import SyncWorker

            self._worker = SyncWorker(
                self.outbox,
                self.writer,
                self.backend,
                settings=self.config.outbox,
                outcomes=self.config.outcomes,
                routing=self.config.routing,
            )
        return self._worker

    def call_history(self) -> OutboxCallHistory:
        """Past calls, for the routing policy's "last agent" rule."""
        from dialplan.outbox import OutboxCallHistory

        return OutboxCallHistory(self.outbox)

    @property
    def mirror(self) -> MirroredBackend | None:
        """The CRM's mirror, when the backend has one."""
        from crmlookup.mirror.backend import MirroredBackend

        return self.backend if isinstance(self.backend, MirroredBackend) else None

    def start_mirror(self) -> None:
        """Keep the CRM's mirror fresh in the background and read the CRM's metadata ahead (``crmroute serve``)."""
        if not self.serving:
            return
        mirror = self.mirror
        if mirror is not None:
            mirror.start()
        live = live_backend(self.backend)
        warm = getattr(live, "warm", None)
        if warm is not None:
            self._warming = asyncio.get_running_loop().create_task(warm(), name="read CRM metadata ahead")

    def adopt(self, previous: "App") -> None:
        """Take over what the app being replaced (a reload) learnt: the cache's last known answers; its mirror stops refreshing."""
        old_mirror = previous.mirror
        if old_mirror is not None:
            old_mirror.stop_refreshing()
        same_crm = (previous.config.crm, previous.config.directory, previous.config.zoho) == (self.config.crm, self.config.directory, self.config.zoho)
        old_cache, new_cache = _cache_of(previous.backend), _cache_of(self.backend)
        if same_crm and old_cache is not None and new_cache is not None:
            new_cache.adopt(old_cache)

    def start_sync_worker(self) -> None:
        """Deliver the outbox to the CRM in the background until :meth:`aclose`."""
        if self._worker_task is None:
            self._worker_stop = asyncio.Event()
            self._worker_task = asyncio.get_running_loop().create_task(self.sync_worker.run(self._worker_stop))
            logger.info("outbox %s: sync worker started (writer=%s)", self.outbox.path, self.writer.name)

    def outcome_recorded(self) -> None:
        """A new outcome is in the outbox: the running worker takes it up now."""
        if self._worker_task is not None and self._worker is not None:
            self._worker.wake()

    async def _stop_sync_worker(self) -> None:
        task, stop = self._worker_task, self._worker_stop
        if task is None or stop is None:
            return
        stop.set()
        # A round in flight may finish; one cut short leaves its records
        # uncertain, and the next start looks for them before writing again.
        done, _ = await asyncio.wait([task], timeout=self.config.server.shutdown_grace_ms / 1000)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._worker_task = None

    async def aclose(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        await self._stop_sync_worker()
        if self._writer is not None:
            await self._writer.aclose()
        if self._outbox is not None:
            await self._outbox.aclose()
        await self.backend.aclose()



def _cache_of(backend: CrmBackend) -> CachedBackend | None:
    """The lookup cache in ``backend`` (in front of the CRM, or below its mirror)."""
    if isinstance(backend, CachedBackend):
        return backend
    live = getattr(backend, "live", None)
    return live if isinstance(live, CachedBackend) else None
