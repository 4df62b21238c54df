"""What the routing policy costs: decisions per second in process, and calls
per second over loopback TCP with and without device-state questions.

    python benchmarks/bench_routing_policy.py [--calls 2000] [--concurrency 50]

Prints figures; asserts nothing. The CRM is an in-memory stand-in that answers
at once, so the figures are the policy's and the protocol's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from asterisk_peer import AsteriskPeer, asterisk_headers
from crmlookup.records import LookupResult, Match, Owner
from dialplan import FixedDeviceStates, InboundCall, Router
from fastagi_server.app import App
from fastagi_server.config import config_from_dict
from fastagi_server.server import FastAgiServer

MATCHES = [
    Match("Leads", "L-1", "Chain Caller", Owner("u1", "Ana", "ana@example.com", ("101",))),
    Match("Contacts", "C-1", "Chain Caller", Owner("u2", "Ben", "ben@example.com", ("102",))),
    Match("Accounts", "A-1", "Chain Co", Owner("u3", "Carla", "carla@example.com", ("103",))),
]
ROUTING = {
    "default_region": "ES",
    "teams": {"floor": {"extensions": ["201", "202"]}},
    "team": "floor",
    "hours": {"office": {"time_zone": "Europe/Madrid", "open": ["daily 00:00-24:00"]}},
    "owner_hours": {"u1": "office", "u2": "office"},
    "policies": {"support": {"dids": ["+34928555200"], "lookup_order": ["Contacts", "Accounts"]}},
}


class InstantCrm:
    name = "instant"

    async def lookup(self, number, modules):
        return LookupResult(matches=[m for m in MATCHES if m.module in modules])

    async def aclose(self):
        pass


def router(extra: dict) -> Router:
    config = config_from_dict({"routing": {**ROUTING, **extra}})
    return Router(config.routing, InstantCrm())


async def per_decision(r: Router, states: dict[str, str], n: int) -> float:
    probe = FixedDeviceStates(states)
    call = InboundCall(caller="+34928000001", did="+34928555100")
    started = time.perf_counter()
    for _ in range(n):
        await r.decide(call, probe)
    return (time.perf_counter() - started) / n * 1e6


async def over_tcp(extra: dict, states: dict[str, str], calls: int, concurrency: int) -> tuple[float, float, int]:
    config = config_from_dict({"routing": {**ROUTING, **extra}})
    backend = InstantCrm()
    server = FastAgiServer(App(config=config, backend=backend, router=Router(config.routing, backend)))
    await server.start("127.0.0.1", 0)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    commands = 0

    async def one(i: int) -> None:
        nonlocal commands
        async with gate:
            started = time.perf_counter()
            result = await AsteriskPeer(device_states=states).call(server.port, asterisk_headers(caller="+34928000001", uniqueid=f"b.{i}"))
            latencies.append(time.perf_counter() - started)
            commands += len(result.commands)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    elapsed = time.perf_counter() - started
    await server.shutdown(grace_ms=1000)
    return calls / elapsed, statistics.median(latencies) * 1000, commands // calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--decisions", type=int, default=20000)
    args = parser.parse_args()
    busy = {"PJSIP/101": "INUSE", "PJSIP/102": "BUSY", "PJSIP/103": "UNAVAILABLE"}
    scenarios = [
        ("owner free, availability off", {"check_availability": False}, {}),
        ("owner free, 1 state question", {}, {}),
        ("3 owners busy -> team, 5 questions, hours", {}, busy),
    ]
    print(f"in process (Router.decide, instant CRM, {args.decisions} decisions):")
    for label, extra, states in scenarios:
        us = asyncio.run(per_decision(router(extra), states, args.decisions))
        print(f"  {label:45s} {us:8.1f} us/decision")
    print(f"over loopback TCP ({args.calls} calls, {args.concurrency} at once, Python peer playing Asterisk):")
    for label, extra, states in scenarios:
        rate, median_ms, per_call = asyncio.run(over_tcp(extra, states, args.calls, args.concurrency))
        print(f"  {label:45s} {rate:8.0f} calls/s  median {median_ms:6.2f} ms  {per_call} commands/call")


if __name__ == "__main__":
    main()
