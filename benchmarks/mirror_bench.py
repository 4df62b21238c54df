"""The Zoho mirror: first load, calls answered from it, calls without it, credits, memory.

Against a generated org served by the simulator in another process, every
Zoho request taking ``--latency-ms`` (300 ms by default):

* the first load of ``--records`` records (time, API credits, peak memory of
  the loading process), then one refresh;
* ``--callers`` distinct cold callers, a fifth each of leads, deals,
  contacts, accounts and unknown numbers, decided with the mirror: decision
  time by kind and the CRM requests the calls waited for;
* the same callers with the mirror off (the live lookup, every search at
  once): decision time by kind, TIMEOUTs at the deadline, requests per call;
* API credits per day at the default refresh, for 10,000 and 100,000 records;
* memory: a mirror file of ``--memory-phones`` phones, and a process
  answering lookups from it (peak RSS).

    python benchmarks/mirror_bench.py [--records 100000] [--latency-ms 300] [--callers 1000]
    python benchmarks/run.py --only mirror
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from crmlookup.mirror.credits import estimate  # noqa: E402
from crmlookup.mirror.settings import MirrorSettings  # noqa: E402
from dialplan import InboundCall  # noqa: E402
from fastagi_server.app import App  # noqa: E402
from fastagi_server.config import config_from_dict  # noqa: E402

KINDS = ("lead", "deal", "contact", "account", "unknown")
DEADLINE_MS = 1500
# Numbers the mirror does not know bring the next refresh this close (the default is 30 s; shorter here, to wait less).
MISS_REFRESH_S = 5


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def start_org(records: int, latency_ms: float, sample: int) -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "zoho_org.py"), "--records", str(records), "--latency-ms", str(latency_ms), "--sample", str(sample)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def stop_org(process: subprocess.Popen) -> dict:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    last = process.stdout.readline()
    process.wait(timeout=30)
    return json.loads(last) if last else {}


def config_for(org: dict, mirror: dict):
    return config_from_dict({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES", "deadline_ms": DEADLINE_MS},
        "zoho": org["zoho"],
        "mirror": mirror,
    })


def callers_of(org: dict, count: int) -> list[tuple[str, str]]:
    """A fifth each of leads, deals, contacts, accounts and unknown numbers, mixed as calls come."""
    per_kind = max(1, count // len(KINDS))
    callers = [(kind, number) for kind in KINDS[:-1] for number in org["kinds"][kind][:per_kind]]
    callers += [("unknown", f"+34699{n:06d}") for n in range(per_kind)]
    random.Random(5).shuffle(callers)
    return callers


def _sent(app: App) -> int:
    from crmlookup.factory import live_backend

    return sum(live_backend(app.backend).api.sent.values())


def _routed_right(org: dict, kind: str, number: str, decision) -> bool:
    if kind == "unknown":
        return decision.status.value == "NOMATCH"
    if decision.status.value != "OWNER" or decision.match is None:
        return False
    if kind == "account":  # an account's deals, when it has some, come before it in the lookup order
        return decision.match.module in ("Accounts", "Deals")
    return decision.match.owner is not None and decision.match.owner.id == org["owners"][number]


async def with_mirror(org: dict, path: str, callers: list[tuple[str, str]]) -> dict:
    app = App.from_config(config_for(org, {"path": path, "miss_refresh_s": MISS_REFRESH_S}), serving=True)
    mirror = app.mirror
    assert mirror is not None and mirror.refresher is not None
    try:
        await mirror.refresher.open()
        started = time.perf_counter()
        load = await mirror.refresher.sync()
        load_s = time.perf_counter() - started
        peak_after_load_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        refresh = await mirror.refresher.sync()
        await app.router.decide(InboundCall(caller=callers[0][1]))  # the lookup thread starts
        by_kind: dict[str, list[float]] = {kind: [] for kind in KINDS}
        waited: dict[str, int] = {kind: 0 for kind in KINDS}
        wrong = 0
        sent_before = _sent(app)
        gap_s = 1 / org["call_rate"]
        for kind, number in callers:
            await asyncio.sleep(gap_s)  # calls arrive at --mirror-call-rate, as on a busy PBX
            before = mirror.calls_waited_for_crm
            started = time.perf_counter()
            decision = await app.router.decide(InboundCall(caller=number))
            by_kind[kind].append((time.perf_counter() - started) * 1000)
            waited[kind] += mirror.calls_waited_for_crm - before
            wrong += not _routed_right(org, kind, number, decision) or decision.source != "mirror"
        refresher = mirror.refresher
        while refresher._soon is not None or (refresher._quick is not None and not refresher._quick.done()):
            await asyncio.sleep(0.05)  # the early refresh the unknown numbers brought
        # Numbers the mirror does not know are answered at once (mirror.miss_wait_ms = 0) and
        # bring the next refresh forward: what that costs, whatever their number, is counted here.
        background = _sent(app) - sent_before
        return {
            "first_load_s": round(load_s, 1),
            "first_load_credits": load.credits,
            "first_load_records": sum(load.written.values()),
            "peak_rss_after_load_mib": round(peak_after_load_kib / 1024, 1),
            "refresh_s": round(refresh.seconds, 2),
            "refresh_credits": refresh.credits,
            "decision_ms": {kind: {"p50": round(percentile(v, 0.5), 3), "p99": round(percentile(v, 0.99), 3), "max": round(max(v), 3)} for kind, v in by_kind.items()},
            "requests_waited_for": waited,
            "background_lookup_requests": background,
            "misrouted": wrong,
        }
    finally:
        await app.aclose()


async def without_mirror(org: dict, callers: list[tuple[str, str]], concurrency: int) -> dict:
    app = App.from_config(config_for(org, {"enabled": False}))
    from crmlookup.factory import live_backend

    try:
        await live_backend(app.backend).warm()
        by_kind: dict[str, list[float]] = {kind: [] for kind in KINDS}
        statuses: dict[str, int] = {}
        wrong = 0
        before = _sent(app)
        slots = asyncio.Semaphore(concurrency)

        async def one(kind: str, number: str) -> None:
            nonlocal wrong
            async with slots:
                started = time.perf_counter()
                decision = await app.router.decide(InboundCall(caller=number))
                by_kind[kind].append((time.perf_counter() - started) * 1000)
            statuses[decision.status.value] = statuses.get(decision.status.value, 0) + 1
            wrong += not _routed_right(org, kind, number, decision)

        await asyncio.gather(*(one(kind, number) for kind, number in callers))
        return {
            "decision_ms": {kind: {"p50": round(percentile(v, 0.5), 1), "p99": round(percentile(v, 0.99), 1), "max": round(max(v), 1)} for kind, v in by_kind.items()},
            "statuses": statuses,
            "requests_per_call": round((_sent(app) - before) / len(callers), 2),
            "misrouted": wrong,
        }
    finally:
        await app.aclose()


MEMORY_SCRIPT = r"""
import json, random, resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from crmlookup.mirror.records import MirrorRecord
from crmlookup.mirror.store import MirrorStore
from crmlookup.records import Owner
from crmlookup.zoho.feed import ZohoOpenRule
phones, path = int(sys.argv[1]), Path(sys.argv[2])
store = MirrorStore.open(path)
store.renormalise("ES")
rule = ZohoOpenRule(frozenset())
owners = [Owner(f"u{{n}}", f"Rep {{n}}", f"rep{{n}}@example.com") for n in range(50)]
started = time.perf_counter()
batch, number = [], 600_000_000
for index in range(phones // 2):  # contacts with two phones each
    batch.append(MirrorRecord("Contacts", str(10**15 + index), f"Contact {{index}}", owners[index % 50], (f"+34{{number + 2 * index}}", f"+34 {{number + 2 * index + 1}}"), 1.0))
    if len(batch) == 1000:
        store.apply(batch, rule, "ES")
        batch = []
store.apply(batch, rule, "ES")
store.put({{"load_complete": "1"}})
count = store.conn.execute("SELECT count(*) FROM phones").fetchone()[0]
store.close()
print(json.dumps({{
    "phones": count, "build_s": round(time.perf_counter() - started, 1),
    "build_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "file_mib": round(path.stat().st_size / 2**20, 1),
}}))
"""

LOOKUP_SCRIPT = r"""
import asyncio, json, random, resource, sys, time
sys.path.insert(0, {root!r})
from crmlookup.local_directory import LocalDirectory
from crmlookup.mirror.store import open_readonly
from crmlookup.phone import normalise
from pathlib import Path
phones, path = int(sys.argv[1]), Path(sys.argv[2])
index = LocalDirectory(open_readonly(path), str(path), source="mirror")
rng = random.Random(3)
numbers = [normalise(f"+34{{600_000_000 + rng.randrange(phones)}}", "ES") for _ in range(20_000)]
async def main():
    timings = []
    for number in numbers:
        started = time.perf_counter()
        result = await index.lookup(number, ("Leads", "Deals", "Contacts", "Accounts"))
        timings.append(time.perf_counter() - started)
        assert result.matches, number
    await index.aclose()
    timings.sort()
    return timings
timings = asyncio.run(main())
print(json.dumps({{
    "lookups": len(timings), "p50_ms": round(timings[len(timings) // 2] * 1000, 3),
    "p99_ms": round(timings[int(len(timings) * 0.99)] * 1000, 3),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}}))
"""


def memory(phones: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "mirror.sqlite")
        built = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(root=str(ROOT)), str(phones), path], capture_output=True, text=True, check=True)
        looked = subprocess.run([sys.executable, "-c", LOOKUP_SCRIPT.format(root=str(ROOT)), str(phones), path], capture_output=True, text=True, check=True)
        return {**json.loads(built.stdout), "lookups": json.loads(looked.stdout)}


def credit_table() -> dict:
    table = {}
    for records in (10_000, 100_000):
        split = {"Leads": records * 4 // 10, "Contacts": records * 3 // 10, "Accounts": records // 10, "Deals": records // 5}
        cost = estimate(split, MirrorSettings(), users=50)
        table[str(records)] = {"first_load": cost.first_load, "per_refresh": cost.per_refresh, "per_day": cost.per_day}
    return table


def run(options: argparse.Namespace) -> dict:
    process, org = start_org(options.mirror_records, options.mirror_latency_ms, max(1, options.mirror_callers // len(KINDS)))
    org["latency_s"] = options.mirror_latency_ms / 1000
    org["call_rate"] = options.mirror_call_rate
    callers = callers_of(org, options.mirror_callers)
    try:
        with tempfile.TemporaryDirectory() as folder:
            mirrored = asyncio.run(with_mirror(org, str(Path(folder) / "mirror.sqlite"), callers))
        live = asyncio.run(without_mirror(org, callers, options.mirror_live_concurrency))
    finally:
        served = stop_org(process)
    report = {
        "records": org["records"],
        "latency_ms": options.mirror_latency_ms,
        "callers": len(callers),
        "call_rate": options.mirror_call_rate,
        "live_concurrency": options.mirror_live_concurrency,
        "with_mirror": mirrored,
        "without_mirror": live,
        "credits": credit_table(),
        "zoho_credits_charged": served.get("credits_used"),
    }
    if options.memory_phones:
        report["memory"] = memory(options.memory_phones)
    return report


def table(report: dict) -> str:
    m, live = report["with_mirror"], report["without_mirror"]
    # The modules are listed side by side: the longest one, a round trip a page, is the floor.
    floor_s = max(-(-count // 200) for count in report["records"].values()) * report["latency_ms"] / 1000
    lines = [
        f"Zoho mirror: {sum(report['records'].values()):,} records {report['records']}, {report['latency_ms']:.0f} ms per Zoho request, "
        f"{report['callers']} cold callers ({report['call_rate']:.0f} a second with the mirror; {report['live_concurrency']} at once without)",
        f"  first load: {m['first_load_records']:,} records in {m['first_load_s']} s ({m['first_load_s'] / floor_s:.2f}x its floor: "
        f"{floor_s:.0f} s, a round trip per page of the largest module), {m['first_load_credits']:,} API credits, "
        f"peak RSS {m['peak_rss_after_load_mib']} MiB; a refresh: {m['refresh_s']} s, {m['refresh_credits']} credits",
        f"  {'kind':<8} {'mirror p50':>11} {'p99':>8} {'max':>8} {'waited':>7} | {'no mirror p50':>13} {'p99':>8} {'max':>8}   (ms; waited: calls that waited for Zoho)",
    ]
    for kind in KINDS:
        a, b = m["decision_ms"][kind], live["decision_ms"][kind]
        lines.append(f"  {kind:<8} {a['p50']:>11.3f} {a['p99']:>8.3f} {a['max']:>8.3f} {m['requests_waited_for'][kind]:>7} | {b['p50']:>13.1f} {b['p99']:>8.1f} {b['max']:>8.1f}")
    lines.append(
        f"  with the mirror: misrouted {m['misrouted']}; requests the unknown numbers caused (an early refresh): {m['background_lookup_requests']}"
    )
    lines.append(
        f"  without: statuses {live['statuses']}, {live['requests_per_call']} requests per call, misrouted {live['misrouted']}; "
        f"slowest call / one round trip: {max(v['max'] for v in live['decision_ms'].values()) / report['latency_ms']:.2f}"
    )
    for records, cost in report["credits"].items():
        lines.append(f"  credits, {int(records):,} records: first load {cost['first_load']:,}, {cost['per_refresh']} a refresh, {cost['per_day']:,} a day at refresh_s 60")
    if "memory" in report:
        mem = report["memory"]
        lines.append(
            f"  {mem['phones']:,} phones: file {mem['file_mib']} MiB built in {mem['build_s']} s (peak RSS {mem['build_peak_rss_mib']} MiB); "
            f"answering from it: peak RSS {mem['lookups']['peak_rss_mib']} MiB, lookup p50 {mem['lookups']['p50_ms']} ms, p99 {mem['lookups']['p99_ms']} ms"
        )
    return "\n".join(lines)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mirror-records", type=int, help="mirror: records in the generated org (default 100000; quick 5000)")
    parser.add_argument("--mirror-latency-ms", type=float, default=300.0, help="mirror: Zoho's answer time per request")
    parser.add_argument("--mirror-callers", type=int, help="mirror: distinct cold callers (default 1000; quick 100)")
    parser.add_argument("--mirror-call-rate", type=float, default=50.0, help="mirror: calls a second arriving at the router with the mirror")
    parser.add_argument("--mirror-live-concurrency", type=int, default=2, help="mirror: calls at once without the mirror (4 requests each, within zoho.max_concurrency 10)")
    parser.add_argument("--memory-phones", type=int, help="mirror: phones in the memory check (default 1000000; quick 20000; 0: skip)")


def defaults(options: argparse.Namespace) -> None:
    quick = getattr(options, "quick", False)
    for name, (full, small) in {"mirror_records": (100_000, 5_000), "mirror_callers": (1000, 100), "memory_phones": (1_000_000, 20_000)}.items():
        if getattr(options, name, None) is None:
            setattr(options, name, small if quick else full)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    add_options(parser)
    options = parser.parse_args(argv)
    defaults(options)
    report = run(options)
    print(table(report))
    if os.environ.get("MIRROR_BENCH_JSON"):
        Path(os.environ["MIRROR_BENCH_JSON"]).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
