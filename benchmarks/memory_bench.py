"""Memory: the RSS of a routing process once it has looked up many distinct numbers.

A fresh process opens the app exactly as ``crmroute serve`` does (with the
lookup cache in front of the backend when the build has one), routes
``--memory-numbers`` distinct callers found in a directory file, then routes a
sample again to count how many answers came from the cache. Reported: RSS
before and after, the growth per number, and the cache hit share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import directory_bench  # noqa: E402
import fastagi_bench  # noqa: E402
import procstat  # noqa: E402


def write_directory(path: Path, records: int) -> None:
    """A directory file with ``records`` records, written straight into the schema
    (the import itself is measured by the directory suite)."""
    from crmlookup.local_directory.schema import ensure_schema

    conn = sqlite3.connect(path)
    ensure_schema(conn)
    with conn:
        conn.executemany(
            "INSERT INTO users (id, name, email, extensions) VALUES (?, ?, ?, ?)",
            [(f"u{o}", f"Owner {o}", f"owner{o}@example.com", str(100 + o)) for o in range(directory_bench.OWNERS)],
        )
        conn.executemany(
            "INSERT INTO records (module, id, name, owner_id, is_open) VALUES (?, ?, ?, ?, 1)",
            ((directory_bench.MODULES[i % 4], f"R-{i}", f"Caller {i}", f"u{i % directory_bench.OWNERS}") for i in range(records)),
        )
        conn.executemany(
            "INSERT INTO phones (e164, module, record_id, raw) VALUES (?, ?, ?, ?)",
            ((directory_bench.caller_number(i), directory_bench.MODULES[i % 4], f"R-{i}", directory_bench.caller_number(i)) for i in range(records)),
        )
    conn.close()


def child(directory: str, numbers: int) -> dict:
    """Runs in the measured process."""
    from dialplan import InboundCall
    from fastagi_server.app import App
    from fastagi_server.config import config_from_dict

    settings = {"routing": {"default_region": "ES"}, "directory": {"path": directory}}
    if fastagi_bench.has_cache():
        settings["cache"] = {"max_entries": numbers}  # room for every number (the default keeps fewer)
    config = config_from_dict(settings)
    app = App.from_config(config)
    pid = os.getpid()
    before = procstat.memory_kib(pid)["rss"]
    callers = [directory_bench.caller_number(i) for i in range(numbers)]

    async def route_all() -> tuple[int, int, int]:
        owners = 0
        for start in range(0, numbers, 200):
            batch = callers[start : start + 200]
            decisions = await asyncio.gather(*(app.router.decide(InboundCall(caller=c)) for c in batch))
            owners += sum(d.status.value == "OWNER" for d in decisions)
        sample = callers[:: max(1, numbers // 1000)]
        again = [await app.router.decide(InboundCall(caller=c)) for c in sample]
        return owners, sum(d.from_cache for d in again), len(sample)

    try:
        owners, hits, sampled = asyncio.run(route_all())
    finally:
        asyncio.run(app.aclose())
    memory = procstat.memory_kib(pid)
    return {
        "numbers": numbers,
        "owners_found": owners,
        "rss_before_mib": before / 1024,
        "rss_after_mib": memory["rss"] / 1024,
        "peak_rss_mib": memory["hwm"] / 1024,
        "growth_bytes_per_number": (memory["rss"] - before) * 1024 / numbers,
        "cache_hit_share": hits / sampled if sampled else 0.0,
        "cache": fastagi_bench.has_cache(),
    }


def run(options) -> dict:
    with tempfile.TemporaryDirectory(prefix="crmroute-memory-") as tmp:
        directory = Path(tmp) / "directory.sqlite"
        write_directory(directory, options.memory_numbers)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(directory), str(options.memory_numbers)],
            capture_output=True, text=True, env=fastagi_bench.child_env(), timeout=900,
            preexec_fn=procstat.pinning(options.server_cpu),
        )
    if done.returncode != 0:
        raise RuntimeError(f"memory benchmark failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def table(report: dict) -> str:
    from report import format_table

    cache = "cache in front of the directory" if report["cache"] else "no cache in this build"
    rows = [[
        f"{report['numbers']:,} distinct numbers ({cache})",
        report["rss_before_mib"], report["rss_after_mib"], report["peak_rss_mib"],
        report["growth_bytes_per_number"], f"{report['cache_hit_share']:.0%}",
    ]]
    return format_table("Memory of a routing process", ["", "RSS before MiB", "RSS after MiB", "peak MiB", "bytes/number", "cache hits"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("DIRECTORY", "NUMBERS"), required=True)
    args = parser.parse_args()
    json.dump(child(args.child[0], int(args.child[1])), sys.stdout)
