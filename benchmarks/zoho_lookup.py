"""Zoho lookup figures: decision time with a warm cache, CRM requests per call in a burst.

Runs the real stack (router, cache, Zoho client) against the Zoho simulator
on loopback and prints:

* the routing decision time for a caller already in the cache (median, p99);
* for a burst of 1,000 calls from 100 distinct numbers arriving together on a
  cold cache: the requests the CRM received, per call and per number.

Run from the repository root::

    python benchmarks/zoho_lookup.py [--latency-ms 20] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from zoho_simulator import ZohoSimulator

from dialplan import InboundCall
from fastagi_server.app import App
from fastagi_server.config import config_from_dict


def seed(simulator: ZohoSimulator, numbers: int) -> list[str]:
    """``numbers`` callers: 40% leads typed with spaces, 30% contacts with an open deal, 30% unknown."""
    owner = simulator.add_user("Ana García", "ana@example.com", Extension="101")
    callers = []
    for index in range(numbers):
        national = f"928{index:06d}"
        callers.append("+34" + national)
        share = index % 10
        if share < 4:
            spaced = " ".join([national[:3], national[3:5], national[5:7], national[7:]])
            simulator.add_record("Leads", owner, Full_Name=f"Lead {index}", Last_Name="L", Phone=spaced, Lead_Status="New")
        elif share < 7:
            contact = simulator.add_record("Contacts", owner, Full_Name=f"Contact {index}", Last_Name="C", Phone="+34" + national)
            simulator.add_record("Deals", owner, Deal_Name=f"Deal {index}", Stage="Qualification", Contact_Name={"id": contact["id"]})
    return callers


def config_for(simulator: ZohoSimulator):
    return config_from_dict({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES", "deadline_ms": 10_000},
        "zoho": simulator.zoho_config(user_extension_field="Extension"),
    })


async def warm_decisions(simulator: ZohoSimulator, caller: str, count: int) -> list[float]:
    app = App.from_config(config_for(simulator))
    try:
        await app.router.decide(InboundCall(caller=caller))  # fills the cache
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            decision = await app.router.decide(InboundCall(caller=caller))
            timings.append(time.perf_counter() - started)
            assert decision.from_cache
        return timings
    finally:
        await app.aclose()


async def burst(simulator: ZohoSimulator, callers: list[str], calls_per_number: int) -> tuple[dict[str, int], float]:
    app = App.from_config(config_for(simulator))
    try:
        calls = [caller for caller in callers for _ in range(calls_per_number)]
        random.Random(7).shuffle(calls)
        started = time.perf_counter()
        decisions = await asyncio.gather(*(app.router.decide(InboundCall(caller=c)) for c in calls))
        elapsed = time.perf_counter() - started
        statuses: dict[str, int] = {}
        for decision in decisions:
            statuses[decision.status.value] = statuses.get(decision.status.value, 0) + 1
        return statuses, elapsed
    finally:
        await app.aclose()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulated Zoho answer time per request")
    parser.add_argument("--decisions", type=int, default=20_000, help="warm-cache decisions to time")
    parser.add_argument("--numbers", type=int, default=100)
    parser.add_argument("--calls-per-number", type=int, default=10)
    args = parser.parse_args(argv)

    with ZohoSimulator(latency_s=args.latency_ms / 1000) as simulator:
        callers = seed(simulator, args.numbers)
        timings = asyncio.run(warm_decisions(simulator, callers[0], args.decisions))
        simulator.reset_log()
        statuses, elapsed = asyncio.run(burst(simulator, callers, args.calls_per_number))
        api = len(simulator.api_requests())
        tokens = len(simulator.token_requests())

    calls = args.numbers * args.calls_per_number
    figures = {
        "warm_decision_median_us": statistics.median(timings) * 1e6,
        "warm_decision_p99_us": percentile(timings, 0.99) * 1e6,
        "burst_calls": calls,
        "burst_api_requests": api,
        "burst_token_requests": tokens,
        "burst_requests_per_call": (api + tokens) / calls,
        "burst_requests_per_number": (api + tokens) / args.numbers,
        "burst_seconds": elapsed,
    }
    print(f"warm cache decision: median {figures['warm_decision_median_us']:.0f} us, p99 {figures['warm_decision_p99_us']:.0f} us ({args.decisions} decisions)")
    print(
        f"burst of {calls} calls from {args.numbers} numbers (Zoho answering in {args.latency_ms:.0f} ms): "
        f"{api} API + {tokens} token request(s) = {figures['burst_requests_per_call']:.3f} per call, "
        f"{figures['burst_requests_per_number']:.2f} per number; all decided in {elapsed:.2f} s; {statuses}"
    )
    return figures


if __name__ == "__main__":
    main()
