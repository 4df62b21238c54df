"""The local directory at scale: import a large CSV, then time lookups in it.

* import: ``crmroute directory import`` on a generated records CSV (the real
  command, in its own process): seconds, rows per second, peak RSS;
* lookups: the directory's query for random callers (90% in the directory,
  10% not), p50/p99/max, synchronously and through the directory's thread as
  the server does on a cache miss.
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastagi_bench
import procstat
from report import percentiles

MODULES = ("Leads", "Deals", "Contacts", "Accounts")
OWNERS = 200


def caller_number(index: int) -> str:
    """A distinct, valid Spanish mobile number per record."""
    return f"+346{index:08d}"


def write_csv(path: Path, records: int) -> None:
    """``records`` rows of the records CSV, owners round robin, numbers typed as people type them."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["module", "id", "name", "phones", "owner_id", "owner_name", "owner_email", "owner_extensions", "status"])
        for index in range(records):
            owner = index % OWNERS
            number = caller_number(index)
            typed = number if index % 2 else f"6{number[4:6]} {number[6:9]} {number[9:]}"  # national, spaced
            writer.writerow([
                MODULES[index % 4], f"R-{index}", f"Caller {index}", typed,
                f"u{owner}", f"Owner {owner}", f"owner{owner}@example.com", str(100 + owner),
                "closed" if index % 17 == 0 else "open",
            ])


def import_directory(csv_path: Path, db_path: Path, cpu: int | None) -> dict:
    """Run ``crmroute directory import``; its wall time, CPU time and peak RSS."""
    command = [sys.executable, "-m", "fastagi_server", "directory", "import", str(csv_path), "--path", str(db_path)]
    env = {**fastagi_bench.child_env(), "CRMROUTE_CONFIG": ""}
    config = db_path.with_suffix(".toml")
    config.write_text('[routing]\ndefault_region = "ES"\n')
    command += ["--config", str(config)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=procstat.pinning(cpu))
    with proc.stdout:
        output = proc.stdout.read().decode("utf-8", "replace")
    cpu_seconds, peak_rss_kib = procstat.reap(proc)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"directory import failed: {output[-500:]}")
    return {
        "seconds": wall,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mib": peak_rss_kib / 1024,
        "output": output.strip(),
        "file_mib": db_path.stat().st_size / 2**20,
    }


def time_lookups(db_path: Path, records: int, lookups: int) -> dict:
    from crmlookup.local_directory import LocalDirectory
    from crmlookup.phone import normalise

    rng = random.Random(7)
    directory = LocalDirectory.open(db_path)
    numbers = [normalise(caller_number(rng.randrange(records)) if i % 10 else caller_number(records + i), "ES") for i in range(lookups)]
    perf = time.perf_counter
    try:
        timings = []
        found = 0
        for number in numbers:
            started = perf()
            result = directory.lookup_sync(number, MODULES)
            timings.append(perf() - started)
            found += bool(result.matches)

        async def through_thread() -> list[float]:
            out = []
            for number in numbers[: min(len(numbers), 10_000)]:
                started = perf()
                await directory.lookup(number, MODULES)
                out.append(perf() - started)
            return out

        threaded = asyncio.run(through_thread())
    finally:
        directory.close()
    return {"lookups": lookups, "found": found, "sync_ms": percentiles(timings), "thread_ms": percentiles(threaded)}


def build(workdir: Path, records: int, cpu: int | None) -> tuple[Path, dict]:
    """A directory file of ``records`` generated records, and how its import went."""
    csv_path = workdir / f"records-{records}.csv"
    db_path = workdir / f"directory-{records}.sqlite"
    started = time.perf_counter()
    write_csv(csv_path, records)
    generated = time.perf_counter() - started
    imported = import_directory(csv_path, db_path, cpu)
    imported["csv_mib"] = csv_path.stat().st_size / 2**20
    imported["csv_generation_seconds"] = generated
    csv_path.unlink()
    return db_path, imported


def run(options) -> dict:
    procstat.pin(os.getpid(), options.server_cpu)
    with tempfile.TemporaryDirectory(prefix="crmroute-directory-") as tmp:
        db_path, imported = build(Path(tmp), options.directory_records, options.server_cpu)
        lookups = time_lookups(db_path, options.directory_records, options.directory_lookups)
    return {
        "records": options.directory_records,
        "import": {**imported, "rows_per_second": options.directory_records / imported["seconds"]},
        "lookup": lookups,
    }


def table(report: dict) -> str:
    from report import format_table

    imp, look = report["import"], report["lookup"]
    sync, thread = look["sync_ms"], look["thread_ms"]
    rows = [
        ["import: s, rows/s, peak RSS MiB, file MiB", f"{imp['seconds']:.1f}", f"{imp['rows_per_second']:,.0f}", f"{imp['peak_rss_mib']:.0f}", f"{imp['file_mib']:.0f}"],
        ["lookup, sync: ms p50, p99, max, found", f"{sync['p50']:.3f}", f"{sync['p99']:.3f}", f"{sync['max']:.3f}", f"{look['found']}/{look['lookups']}"],
        ["lookup via its thread: ms p50, p99, max", f"{thread['p50']:.3f}", f"{thread['p99']:.3f}", f"{thread['max']:.3f}", ""],
    ]
    return format_table(f"Local directory: {report['records']:,} records", ["", "", "", "", ""], rows)
