"""What a running server can say about itself: ready or not, and why (``/readyz``,
``crmroute status``, the metrics read at scrape time).

Ready means every call gets its full answer and every outcome is kept:
listening (and not stopping), the CRM backend usable (its credentials not
refused), the mirror's first load done (when there is a mirror), the outbox
taking commits. A CRM that is down makes no router unready (the cache and the
mirror answer); it is told as a note.

Everything is read on the server's event loop; file work (the outbox's counts,
the mirror file's size) runs on their threads, never blocking calls.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from crmlookup.condition import Condition
from crmlookup.durations import age_text
from crmlookup.factory import live_backend
from crmlookup.stats import LatencyCounts, RequestStats

if TYPE_CHECKING:
    from dialplan.outbox import FlushSummary, OutboxKeeper, OutboxStore

    from .app import App
    from .server import FastAgiServer


@dataclass
class Check:
    """One readiness condition: whether it holds, and what the admin should know."""

    ok: bool
    detail: str


@dataclass
class MirrorView:
    path: str
    ready: bool
    age_s: float | None
    fresh: bool
    last_error: str
    records: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0


@dataclass
class OutboxView:
    path: str
    problem: str
    counts: dict[str, int] = field(default_factory=dict)
    oldest_waiting_s: float | None = None
    spooled: int = 0


@dataclass
class ServerState:
    """A snapshot of the running server."""

    version: str
    listening: list[str]
    backend: str
    sessions: int
    connecting: int
    checks: dict[str, Check]
    notes: list[str]
    mirror: MirrorView | None = None
    outbox: OutboxView | None = None
    # What the calls counted (empty when the server counts nothing: metrics off).
    calls: dict[tuple[str, str, str], int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    decision: LatencyCounts | None = None
    limits_hit: dict[str, int] = field(default_factory=dict)
    peers_refused: dict[str, int] = field(default_factory=dict)
    # Copies, made on the loop: of every CRM client and delivery worker the server ran (see Carried).
    request_stats: list[RequestStats] = field(default_factory=list)
    worker_totals: list[FlushSummary] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of ``/readyz`` (what ``crmroute status`` prints)."""
        return {
            "ready": self.ready,
            "problems": [f"{name}: {check.detail}" for name, check in self.checks.items() if not check.ok],
            "checks": {name: asdict(check) for name, check in self.checks.items()},
            "notes": self.notes,
            "version": self.version,
            "listening": self.listening,
            "backend": self.backend,
            "sessions_in_flight": self.sessions,
            "connections_connecting": self.connecting,
            "mirror": asdict(self.mirror) if self.mirror is not None else None,
            "outbox": asdict(self.outbox) if self.outbox is not None else None,
        }


class Carried:
    """The CRM clients and delivery workers of every app the server ran: a reload replaces them, and
    the counts they made must not go back. Only touched on the server's loop."""

    def __init__(self) -> None:
        self.stats: list[RequestStats] = []
        self.workers: list[FlushSummary] = []

    def add(self, stats: RequestStats | None, worker: FlushSummary | None) -> None:
        if stats is not None and not any(stats is seen for seen in self.stats):
            self.stats.append(stats)
        if worker is not None and not any(worker is seen for seen in self.workers):
            self.workers.append(worker)


async def gather_state(server: FastAgiServer, *, probe: bool = False, carried: Carried | None = None) -> ServerState:
    """Read the server's state (on its loop). ``probe``: write to the outbox to be sure it takes
    commits. With ``carried``, the CRM's and the outbox's counts of every app so far (copies)."""
    app = server.app
    live = live_backend(app.backend)
    conditions: dict[str, Condition] = getattr(live, "conditions", {})
    notes = [f"{condition.reason} (for {age_text(condition.failing_for or 0)})" for condition in conditions.values() if condition.failing_for is not None]
    stats = getattr(live, "request_stats", None)
    stats = stats if isinstance(stats, RequestStats) else None
    state = ServerState(
        version=server.build.get("version", ""),
        listening=server.addresses,
        backend=app.backend.name,
        sessions=server.sessions_in_flight,
        connecting=server.connections_connecting,
        checks={},
        notes=notes,
        limits_hit=dict(server.limits_hit),
        peers_refused={"agi": server.refused_peers.count, "metrics": server.refused_on_monitor.count},
    )
    counts = server.call_counts
    if counts is not None:  # copied here, on the loop that adds to them
        state.calls, state.failed, state.sources = dict(counts.calls), dict(counts.failed), dict(counts.sources)
        state.decision = counts.decision.copy()
    worker = app.running_delivery_worker
    desk = live_backend(app.tickets) if app.tickets is not None else None
    desk_stats = getattr(desk, "request_stats", None)
    for condition in getattr(desk, "conditions", {}).values():
        if condition.failing_for is not None:
            notes.append(f"{condition.reason} (for {age_text(condition.failing_for or 0)})")
    if carried is not None:
        carried.add(stats, worker.totals if worker is not None else None)
        if isinstance(desk_stats, RequestStats):
            carried.add(desk_stats, None)
        state.request_stats = [seen.copy() for seen in carried.stats]
        state.worker_totals = [replace(seen) for seen in carried.workers]
    state.checks["listening"] = _listening(server)
    state.checks["backend"] = _backend(app, conditions)
    if app.mirror is not None:
        state.mirror = await _mirror_view(app)
        state.checks["mirror"] = Check(state.mirror.ready, "first load done" if state.mirror.ready else _mirror_not_ready(app))
        if not state.mirror.fresh:
            notes.append(f"mirror stale: last refreshed {age_text(state.mirror.age_s or 0)} ago")
    keeper = app.outbox_keeper
    state.outbox = await _outbox_view(keeper)
    problem = await keeper.probe(time.time()) if probe else state.outbox.problem
    state.checks["outbox"] = Check(not problem, problem or f"{keeper.path} takes commits")
    if probe:
        state.outbox.problem = problem
    return state


def _listening(server: FastAgiServer) -> Check:
    if server.stopping:
        return Check(False, "stopping")
    addresses = server.addresses
    return Check(bool(addresses), ", ".join(addresses) or "not listening")


def _backend(app: App, conditions: dict[str, Condition]) -> Check:
    credentials = conditions.get("credentials")
    if credentials is not None and credentials.failing_for is not None:
        return Check(False, f"{app.backend.name}: {credentials.reason}")
    return Check(True, f"{app.backend.name} open")


def _mirror_not_ready(app: App) -> str:
    mirror = app.mirror
    assert mirror is not None
    return mirror.why_not_ready() + "; calls are looked up live meanwhile"


async def _mirror_view(app: App) -> MirrorView:
    mirror = app.mirror
    assert mirror is not None
    status = mirror.status
    refresher = mirror.refresher
    view = MirrorView(
        path=str(mirror.settings.resolved_path), ready=status.ready, age_s=status.age_s(),
        fresh=refresher.check_freshness() if refresher is not None else True, last_error=status.last_error,
    )
    view.records, view.file_bytes = await asyncio.to_thread(_mirror_file, mirror.settings.resolved_path)
    return view


def _mirror_file(path: os.PathLike[str]) -> tuple[dict[str, int], int]:
    """Records per module and the file's size; nothing when it cannot be read."""
    from crmlookup.mirror.store import MirrorFileError, open_readonly, snapshot

    try:
        size = os.stat(path).st_size
        conn = open_readonly(path)  # type: ignore[arg-type]
    except (OSError, MirrorFileError):
        return {}, 0
    try:
        return {module: counts.records for module, counts in snapshot(conn, str(path)).modules.items()}, size
    except Exception:  # sqlite3.Error: a file being replaced; the next scrape reads it
        return {}, size
    finally:
        conn.close()


async def _outbox_view(keeper: OutboxKeeper) -> OutboxView:
    view = OutboxView(path=str(keeper.path), problem=keeper.problem, spooled=keeper.spooled)
    outbox = keeper.opened
    if outbox is None:
        view.problem = view.problem or "not opened yet"
        return view
    try:
        view.counts, oldest = await outbox.on_thread(_depth, outbox)
    except Exception as exc:  # sqlite3.Error: a broken file; the keeper says more
        view.problem = view.problem or f"cannot read: {exc}"
        return view
    view.oldest_waiting_s = max(0.0, time.time() - oldest) if oldest is not None else None
    return view


def _depth(outbox: OutboxStore) -> tuple[dict[str, int], float | None]:
    from dialplan.outbox.store import OutboxState

    waiting = (OutboxState.PENDING, OutboxState.FAILED, OutboxState.IN_FLIGHT)
    return outbox.counts(), outbox.oldest_recorded(waiting)
