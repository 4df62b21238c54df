"""Prometheus metrics of a running server (``[metrics] listen``), with ``prometheus_client``.

Two kinds, by cost:

* **per call** (:class:`CallMetrics`): a few counter increments and one
  histogram observation when a session ends. The labelled children are
  looked up once per label set and kept, so a call formats nothing.
* **read when scraped** (:class:`StateCollector`): what the server already
  keeps (sessions open, the CRM client's request counts, the mirror's age,
  the outbox's depth) is read on the event loop at scrape time, never kept
  up to date call by call.

Labels are bounded: script names the server knows, policy names from the
configuration, route statuses; never a caller, a peer or an error text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import TYPE_CHECKING, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from crmlookup.stats import LATENCY_BUCKETS_S, RequestStats

from .health import ServerState, gather_state

if TYPE_CHECKING:
    from dialplan.outbox import FlushSummary

    from .server import FastAgiServer

logger = logging.getLogger("crmroute.metrics")

# Decision time: from a cache hit (about a millisecond) to past the default deadline (1.5 s).
DECISION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0)
# Label sets kept per counter at most; past it, new ones count under "other" (a policy renamed by every reload, say).
MAX_LABEL_SETS = 1000
# A scrape waits this long for the event loop to read the server's state.
STATE_TIMEOUT_S = 5.0
OTHER = "other"


class CallMetrics:
    """The per-call counters; a :class:`~.call_observer.CallObserver`."""

    def __init__(self, registry: CollectorRegistry, scripts: Iterable[str]):
        self._scripts = frozenset(scripts)
        self._calls = Counter(
            "crmroute_calls", "Sessions answered, by AGI script, routing policy and status (CRM_ROUTE_STATUS, or the outcome's recording)",
            ("script", "policy", "status"), registry=registry,
        )
        self._failed = Counter("crmroute_sessions_failed", "Sessions that ended early (a limit, a protocol error, the peer left)", ("script",), registry=registry)
        self._decision = Histogram(
            "crmroute_decision_seconds", "Time to answer a route call: from its header block to the last variable set",
            buckets=DECISION_BUCKETS_S, registry=registry,
        )
        self._sources = Counter(
            "crmroute_lookups", "Route decisions by where the CRM's answer came from (cache, stale, mirror, live, directory)",
            ("source",), registry=registry,
        )
        self._call_children: dict[tuple[str, str, str], object] = {}
        self._source_children: dict[str, object] = {}
        self._failed_children: dict[str, object] = {}

    def call_answered(self, script: str, result: Mapping[str, str], seconds: float) -> None:
        key = (script, result.get("policy", ""), result.get("status") or result.get("outcome", ""))
        child = self._call_children.get(key)
        if child is None:
            child = self._call_child(key)
        child.inc()  # type: ignore[attr-defined]
        if script == "route":
            self._decision.observe(seconds)
            source = result.get("source") or "none"
            counter = self._source_children.get(source)
            if counter is None:
                counter = self._source_children[source] = self._sources.labels(source if len(self._source_children) < 32 else OTHER)
            counter.inc()  # type: ignore[attr-defined]

    def call_failed(self, script: str) -> None:
        child = self._failed_children.get(script)
        if child is None:
            if script not in self._scripts:  # a peer's script name is never remembered
                self._failed.labels(OTHER).inc()
                return
            child = self._failed_children[script] = self._failed.labels(script)
        child.inc()  # type: ignore[attr-defined]

    def _call_child(self, key: tuple[str, str, str]) -> object:
        script, policy, status = key
        bounded = script in self._scripts and len(self._call_children) < MAX_LABEL_SETS
        child = self._calls.labels(script if script in self._scripts else OTHER, policy if bounded else OTHER, status if bounded else OTHER)
        if bounded:
            self._call_children[key] = child
        return child


class StateCollector:
    """Metrics read from the server's state at scrape time (on its event loop, from the scrape's thread)."""

    def __init__(self, server: FastAgiServer):
        self._server = server
        # Every CRM client and sync worker seen: a reload replaces them, and their counts must not go back.
        self._stats: list[RequestStats] = []
        self._workers: list[FlushSummary] = []

    def describe(self) -> list[Metric]:
        return []  # read at scrape only: registering must not reach into the server

    def read_state(self, *, probe: bool = False) -> ServerState | None:
        """The server's state, read on its loop; None when the loop does not answer in time (or is gone)."""
        loop = self._server.loop
        if loop is None or loop.is_closed():
            return None
        try:
            future = asyncio.run_coroutine_threadsafe(gather_state(self._server, probe=probe), loop)
        except RuntimeError:  # the loop stopped meanwhile
            return None
        try:
            return future.result(STATE_TIMEOUT_S)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            future.cancel()
            return None
        except Exception:  # a defect of ours: the scrape still answers, and says the state is unreadable
            logger.exception("reading the server's state for the metrics failed")
            return None

    def loop_answers(self, timeout: float = 2.0) -> bool:
        """Whether the event loop runs a callback within ``timeout`` (``/healthz``)."""
        loop = self._server.loop
        if loop is None or loop.is_closed():
            return False
        try:
            future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
        except RuntimeError:
            return False
        try:
            future.result(timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            future.cancel()
            return False
        return True

    def collect(self) -> Iterable[Metric]:
        state = self.read_state()
        up = GaugeMetricFamily("crmroute_state_readable", "1 when the event loop answered this scrape in time")
        up.add_metric([], 1 if state is not None else 0)
        yield up
        if state is None:
            return
        yield from _sessions(state)
        for stats in state.request_stats:
            if not any(stats is seen for seen in self._stats):
                self._stats.append(stats)
        if state.worker_totals is not None and not any(state.worker_totals is seen for seen in self._workers):
            self._workers.append(state.worker_totals)
        yield from _crm_requests(self._stats)
        yield from _mirror(state)
        yield from _outbox(state, self._workers)
        ready = GaugeMetricFamily("crmroute_ready", "1 when /readyz would answer ready (without its outbox write)")
        ready.add_metric([], 1 if state.ready else 0)
        yield ready


def _sessions(state: ServerState) -> Iterable[Metric]:
    sessions = GaugeMetricFamily("crmroute_sessions_in_flight", "Sessions being served (header block complete)")
    sessions.add_metric([], state.sessions)
    yield sessions
    connecting = GaugeMetricFamily("crmroute_connections_connecting", "Connections still sending their header block")
    connecting.add_metric([], state.connecting)
    yield connecting
    limits = CounterMetricFamily("crmroute_limits_hit", "Sessions or connections a limit ended (or turned away), by the setting", labels=("limit",))
    for name, n in sorted(state.limits_hit.items()):
        limits.add_metric([name], n)
    yield limits
    refused = CounterMetricFamily("crmroute_peers_refused", "Connections refused: the peer is not in the allow-list, by listener", labels=("listener",))
    for listener, n in sorted(state.peers_refused.items()):
        refused.add_metric([listener], n)
    yield refused


def _crm_requests(all_stats: list[RequestStats]) -> Iterable[Metric]:
    requests = CounterMetricFamily("crmroute_crm_requests", "Requests sent to the CRM, by backend, operation and result", labels=("backend", "operation", "result"))
    latency = HistogramMetricFamily("crmroute_crm_request_seconds", "Time the CRM took to answer, by backend and operation", labels=("backend", "operation"))
    mints = CounterMetricFamily("crmroute_token_mints", "Access tokens minted", labels=("backend",))
    refusals = CounterMetricFamily("crmroute_token_refusals", "Access token requests the CRM refused (the credentials)", labels=("backend",))
    counts: dict[tuple[str, str, str], int] = {}
    histograms: dict[tuple[str, str], tuple[list[int], float]] = {}
    tokens: dict[str, list[int]] = {}
    for stats in all_stats:
        for (operation, result), n in list(stats.requests.items()):
            key = (stats.backend, operation, result)
            counts[key] = counts.get(key, 0) + n
        for operation, seen in list(stats.latency.items()):
            buckets, total = histograms.get((stats.backend, operation), ([0] * len(seen.buckets), 0.0))
            histograms[(stats.backend, operation)] = ([a + b for a, b in zip(buckets, seen.buckets)], total + seen.total_s)
        pair = tokens.setdefault(stats.backend, [0, 0])
        pair[0] += stats.token_mints
        pair[1] += stats.token_refusals
    for key, n in sorted(counts.items()):
        requests.add_metric(list(key), n)
    for key, (buckets, total) in sorted(histograms.items()):
        cumulative, running = [], 0
        for bound, n in zip((*(repr(b) for b in LATENCY_BUCKETS_S), "+Inf"), buckets):
            running += n
            cumulative.append((bound, running))
        latency.add_metric(list(key), cumulative, total)
    for backend, (minted, refused) in sorted(tokens.items()):
        mints.add_metric([backend], minted)
        refusals.add_metric([backend], refused)
    yield from (requests, latency, mints, refusals)


def _mirror(state: ServerState) -> Iterable[Metric]:
    mirror = state.mirror
    if mirror is None:
        return
    ready = GaugeMetricFamily("crmroute_mirror_ready", "1 once the mirror's first load is done (calls are answered from it)")
    ready.add_metric([], 1 if mirror.ready else 0)
    yield ready
    if mirror.age_s is not None:
        age = GaugeMetricFamily("crmroute_mirror_age_seconds", "Seconds since the mirror's last good refresh")
        age.add_metric([], mirror.age_s)
        yield age
    records = GaugeMetricFamily("crmroute_mirror_records", "Records in the mirror, by CRM module", labels=("module",))
    for module, n in sorted(mirror.records.items()):
        records.add_metric([module], n)
    yield records
    size = GaugeMetricFamily("crmroute_mirror_file_bytes", "Size of the mirror's file")
    size.add_metric([], mirror.file_bytes)
    yield size


def _outbox(state: ServerState, workers: list[FlushSummary]) -> Iterable[Metric]:
    outbox = state.outbox
    if outbox is not None:
        depth = GaugeMetricFamily("crmroute_outbox_outcomes", "Call outcomes in the outbox, by state", labels=("state",))
        for name, n in sorted(outbox.counts.items()):
            depth.add_metric([name], n)
        yield depth
        oldest = GaugeMetricFamily("crmroute_outbox_oldest_waiting_seconds", "Age of the oldest outcome not yet delivered (0: none waits)")
        oldest.add_metric([], outbox.oldest_waiting_s or 0.0)
        yield oldest
        spooled = GaugeMetricFamily("crmroute_outbox_in_memory", "Outcomes kept in memory because the outbox cannot take them")
        spooled.add_metric([], outbox.spooled)
        yield spooled
        usable = GaugeMetricFamily("crmroute_outbox_usable", "1 while the outbox takes commits")
        usable.add_metric([], 0 if outbox.problem else 1)
        yield usable
    deliveries = CounterMetricFamily("crmroute_outbox_deliveries", "Delivery attempts of outcomes to the CRM, by result", labels=("result",))
    refused = CounterMetricFamily("crmroute_outbox_refusals", "Outcomes with a record the CRM refused for its data")
    totals = {"delivered": 0, "failed": 0, "dead": 0}
    refusals = 0
    for summary in workers:
        totals["delivered"] += summary.delivered
        totals["failed"] += summary.failed
        totals["dead"] += summary.dead
        refusals += summary.refused
    for result, n in totals.items():
        deliveries.add_metric([result], n)
    refused.add_metric([], refusals)
    yield deliveries
    yield refused


class ServerMetrics:
    """Everything ``/metrics`` shows, in a registry of its own (nothing global)."""

    def __init__(self, server: FastAgiServer, scripts: Iterable[str], build: Mapping[str, str]):
        # The library's switch for every registry of the process: no "_created" series (the
        # start time of each counter), which would double what each scrape carries.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.calls = CallMetrics(self.registry, scripts)
        self.state = StateCollector(server)
        self.registry.register(self.state)
        Info("crmroute_build", "The version and build of the running server", registry=self.registry).info(dict(build))
