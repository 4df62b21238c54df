"""The configured application: settings, the CRM backend, the router, the outbox.

This is the one piece of state the server holds; a SIGHUP swaps it for a
freshly built one while calls in flight finish on the old.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crmlookup.backend import CrmBackend
from crmlookup.cache import CachedBackend
from crmlookup.errors import CrmError
from crmlookup.events import CallEnded, CallEvents, CallRinging
from crmlookup.factory import live_backend, open_plugin_backend
from crmlookup.plugins import OpenContext
from dialplan.call import InboundCall
from dialplan.decision import RouteDecision
from dialplan.history import CallHistory
from dialplan.router import Router, last_agent_keys, require_history, ticket_keys

from .config import Config

if TYPE_CHECKING:
    from typing import Coroutine

    # The outbox and the writers load on first use: a process AGI that only
    # routes a call never needs them (each costs milliseconds of import per call).
    from crmlookup.mirror.backend import MirroredBackend
    from crmlookup.writer import CrmWriter
    from dialplan.outbox import OutboxCallHistory, OutboxKeeper, OutboxStore, Recording, DeliveryWorker
    from dialplan.outcome import CallOutcome

logger = logging.getLogger("crmroute.server")
# Calls whose events were sent are remembered this many at most (so none is sent twice).
EVENTS_REMEMBERED = 4096


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
    _worker: DeliveryWorker | None = field(default=None, repr=False)
    _worker_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _keeper_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _worker_stop: asyncio.Event | None = field(default=None, repr=False)
    _warming: asyncio.Task[None] | None = field(default=None, repr=False)
    # Where the CRM hears of calls as they happen (a screen pop), when its plugin offers it.
    events: CallEvents | None = None
    _event_tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _events_sent: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict, repr=False)
    # Zoho Desk behind its own lookup cache, when a policy uses the Tickets rule.
    tickets: CrmBackend | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        history: CallHistory | None = None,
        *,
        serving: bool = False,
        require_outbox: bool = False,
        backend: CrmBackend | None = None,
        writer: CrmWriter | None = None,
        events: CallEvents | None = None,
    ) -> App:
        """Open the backend and build the router: the app builder.

        ``history`` (recorded call outcomes) serves the LastAgent rule; when a
        policy uses that rule and none is given, the outbox's own is used: an
        outbox that cannot be opened is logged, not raised (routing goes on
        without that rule until it opens), unless ``require_outbox`` (a
        configuration check). ``serving``: this is the server, which keeps the
        CRM's mirror up to date (:meth:`start_mirror`); every other process
        only reads it. An embedding program may give its own ``backend``
        (used as it is: put a :class:`~crmlookup.cache.CachedBackend` in front
        of a slow one), ``writer`` (for the outbox's delivery worker) and
        ``events`` (told of calls as they ring and end); without them, the
        CRM plugin ``crm.backend`` names opens them. Raises CrmError
        if the backend cannot open, PluginError if no plugin has that name,
        ValueError if the routing policy needs something missing.
        """
        keeper = None
        if history is None and last_agent_keys(config.routing):
            from dialplan.outbox import OutboxCallHistory, OutboxError, OutboxKeeper

            keeper = OutboxKeeper(config.outbox.resolved_path, store=config.store)
            try:
                keeper.open_now()
            except OutboxError as exc:
                if require_outbox:
                    raise
                keeper.trouble(str(exc))  # a server tries again in the background
            history = OutboxCallHistory(keeper)
        require_history(config.routing, history)  # before the backend is opened
        if backend is None:
            plugin = config.plugin
            settings = config.settings_of(plugin)
            context = OpenContext(region=config.routing.default_region, deadline_ms=config.routing.deadline_ms, serving=serving)
            backend = open_plugin_backend(plugin, settings, config.cache, context=context, mirror=config.mirror)
            offers_events = getattr(plugin, "call_events", None)  # optional: most CRMs want no call events
            if events is None and offers_events is not None:
                events = offers_events(live_backend(backend), settings)
        tickets = open_tickets(config) if ticket_keys(config.routing) else None
        router = Router(config.routing, backend, history=history, tickets=tickets)
        return cls(config=config, backend=backend, router=router, serving=serving, _keeper=keeper, _writer=writer, events=events, tickets=tickets)

    @property
    def outbox_keeper(self) -> OutboxKeeper:
        """The outbox as the server holds it (see :mod:`dialplan.outbox.keeper`)."""
        if self._keeper is None:
            from dialplan.outbox import OutboxKeeper

            self._keeper = OutboxKeeper(self.config.outbox.resolved_path, store=self.config.store)
        return self._keeper

    @property
    def outbox(self) -> OutboxStore:
        """The outbox (its file, or the shared store), opened now if need be (the CLI, the delivery worker); raises OutboxError."""
        return self.outbox_keeper.open_now()

    @property
    def writer(self) -> CrmWriter:
        """What the delivery worker writes outcomes with: the one given, else the CRM plugin's."""
        if self._writer is None:
            plugin = self.config.plugin
            self._writer = plugin.open_writer(live_backend(self.backend), self.config.settings_of(plugin))
            if self.tickets is not None and self.config.zoho_desk.log_calls:
                from crmlookup.zoho_desk.backend import ZohoDeskBackend
                from crmlookup.zoho_desk.writer import DeskCallWriter, with_ticket_calls

                desk = live_backend(self.tickets)
                assert isinstance(desk, ZohoDeskBackend)
                self._writer = with_ticket_calls(self._writer, DeskCallWriter(desk.api, self.config.zoho_desk.search_lag_s))
        return self._writer

    @property
    def delivery_worker(self) -> DeliveryWorker:
        if self._worker is None:
            from dialplan.outbox import DeliveryWorker

            self._worker = DeliveryWorker(
                self.outbox,
                self.writer,
                self.backend,
                settings=self.config.outbox,
                outcomes=self.config.outcomes,
                routing=self.config.routing,
                recordings=self.config.recordings,
            )
        return self._worker

    @property
    def running_delivery_worker(self) -> DeliveryWorker | None:
        """The delivery worker once it runs (None before; reading this never makes one)."""
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

    def adopt(self, previous: App) -> None:
        """Take over what the app being replaced (a reload) learnt: the cache's last known answers; its mirror stops refreshing."""
        old_mirror = previous.mirror
        if old_mirror is not None:
            old_mirror.stop_refreshing()
        same_crm = _crm_settings(previous.config) == _crm_settings(self.config)
        old_cache, new_cache = _cache_of(previous.backend), _cache_of(self.backend)
        if same_crm and old_cache is not None and new_cache is not None:
            new_cache.adopt(old_cache)
        if isinstance(self.tickets, CachedBackend) and isinstance(previous.tickets, CachedBackend) and previous.config.zoho_desk == self.config.zoho_desk:
            self.tickets.adopt(previous.tickets)

    def start_delivery_worker(self) -> None:
        """Deliver the outbox to the CRM in the background until :meth:`aclose`.

        The worker starts once the outbox opens: at once, or when a retry
        succeeds (what is wrong with it is logged meanwhile); outcomes kept in
        memory are committed as soon as it can take them.
        """
        if self._keeper_task is None:
            _ = self.writer  # a writer that cannot be made is a configuration error: raised now
            self._worker_stop = asyncio.Event()
            self._keeper_task = asyncio.get_running_loop().create_task(self.outbox_keeper.run(self._worker_stop, self._outbox_opened))

    def _outbox_opened(self, outbox: OutboxStore) -> None:
        assert self._worker_stop is not None
        self._worker_task = asyncio.get_running_loop().create_task(self.delivery_worker.run(self._worker_stop))
        logger.info("outbox %s: delivery worker started (writer=%s)", outbox.path, self.writer.name)

    def call_ringing(self, call: InboundCall, decision: RouteDecision) -> None:
        """Tell the CRM who this call now rings (its screen pop), in the background, once per call.

        The route has answered already: the call never waits for this, and a
        failure is logged.
        """
        if self.events is None or not decision.extensions or not call.unique_id:
            return
        caller = decision.normalised_number or call.caller
        ringing = CallRinging(call.unique_id, caller, call.did, tuple(decision.extensions), decision.owner.id if decision.owner else "")
        self._send_event("ringing", call.unique_id, self.events.ringing(ringing))

    def call_ended(self, outcome: CallOutcome) -> None:
        """Tell the CRM the call is over (closes its screen pop), in the background, once per call."""
        if self.events is None or not outcome.route.extension:
            return  # the route rang nobody: there is no screen pop to close
        extensions = (outcome.answered_extension or outcome.route.extension,)
        ended = CallEnded(outcome.call_id, outcome.caller_e164 or outcome.caller, outcome.did, extensions, outcome.answered, outcome.dial_status)
        self._send_event("ended", outcome.call_id, self.events.ended(ended))

    def _send_event(self, kind: str, call_id: str, send: Coroutine[object, object, None]) -> None:
        key = (kind, call_id)
        if key in self._events_sent:
            send.close()  # this call's event went already (a dialplan that ran the script twice)
            return
        self._events_sent[key] = None
        if len(self._events_sent) > EVENTS_REMEMBERED:
            self._events_sent.popitem(last=False)
        task = asyncio.get_running_loop().create_task(_logged_event(kind, call_id, send), name=f"call event {kind}")
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def outcome_recorded(self) -> None:
        """A new outcome is in the outbox: the running worker takes it up now."""
        if self._worker_task is not None and self._worker is not None:
            self._worker.wake()

    async def _stop_delivery_worker(self) -> None:
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
        for task in list(self._event_tasks):
            task.cancel()  # a call event still in flight is of no use once we stop
        await asyncio.gather(*self._event_tasks, return_exceptions=True)
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        await self._stop_delivery_worker()
        if self._writer is not None:
            await self._writer.aclose()
        if self._keeper is not None:
            await self._keeper.aclose()
        await self.backend.aclose()
        if self.tickets is not None:
            await self.tickets.aclose()



async def _logged_event(kind: str, call_id: str, send: Coroutine[object, object, None]) -> None:
    try:
        await send
    except CrmError as exc:
        logger.warning("call event %s for %s not sent: %s", kind, call_id, exc)
    except Exception:  # a plugin's bug must not reach the event loop's handler unexplained
        logger.exception("call event %s for %s failed", kind, call_id)


def open_tickets(config: Config) -> CrmBackend:
    """Zoho Desk for the Tickets rule, behind a lookup cache of its own (the [cache] settings).

    Raises CrmError naming the key when ``[zoho_desk]`` lacks its org id or a credential.
    """
    from crmlookup.factory import STALE_WAIT_SHARE_OF_DEADLINE
    from crmlookup.zoho_desk.backend import ZohoDeskBackend

    cache = config.cache
    stale_wait_ms = min(cache.stale_wait_ms, config.routing.deadline_ms * STALE_WAIT_SHARE_OF_DEADLINE)
    return CachedBackend(ZohoDeskBackend.open(config.zoho_desk), cache, stale_wait_s=stale_wait_ms / 1000)


def _crm_settings(config: Config) -> tuple[object, ...]:
    """What decides which CRM answers, and how: equal ones may share the cache."""
    return (config.crm, config.directory, config.zoho, config.sections)


def _cache_of(backend: CrmBackend) -> CachedBackend | None:
    """The lookup cache in ``backend`` (in front of the CRM, or below its mirror)."""
    if isinstance(backend, CachedBackend):
        return backend
    live = getattr(backend, "live", None)
    return live if isinstance(live, CachedBackend) else None
