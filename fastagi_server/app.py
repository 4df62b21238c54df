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
    from dialplan.outbox import Outbox, OutboxCallHistory, OutboxKeeper, Recording, SyncWorker
    from dialplan.outcome import CallOutcome

logger = logging.getLogger("crmroute.server")


@dataclass
class App:
    config: Config
    backend: CrmBackend
    router: Router
    # The server: it keeps the CRM's mirror fresh and reads the CRM's metadata ahead.
    serving: bool = False
    # Made on first use: a lookup or a config check never touches the outbox file.
    _keeper: OutboxKeeper | None = field(default=None, repr=False)
    _writer: CrmWriter | None = field(default=None, repr=False)
    _worker: SyncWorker | None = field(default=None, repr=False)
    _worker_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _keeper_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _worker_stop: asyncio.Event | None = field(default=None, repr=False)
    _warming: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls, config: Config, history: CallHistory | None = None, *, serving: bool = False, require_outbox: bool = False
    ) -> "App":
        """Open the backend and build the router.

        ``history`` (recorded call outcomes) serves the LastAgent rule; when a
        policy uses that rule and none is given, the outbox's own is used: an
        outbox that cannot be opened is logged, not raised (routing goes on
        without that rule until it opens), unless ``require_outbox`` (a
        configuration check). ``serving``: this is the server, which keeps the
        CRM's mirror up to date (:meth:`start_mirror`); every other process
        only reads it. Raises CrmError if the backend cannot open, ValueError
        if the routing policy needs something missing.
        """
        keeper = None
        if history is None and last_agent_keys(config.routing):
            from dialplan.outbox import OutboxCallHistory, OutboxError, OutboxKeeper

            keeper = OutboxKeeper(config.outbox.resolved_path)
            try:
                keeper.open_now()
            except OutboxError as exc:
                if require_outbox:
                    raise
                keeper.trouble(str(exc))  # a server tries again in the background
            history = OutboxCallHistory(keeper)
        require_history(config.routing, history)  # before the backend is opened
        backend = open_backend(
            config.crm, config.directory, config.zoho, config.cache,
            deadline_ms=config.routing.deadline_ms, mirror=config.mirror, region=config.routing.default_region, keep_mirror=serving,
        )
        router = Router(config.routing, backend, history=history)
        return cls(config=config, backend=backend, router=router, serving=serving, _keeper=keeper)

    @property
    def outbox_keeper(self) -> OutboxKeeper:
        """The outbox as the server holds it (see :mod:`dialplan.outbox.keeper`)."""
        if self._keeper is None:
            from dialplan.outbox import OutboxKeeper

            self._keeper = OutboxKeeper(self.config.outbox.resolved_path)
        return self._keeper

    @property
    def outbox(self) -> Outbox:
        """The outbox file, opened now if need be (the CLI, the sync worker); raises OutboxError."""
        return self.outbox_keeper.open_now()

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

    @property
    def running_sync_worker(self) -> SyncWorker | None:
        """The sync worker once it runs (None before; reading this never makes one)."""
        return self._worker if self._worker_task is not None else None

    def call_history(self) -> OutboxCallHistory:
        """Past calls, for the routing policy's "last agent" rule."""
        from dialplan.outbox import OutboxCallHistory

        return OutboxCallHistory(self.outbox_keeper)

    async def record_outcome(self, outcome: CallOutcome, now: float) -> Recording:
        """Commit a call's outcome (or keep it in memory while the outbox cannot take it)."""
        from dialplan.outbox import Recording

        recording = await self.outbox_keeper.record(outcome, now)
        if recording is Recording.RECORDED:
            self.outcome_recorded()
        return recording

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
        """Deliver the outbox to the CRM in the background until :meth:`aclose`.

        The worker starts once the outbox opens: at once, or when a retry
        succeeds (what is wrong with it is logged meanwhile); outcomes kept in
        memory are committed as soon as it can take them.
        """
        if self._keeper_task is None:
            self.writer  # a writer that cannot be made is a configuration error: raised now
            self._worker_stop = asyncio.Event()
            self._keeper_task = asyncio.get_running_loop().create_task(self.outbox_keeper.run(self._worker_stop, self._outbox_opened))

    def _outbox_opened(self, outbox: Outbox) -> None:
        assert self._worker_stop is not None
        self._worker_task = asyncio.get_running_loop().create_task(self.sync_worker.run(self._worker_stop))
        logger.info("outbox %s: sync worker started (writer=%s)", outbox.path, self.writer.name)

    def outcome_recorded(self) -> None:
        """A new outcome is in the outbox: the running worker takes it up now."""
        if self._worker_task is not None and self._worker is not None:
            self._worker.wake()

    async def _stop_sync_worker(self) -> None:
        stop = self._worker_stop
        if stop is None:
            return
        stop.set()
        tasks = [task for task in (self._worker_task, self._keeper_task) if task is not None]
        # A round in flight may finish; one cut short leaves its records
        # uncertain, and the next start looks for them before writing again.
        _done, pending = await asyncio.wait(tasks, timeout=self.config.server.shutdown_grace_ms / 1000)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._worker_task = self._keeper_task = None

    async def aclose(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        await self._stop_sync_worker()
        if self._writer is not None:
            await self._writer.aclose()
        if self._keeper is not None:
            await self._keeper.aclose()
        await self.backend.aclose()



def _cache_of(backend: CrmBackend) -> CachedBackend | None:
    """The lookup cache in ``backend`` (in front of the CRM, or below its mirror)."""
    if isinstance(backend, CachedBackend):
        return backend
    live = getattr(backend, "live", None)
    return live if isinstance(live, CachedBackend) else None
