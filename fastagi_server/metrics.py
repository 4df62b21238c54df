"""Prometheus metrics of a running server (``[metrics] listen``), with ``prometheus_client``.

Nothing here runs per call. A call adds to plain counts
(:class:`.call_counts.CallCounts`: a few integer increments); those, and what
the server keeps anyway (sessions open, the CRM client's request counts, the
mirror's age, the outbox's depth), are read on the event loop when
Prometheus scrapes (:class:`StateCollector`) and turned into metric
families then.

Labels are bounded: script names the server knows, policy names from the
configuration, route statuses; never a caller, a peer or an error text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Iterable, Mapping, TypeVar

from prometheus_client import CollectorRegistry, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from crmlookup.stats import LatencyCounts, RequestStats

from .health import Carried, ServerState, gather_state

if TYPE_CHECKING:
    from dialplan.outbox import FlushSummary

    from .server import FastAgiServer

logger = logging.getLogger("crmroute.metrics")

T = TypeVar("T")
# A scrape waits this long for the event loop to read the server's state.
STATE_TIMEOUT_S = 5.0


class StateCollector:
    """Metrics read from the server's state at scrape time (on its event loop, from the scrape's thread)."""

    def __init__(self, server: FastAgiServer):
        self._server = server
        self._carried = Carried()

    def describe(self) -> list[Metric]:
        return []  # read at scrape only: registering must not reach into the server

    def read_state(self, *, probe: bool = False) -> ServerState | None:
        """The server's state, read on its loop; None when the loop does not answer in time (or is gone)."""
        try:
            return self._on_loop(lambda: gather_state(self._server, probe=probe, carried=self._carried), STATE_TIMEOUT_S)
        except Exception:  # a defect of ours: the scrape still answers, and says the state is unreadable
            logger.exception("reading the server's state for the metrics failed")
            return None

    def loop_answers(self, timeout: float = 2.0) -> bool:
        """Whether the event loop runs a callback within ``timeout`` (``/healthz``)."""
        return self._on_loop(lambda: asyncio.sleep(0, True), timeout) is True

    def _on_loop(self, coroutine: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T | None:
        """Run ``coroutine()`` on the server's loop and wait up to ``timeout``; None when the loop
        is gone or does not answer in time (what the coroutine raises is raised)."""
        loop = self._server.loop
        if loop is None or loop.is_closed():
            return None
        pending = coroutine()
        try:
            future = asyncio.run_coroutine_threadsafe(pending, loop)
        except RuntimeError:  # the loop stopped meanwhile
            pending.close()
            return None
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            future.cancel()
            return None

    def collect(self) -> Iterable[Metric]:
        state = self.read_state()
        yield _gauge("crmroute_state_readable", "1 when the event loop answered this scrape in time", 1 if state is not None else 0)
        if state is None:
            return
        yield from _calls(state)
        yield from _sessions(state)
        yield from _crm_requests(state.request_stats)
        yield from _mirror(state)
        yield from _outbox(state, state.worker_totals)
        yield _gauge("crmroute_ready", "1 when /readyz would answer ready (without its outbox write)", 1 if state.ready else 0)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _by_label(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, documentation: str, label: str, values: Mapping[str, float]) -> Metric:
    """A family with one sample per value of ``label``."""
    family = kind(name, documentation, labels=(label,))
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _histogram(family: HistogramMetricFamily, labels: list[str], counts: LatencyCounts) -> None:
    """Add ``counts`` to ``family`` as Prometheus wants it: cumulative buckets, then the sum."""
    cumulative, running = [], 0
    for bound, n in zip((*(repr(b) for b in counts.bounds), "+Inf"), counts.buckets):
        running += n
        cumulative.append((bound, running))
    family.add_metric(labels, cumulative, counts.total_s)


def _calls(state: ServerState) -> Iterable[Metric]:
    calls = CounterMetricFamily(
        "crmroute_calls", "Sessions answered, by AGI script, routing policy and status (CRM_ROUTE_STATUS, or the outcome's recording)",
        labels=("script", "policy", "status"),
    )
    for key, n in sorted(state.calls.items()):
        calls.add_metric(list(key), n)
    yield calls
    yield _by_label(CounterMetricFamily, "crmroute_sessions_failed", "Sessions that ended early (a limit, a protocol error, the peer left)", "script", state.failed)
    decision = HistogramMetricFamily("crmroute_decision_seconds", "Time to answer a route call: from its header block to the last variable set")
    if state.decision is not None:
        _histogram(decision, [], state.decision)
    yield decision
    yield _by_label(CounterMetricFamily, "crmroute_lookups", "Route decisions by where the CRM's answer came from (cache, stale, mirror, live, directory)", "source", state.sources)


def _sessions(state: ServerState) -> Iterable[Metric]:
    yield _gauge("crmroute_sessions_in_flight", "Sessions being served (header block complete)", state.sessions)
    yield _gauge("crmroute_connections_connecting", "Connections still sending their header block", state.connecting)
    yield _by_label(CounterMetricFamily, "crmroute_limits_hit", "Sessions or connections a limit ended (or turned away), by the setting", "limit", state.limits_hit)
    yield _by_label(CounterMetricFamily, "crmroute_peers_refused", "Connections refused: the peer is not in the allow-list, by listener", "listener", state.peers_refused)


def _crm_requests(all_stats: list[RequestStats]) -> Iterable[Metric]:
    requests = CounterMetricFamily("crmroute_crm_requests", "Requests sent to the CRM, by backend, operation and result", labels=("backend", "operation", "result"))
    latency = HistogramMetricFamily("crmroute_crm_request_seconds", "Time the CRM took to answer, by backend and operation", labels=("backend", "operation"))
    counts: dict[tuple[str, str, str], int] = {}
    histograms: dict[tuple[str, str], LatencyCounts] = {}
    mints: dict[str, float] = {}
    refusals: dict[str, float] = {}
    for stats in all_stats:
        for (operation, result), n in list(stats.requests.items()):
            key = (stats.backend, operation, result)
            counts[key] = counts.get(key, 0) + n
        for operation, seen in list(stats.latency.items()):
            summed = histograms.setdefault((stats.backend, operation), LatencyCounts(seen.bounds))
            summed.buckets = [a + b for a, b in zip(summed.buckets, seen.buckets)]
            summed.total_s += seen.total_s
        mints[stats.backend] = mints.get(stats.backend, 0) + stats.token_mints
        refusals[stats.backend] = refusals.get(stats.backend, 0) + stats.token_refusals
    for labels, n in sorted(counts.items()):
        requests.add_metric(list(labels), n)
    for pair, summed in sorted(histograms.items()):
        _histogram(latency, list(pair), summed)
    yield requests
    yield latency
    yield _by_label(CounterMetricFamily, "crmroute_token_mints", "Access tokens minted", "backend", mints)
    yield _by_label(CounterMetricFamily, "crmroute_token_refusals", "Access token requests the CRM refused (the credentials)", "backend", refusals)


def _mirror(state: ServerState) -> Iterable[Metric]:
    mirror = state.mirror
    if mirror is None:
        return
    yield _gauge("crmroute_mirror_ready", "1 once the mirror's first load is done (calls are answered from it)", 1 if mirror.ready else 0)
    if mirror.age_s is not None:
        yield _gauge("crmroute_mirror_age_seconds", "Seconds since the mirror's last good refresh", mirror.age_s)
    yield _by_label(GaugeMetricFamily, "crmroute_mirror_records", "Records in the mirror, by CRM module", "module", mirror.records)
    yield _gauge("crmroute_mirror_file_bytes", "Size of the mirror's file", mirror.file_bytes)


def _outbox(state: ServerState, workers: list[FlushSummary]) -> Iterable[Metric]:
    outbox = state.outbox
    if outbox is not None:
        yield _by_label(GaugeMetricFamily, "crmroute_outbox_outcomes", "Call outcomes in the outbox, by state", "state", outbox.counts)
        yield _gauge("crmroute_outbox_oldest_waiting_seconds", "Age of the oldest outcome not yet delivered (0: none waits)", outbox.oldest_waiting_s or 0.0)
        yield _gauge("crmroute_outbox_in_memory", "Outcomes kept in memory because the outbox cannot take them", outbox.spooled)
        yield _gauge("crmroute_outbox_usable", "1 while the outbox takes commits", 0 if outbox.problem else 1)
    totals = {
        "delivered": sum(summary.delivered for summary in workers),
        "failed": sum(summary.failed for summary in workers),
        "dead": sum(summary.dead for summary in workers),
    }
    yield _by_label(CounterMetricFamily, "crmroute_outbox_deliveries", "Delivery attempts of outcomes to the CRM, by result", "result", totals)
    refused = CounterMetricFamily("crmroute_outbox_refusals", "Outcomes with a record the CRM refused for its data")
    refused.add_metric([], sum(summary.refused for summary in workers))
    yield refused


class ServerMetrics:
    """Everything ``/metrics`` shows, in a registry of its own (nothing global)."""

    def __init__(self, server: FastAgiServer, build: Mapping[str, str]):
        # The library's switch for every registry of the process: no "_created" series (the
        # start time of each counter), which would double what each scrape carries.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        self.registry = CollectorRegistry()
        self.state = StateCollector(server)
        self.registry.register(self.state)
        Info("crmroute_build", "The version and build of the running server", registry=self.registry).info(dict(build))
