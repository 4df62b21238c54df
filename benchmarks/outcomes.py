"""Call-outcome figures: outcomes recorded per second over FastAGI, and the outbox's flush rate.

* **Recording**: a FastAGI server (its own process, as in production; no
  delivery worker) and Asterisk-like clients over loopback TCP, each session the
  hangup handler's ``outcome`` call: headers, one GET FULL VARIABLE, the
  outcome committed to the outbox (WAL, synchronous=FULL) before the session
  ends. Prints outcomes per second and the session time (median, p99).
* **Flush**: outcomes already in the outbox, delivered by the delivery worker to
  the Zoho simulator over HTTP on loopback (a call each; a task for missed
  and answered-by-someone-else calls; a lead for unknown callers). Prints
  outcomes and CRM records per second, and the requests the CRM received,
  with no added latency and with ``--latency-ms`` per request, with a quarter
  of the calls from unknown callers (each looked up again, a dozen phone
  searches on a cold cache) and with known callers only.

Run from the repository root::

    python benchmarks/outcomes.py [--sessions 5000] [--concurrency 50] [--flush 2000] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from asterisk_peer import AsteriskPeer, answered_call_channel, asterisk_headers  # noqa: E402
from zoho_simulator import ZohoSimulator  # noqa: E402

from dialplan.outbox import Outbox  # noqa: E402
from dialplan.outcome import outcome_from_channel  # noqa: E402
from fastagi_server.app import App  # noqa: E402
from fastagi_server.config import config_from_dict  # noqa: E402

KNOWN = "+34928000000"
# An answered call routed to its owner, as the hangup handler finds it.
CHANNEL = answered_call_channel(time.time())


# -- recording over FastAGI -------------------------------------------------------


def _serve(outbox_path: str, port_queue: multiprocessing.Queue) -> None:
    """The server process: FastAGI on a free port, outcomes into ``outbox_path``."""
    from fastagi_server.server import FastAgiServer

    async def run() -> None:
        config = config_from_dict({"outbox": {"path": outbox_path}, "server": {"log_level": "WARNING", "max_sessions": 10_000}})
        server = FastAgiServer(App.from_config(config))
        await server.start("127.0.0.1", 0)
        port_queue.put(server.port)
        await asyncio.Event().wait()

    asyncio.run(run())


async def _drive(port: int, sessions: int, concurrency: int) -> tuple[list[float], float]:
    slots = asyncio.Semaphore(concurrency)
    timings: list[float] = []

    async def one(n: int) -> None:
        async with slots:
            headers = asterisk_headers(script="outcome", uniqueid=f"1800000000.{n}", extension="s", arguments=("900",))
            started = time.perf_counter()
            result = await AsteriskPeer(channel_variables=CHANNEL).call(port, headers)
            timings.append(time.perf_counter() - started)
            assert result.closed_by_server and len(result.commands) == 1

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(sessions)))
    return timings, time.perf_counter() - started


def recording(sessions: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        outbox_path = str(Path(tmp) / "outbox.sqlite")
        ports: multiprocessing.Queue = multiprocessing.Queue()
        server = multiprocessing.Process(target=_serve, args=(outbox_path, ports), daemon=True)
        server.start()
        try:
            port = ports.get(timeout=30)
            asyncio.run(_drive(port, min(200, sessions), concurrency))  # warm-up (ids reused below: duplicates)
            timings, elapsed = asyncio.run(_drive(port, sessions, concurrency))
        finally:
            server.terminate()
            server.join()
        box = Outbox.open(outbox_path)
        stored = box.counts()["pending"]
        box.close()
    assert stored == sessions, f"{stored} outcomes stored for {sessions} sessions"
    timings.sort()
    return {
        "sessions": sessions,
        "per_second": sessions / elapsed,
        "median_ms": statistics.median(timings) * 1000,
        "p99_ms": timings[int(len(timings) * 0.99) - 1] * 1000,
    }


# -- flushing to the Zoho simulator -----------------------------------------------


def _outcomes(count: int, ana_id: str, lead_id: str, unknown: bool) -> list:
    now = time.time()
    routed = {"route_status": "OWNER", "owner_id": ana_id, "module": "Leads", "record_id": lead_id, "route_extension": "101"}
    made = []
    for i in range(count):
        kind = i % 4 if unknown else 1 + i % 3
        if kind == 0:
            caller, readings = f"+3460{i:07d}", {"dial_status": "NOANSWER", "route_status": "NOMATCH"}
        elif kind == 1:
            caller, readings = KNOWN, {**routed, "dial_status": "ANSWER", "peer_number": "102", "answered_s": "61"}
        elif kind == 2:
            caller, readings = KNOWN, {**routed, "dial_status": "ANSWER", "peer_number": "101", "answered_s": "5"}
        else:
            caller, readings = KNOWN, {**routed, "dial_status": "NOANSWER"}
        made.append(outcome_from_channel(call_id=f"{int(now)}.{i}", caller=caller, readings=readings, ended_at=now - 60, region="ES"))
    return made


def flushing(count: int, latency_ms: float, unknown: bool = True) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, ZohoSimulator(latency_s=latency_ms / 1000, max_tokens_per_window=1000) as sim:
        ana = sim.add_user("Ana García", "ana@example.com", Extension="101")
        sim.add_user("Ben Okafor", "ben@example.com", Extension="102")
        boss = sim.add_user("Sam Senior", "sam@example.com")
        lead = sim.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
        outbox_path = Path(tmp) / "outbox.sqlite"
        box = Outbox.open(outbox_path)
        box.record_many([(o, time.time()) for o in _outcomes(count, ana["id"], lead["id"], unknown)])
        box.close()
        config = config_from_dict({
            "crm": {"backend": "zoho"},
            "routing": {"default_region": "ES"},
            "zoho": sim.zoho_config(user_extension_field="Extension"),
            "outbox": {"path": str(outbox_path)},
            "outcomes": {"senior_manager_id": boss["id"]},
        })

        async def flush():
            app = App.from_config(config)
            try:
                started = time.perf_counter()
                summary = await app.delivery_worker.flush()
                return summary, time.perf_counter() - started
            finally:
                await app.aclose()

        summary, elapsed = asyncio.run(flush())
        assert summary.delivered == count, summary
        records = sum(len(sim.records(module)) for module in ("Calls", "Tasks")) + len(sim.records("Leads")) - 1
        requests = sim.api_requests()
        inserts = [r for r in requests if r.method == "POST"]
        lookups = [r for r in requests if r.path.endswith("/search") and "phone" in r.query]
    return {
        "outcomes": count,
        "latency_ms": latency_ms,
        "seconds": elapsed,
        "outcomes_per_second": count / elapsed,
        "records_per_second": records / elapsed,
        "records": records,
        "requests": len(requests),
        "inserts": len(inserts),
        "lookups": len(lookups),
        "requests_per_outcome": len(requests) / count,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000, help="outcome sessions over FastAGI")
    parser.add_argument("--concurrency", type=int, default=50, help="sessions at once")
    parser.add_argument("--flush", type=int, default=2000, help="outcomes flushed to the simulator")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added latency per CRM request, for the second flush run")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    options = parser.parse_args(argv)
    if options.quick:
        options.sessions, options.flush = 500, 200

    rec = recording(options.sessions, options.concurrency)
    print(f"recording over FastAGI: {rec['sessions']} outcomes, {options.concurrency} at once")
    print(f"  {rec['per_second']:,.0f} outcomes/s; session median {rec['median_ms']:.2f} ms, p99 {rec['p99_ms']:.2f} ms (each committed, synchronous=FULL)")
    for latency, unknown in ((0.0, True), (options.latency_ms, True), (options.latency_ms, False)):
        fl = flushing(options.flush, latency, unknown)
        mix = "a quarter from unknown callers" if unknown else "known callers only"
        print(f"flush to the Zoho simulator, {fl['latency_ms']:.0f} ms per request, {mix}: {fl['outcomes']} outcomes in {fl['seconds']:.2f} s")
        print(
            f"  {fl['outcomes_per_second']:,.0f} outcomes/s, {fl['records_per_second']:,.0f} CRM records/s; "
            f"{fl['records']} records in {fl['inserts']} inserts; {fl['requests']} requests ({fl['requests_per_outcome']:.2f} per outcome), "
            f"{fl['lookups']} of them phone searches for the unknown callers (asked again at sync time; the server's lookup cache usually answers these)"
        )


if __name__ == "__main__":
    main()
