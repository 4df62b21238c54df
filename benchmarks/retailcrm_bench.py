"""retailCRM figures: a cold lookup at 300 ms per request is one round trip, and the screen pop does not delay the route.

Runs the real stack (FastAGI server over TCP, router, cache, retailCRM
client) against the retailCRM simulator on loopback, every request taking
``--retailcrm-latency-ms`` (300 ms by default), and prints, in the same run:

* one simulated round trip: a bare ``GET /api/credentials`` with httpx;
* a cold lookup: the routing decision for a caller never seen (every stored
  form of the number asked at once), as a ratio of that round trip;
* the route answered over TCP with the screen pop on (the call event takes
  300 ms too): the ratio is the same, as the event goes after the answer;
* how long after the answer each event reached retailCRM.

Run from the repository root::

    python benchmarks/retailcrm_bench.py [--retailcrm-latency-ms 300] [--retailcrm-callers 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from asterisk_peer import AsteriskPeer, asterisk_headers  # noqa: E402
from retailcrm_simulator import KEY, RetailCrmSimulator  # noqa: E402

from dialplan import InboundCall  # noqa: E402
from fastagi_server.app import App  # noqa: E402
from fastagi_server.config import config_from_dict  # noqa: E402
from fastagi_server.server import FastAgiServer  # noqa: E402
from report import standalone, summary  # noqa: E402


def seed(sim: RetailCrmSimulator, callers: int) -> list[str]:
    """``callers`` customers, their phones stored in the national form with the trunk prefix (8 916 ...)."""
    sim.add_user(7, "Olga", "Petrova", code="101")
    numbers = []
    for index in range(callers * 2):
        national = f"916{index:07d}"
        sim.add_customer(1000 + index, f"Customer {index}", [f"8 {national[:3]} {national[3:6]}-{national[6:8]}-{national[8:]}"], manager_id=7)
        numbers.append("+7" + national)
    return numbers


def config_for(sim: RetailCrmSimulator, events: bool):
    return config_from_dict({
        "crm": {"backend": "retailcrm"},
        "routing": {"default_region": "RU", "deadline_ms": 10_000},
        "retailcrm": {**sim.retailcrm_config(), "call_events": events, "max_concurrency": 10},
    })


async def round_trips(sim: RetailCrmSimulator, count: int) -> list[float]:
    import httpx

    timings = []
    async with httpx.AsyncClient() as client:
        for _ in range(count):
            started = time.perf_counter()
            reply = await client.get(f"{sim.url}/api/credentials", headers={"X-API-KEY": KEY})
            timings.append((time.perf_counter() - started) * 1000)
            assert reply.json()["success"] is True
    return timings


async def cold_decisions(sim: RetailCrmSimulator, callers: list[str]) -> tuple[list[float], int]:
    app = App.from_config(config_for(sim, events=False))
    timings, misrouted = [], 0
    try:
        for caller in callers:
            started = time.perf_counter()
            decision = await app.router.decide(InboundCall(caller=caller))
            timings.append((time.perf_counter() - started) * 1000)
            misrouted += decision.target != "PJSIP/101"
    finally:
        await app.aclose()
    return timings, misrouted


async def routes_with_screen_pop(sim: RetailCrmSimulator, callers: list[str]) -> tuple[list[float], list[float], int]:
    server = FastAgiServer(App.from_config(config_for(sim, events=True)))
    await server.start("127.0.0.1", 0)
    answered_at: dict[str, float] = {}
    timings, misrouted = [], 0
    try:
        for index, caller in enumerate(callers):
            uniqueid = f"1760000000.{index}"
            started = time.perf_counter()
            result = await AsteriskPeer().call(server.port, asterisk_headers(caller=caller, uniqueid=uniqueid))
            timings.append((time.perf_counter() - started) * 1000)
            answered_at[uniqueid] = time.time()
            misrouted += result.variables.get("CRM_TARGET") != "PJSIP/101"
        events = await asyncio.to_thread(sim.wait_for_events, len(callers), 60.0)
    finally:
        await server.shutdown(grace_ms=1000)
    after = [(event["received_at"] - answered_at[event["callExternalId"]]) * 1000 for event in events if event["callExternalId"] in answered_at]
    return timings, after, misrouted


def run(options: argparse.Namespace) -> dict:
    with RetailCrmSimulator(rate_limit_per_s=None) as sim:
        sim.latency_s = options.retailcrm_latency_ms / 1000
        numbers = seed(sim, options.retailcrm_callers)
        trip = asyncio.run(round_trips(sim, 5))
        before = len(sim.requests_to("/api/v5/telephony/manager"))
        decisions, misrouted = asyncio.run(cold_decisions(sim, numbers[: options.retailcrm_callers]))
        lookups = len(sim.requests_to("/api/v5/telephony/manager")) - before
        routed, after, misrouted_tcp = asyncio.run(routes_with_screen_pop(sim, numbers[options.retailcrm_callers:]))
    round_trip = statistics.median(trip)
    return {
        "latency_ms": options.retailcrm_latency_ms,
        "callers": options.retailcrm_callers,
        "round_trip_ms": summary(trip),
        "cold_decision_ms": summary(decisions),
        "cold_ratio_p50": round(statistics.median(decisions) / round_trip, 2),
        "cold_ratio_max": round(max(decisions) / round_trip, 2),
        "requests_per_lookup": round(lookups / max(1, len(decisions)), 1),
        "route_with_screen_pop_ms": summary(routed),
        "route_with_screen_pop_ratio_p50": round(statistics.median(routed) / round_trip, 2),
        "event_after_answer_ms": summary(after),
        "events": len(after),
        "misrouted": misrouted + misrouted_tcp,
    }


def table(report: dict) -> str:
    trip = report["round_trip_ms"]["p50"]
    cold, routed, after = report["cold_decision_ms"], report["route_with_screen_pop_ms"], report["event_after_answer_ms"]
    return "\n".join([
        f"retailCRM: {report['latency_ms']:.0f} ms per request, {report['callers']} cold callers each way (phones stored as 8 9xx xxx-xx-xx)",
        f"  one simulated round trip: p50 {trip} ms",
        f"  cold lookup: p50 {cold['p50']} ms, max {cold['max']} ms = {report['cold_ratio_p50']}x / {report['cold_ratio_max']}x one round trip "
        f"({report['requests_per_lookup']} requests per lookup, sent at once)",
        f"  route over TCP with the screen pop: p50 {routed['p50']} ms = {report['route_with_screen_pop_ratio_p50']}x one round trip; "
        f"the {report['events']} events reached retailCRM p50 {after.get('p50')} ms after the answer",
        f"  misrouted: {report['misrouted']}",
    ])


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retailcrm-latency-ms", type=float, default=300.0, help="retailcrm: the answer time of every request")
    parser.add_argument("--retailcrm-callers", type=int, help="retailcrm: cold callers for the lookup and for the route (default 30; quick 5)")


def defaults(options: argparse.Namespace) -> None:
    if getattr(options, "retailcrm_callers", None) is None:
        options.retailcrm_callers = 5 if getattr(options, "quick", False) else 30


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_options, defaults, run, table, argv)


if __name__ == "__main__":
    sys.exit(main())
