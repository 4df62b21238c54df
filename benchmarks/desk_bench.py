"""Zoho Desk figures: a cold Tickets lookup at 300 ms per request is one round trip; what a mirror would cost instead.

Runs the real stack (router, cache, Desk client) against the Desk simulator
on loopback, every request taking ``--desk-latency-ms`` (300 ms by
default), and prints, in the same run:

* one simulated round trip: a bare ticket search with httpx;
* a cold Tickets lookup (a caller never seen), as a ratio of that round trip,
  and the requests each sent (the search; the agents, departments and
  availability when their copies are stale, all at once);
* the same caller again: answered from the lookup cache;
* the requests a day the live lookup costs against those a mirror of the
  open tickets would (``--desk-open-tickets`` open tickets listed 100 a
  page every ``--desk-mirror-interval-s``), for ``--desk-calls-per-day``
  calls of which ``--desk-new-caller-share`` miss the cache.

Run from the repository root::

    python benchmarks/desk_bench.py [--desk-latency-ms 300] [--desk-callers 20]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from zoho_desk_simulator import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoDeskSimulator  # noqa: E402

from dialplan import InboundCall  # noqa: E402
from fastagi_server.app import App  # noqa: E402
from fastagi_server.config import config_from_dict  # noqa: E402
from report import standalone, summary  # noqa: E402

SEARCH = "/api/v1/tickets/search"


def seed(sim: ZohoDeskSimulator, callers: int) -> list[str]:
    support = sim.add_department("Support")
    agent = sim.add_agent("Dee", "Desk", extn="201")
    numbers = []
    for index in range(callers):
        number = f"+3492810{index:04d}"
        sim.add_ticket(number, assignee=agent, department=support)
        numbers.append(number)
    return numbers


def config_for(sim: ZohoDeskSimulator, state: Path) -> Any:
    return config_from_dict({
        "routing": {"default_region": "ES", "deadline_ms": 10_000, "lookup_order": ["Tickets"], "check_availability": False},
        "zoho_desk": sim.desk_config(token_cache_file=str(state / "desk-token.json"), max_concurrency=10),
    })


async def round_trips(sim: ZohoDeskSimulator, count: int) -> list[float]:
    import httpx

    timings = []
    async with httpx.AsyncClient() as client:
        form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN}
        token = (await client.post(f"{sim.url}/oauth/v2/token", data=form)).json()["access_token"]
        headers = {"Authorization": f"Zoho-oauthtoken {token}", "orgId": sim.org_id}
        for _ in range(count):
            started = time.perf_counter()
            reply = await client.get(f"{sim.url}{SEARCH}", params={"phone": "+34928999999"}, headers=headers)
            timings.append((time.perf_counter() - started) * 1000)
            assert reply.status_code == 204
    return timings


async def decisions(sim: ZohoDeskSimulator, state: Path, callers: list[str]) -> dict[str, Any]:
    app = App.from_config(config_for(sim, state))
    cold, warm, misrouted, requests = [], [], 0, []
    try:
        for caller in callers:
            before = len(sim.requests)
            started = time.perf_counter()
            decision = await app.router.decide(InboundCall(caller=caller))
            cold.append((time.perf_counter() - started) * 1000)
            requests.append(len(sim.requests) - before)
            misrouted += decision.target != "PJSIP/201"
            started = time.perf_counter()
            again = await app.router.decide(InboundCall(caller=caller))
            warm.append((time.perf_counter() - started) * 1000)
            misrouted += again.target != "PJSIP/201"
    finally:
        await app.aclose()
    return {"cold": cold, "warm": warm, "misrouted": misrouted, "requests": requests}


def run(options: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    with ZohoDeskSimulator(rate_limit_per_s=None) as sim, tempfile.TemporaryDirectory() as state:
        sim.latency_s = options.desk_latency_ms / 1000
        numbers = seed(sim, options.desk_callers)
        trip = asyncio.run(round_trips(sim, 5))
        measured = asyncio.run(decisions(sim, Path(state), numbers))
    round_trip = statistics.median(trip)
    cold, warm = measured["cold"], measured["warm"]
    # Requests a day: live, each call that misses the cache is two searches, tickets and contacts
    # (the agents and availability copies are refreshed at most every agents_ttl_s / presence_ttl_s, counted apart).
    live_searches = options.desk_calls_per_day * options.desk_new_caller_share * 2
    side = 86_400 / 600 * 2 + 86_400 / 30  # agents + departments every 10 min, availability every 30 s (at most)
    mirror = 86_400 / options.desk_mirror_interval_s * max(1, math.ceil(options.desk_open_tickets / 100))
    return {
        "latency_ms": options.desk_latency_ms,
        "callers": options.desk_callers,
        "round_trip_ms": summary(trip, 2),
        "cold_decision_ms": summary(cold, 2),
        "cold_ratio_p50": round(statistics.median(cold) / round_trip, 2),
        "cold_ratio_max": round(max(cold) / round_trip, 2),
        "first_lookup_requests": measured["requests"][0],
        "later_lookup_requests_p50": statistics.median(measured["requests"][1:] or measured["requests"]),
        "cached_decision_ms": summary(warm, 2),
        "cached_ratio_p50": round(statistics.median(warm) / round_trip, 4),
        "requests_per_day_live": round(live_searches + side),
        "requests_per_day_mirror": round(mirror + side),
        "misrouted": measured["misrouted"],
    }


def table(report: dict[str, Any]) -> str:
    trip = report["round_trip_ms"]["p50"]
    cold, warm = report["cold_decision_ms"], report["cached_decision_ms"]
    return "\n".join([
        f"Zoho Desk: {report['latency_ms']:.0f} ms per request, {report['callers']} callers with an open ticket",
        f"  one simulated round trip: p50 {trip} ms",
        f"  cold Tickets lookup: p50 {cold['p50']} ms, max {cold['max']} ms = {report['cold_ratio_p50']}x / {report['cold_ratio_max']}x "
        f"one round trip ({report['first_lookup_requests']} requests for the first caller, sent at once; "
        f"{report['later_lookup_requests_p50']} for the next)",
        f"  the same caller again (lookup cache): p50 {warm['p50']} ms = {report['cached_ratio_p50']}x one round trip",
        f"  requests a day, live behind the cache: {report['requests_per_day_live']}; "
        f"a mirror of the open tickets instead: {report['requests_per_day_mirror']}",
        f"  misrouted: {report['misrouted']}",
    ])


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--desk-latency-ms", type=float, default=300.0, help="desk: the answer time of every request")
    parser.add_argument("--desk-callers", type=int, help="desk: callers with an open ticket (default 20; quick 4)")
    parser.add_argument("--desk-calls-per-day", type=int, default=2000, help="desk: support calls a day, for the request counts")
    parser.add_argument("--desk-new-caller-share", type=float, default=0.6, help="desk: share of calls the lookup cache cannot answer")
    parser.add_argument("--desk-open-tickets", type=int, default=3000, help="desk: open tickets a mirror would list")
    parser.add_argument("--desk-mirror-interval-s", type=float, default=60.0, help="desk: how often a mirror would list them")


def defaults(options: argparse.Namespace) -> None:
    if getattr(options, "desk_callers", None) is None:
        options.desk_callers = 4 if getattr(options, "quick", False) else 20


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_options, defaults, run, table, argv)


if __name__ == "__main__":
    sys.exit(main())
