"""Run the benchmarks, print the tables, write the figures as JSON.

    python benchmarks/run.py            # everything (a few minutes)
    python benchmarks/run.py --quick    # a smoke run in well under a minute
    python benchmarks/run.py --only fastagi,stdio

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import desk_bench  # noqa: E402
import directory_bench  # noqa: E402
import fastagi_bench  # noqa: E402
import memory_bench  # noqa: E402
import mirror_bench  # noqa: E402
import retailcrm_bench  # noqa: E402
import slowloris_bench  # noqa: E402
import stdio_bench  # noqa: E402
import store_bench  # noqa: E402

SUITES = {
    "fastagi": fastagi_bench,
    "stdio": stdio_bench,
    "directory": directory_bench,
    "memory": memory_bench,
    "mirror": mirror_bench,
    "retailcrm": retailcrm_bench,
    "desk": desk_bench,
    "slowloris": slowloris_bench,
    "store": store_bench,
}


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="crmroute benchmarks")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--only", default="", help=f"comma-separated suites: {', '.join(SUITES)}")
    parser.add_argument("--cases", default="", help="fastagi: only servers whose name contains one of these comma-separated words")
    parser.add_argument("--sessions", type=int, help="fastagi: timed sessions per server (default 8000; quick 2000)")
    parser.add_argument("--warmup", type=int, help="fastagi: untimed sessions first (default 2000; quick 300)")
    parser.add_argument("--concurrency", type=int, default=50, help="fastagi: sessions at once")
    parser.add_argument("--repeat", type=int, default=1, help="fastagi: runs per server, interleaved; the least disturbed is kept (use 3 on a shared machine)")
    parser.add_argument("--hangup-share", type=float, default=0.1, help="fastagi: share of calls with a HANGUP line")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="fastagi: stop starting sessions after this")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="CPU the load generator is pinned to")
    parser.add_argument("--stdio-calls", type=int, help="stdio: calls per script (default 100; quick 20)")
    parser.add_argument("--directory-records", type=int, help="directory: records (default 200000; quick 20000; the target is stated at 1000000)")
    parser.add_argument("--directory-lookups", type=int, help="directory: timed lookups (default 100000; quick 5000)")
    parser.add_argument("--memory-numbers", type=int, help="memory: distinct numbers looked up (default 100000; quick 5000)")
    mirror_bench.add_options(parser)
    retailcrm_bench.add_options(parser)
    desk_bench.add_options(parser)
    store_bench.add_options(parser)
    parser.add_argument("--slowloris", type=int, default=1000, help="slowloris: connections the slowloris peer holds")
    parser.add_argument("--output", help="JSON file (default benchmarks/results/<time>.json)")
    options = parser.parse_args(argv)
    mirror_bench.defaults(options)
    retailcrm_bench.defaults(options)
    desk_bench.defaults(options)
    store_bench.defaults(options)
    defaults = {
        "sessions": (8_000, 2_000),
        "warmup": (2_000, 300),
        "stdio_calls": (100, 20),
        "directory_records": (200_000, 20_000),
        "directory_lookups": (100_000, 5_000),
        "memory_numbers": (100_000, 5_000),
    }
    for name, (full, quick) in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else full)
    options.suites = [s for s in options.only.split(",") if s] or list(SUITES)
    unknown = [s for s in options.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    options.cases = [c for c in options.cases.split(",") if c]
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    for name in ("server_cpu", "loadgen_cpu"):
        if getattr(options, name) not in cpus:
            setattr(options, name, None)  # not pinned; the tables say so
    return options


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        "bytecode_cache": "PYTHONDONTWRITEBYTECODE unset for measured processes",
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), "options": _jsonable(vars(options))}
    print(f"load average before: {report['machine']['load_average_before']}", file=sys.stderr)
    for name in options.suites:
        started = time.perf_counter()
        print(f"{name} ...", file=sys.stderr, flush=True)
        report[name] = SUITES[name].run(options)
        report[name]["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    for name in options.suites:
        print()
        print(SUITES[name].table(report[name]))
    output = Path(options.output) if options.output else HERE / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"\nload average before/after: {report['machine']['load_average_before']} / {report['machine']['load_average_after']}")
    print(f"figures written to {output}")
    return 0


def _jsonable(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool, list, type(None)))}


if __name__ == "__main__":
    sys.exit(main())
