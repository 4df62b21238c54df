"""Normal calls while slowloris peers hold 1,000 connections.

One ``crmroute serve`` (default ``max_sessions`` and ``max_connecting``, the
demo directory) on the server CPU. First a quiet run of normal calls from
the load generator; then the same calls while ``benchmarks/slowloris.py``
holds ``--slowloris`` connections (one byte a second each, reconnecting as
the server drops them). Reported for both: the normal calls' latency
percentiles and error rate (a call that failed, timed out, or did not get
its route: ``ERROR: server busy`` counts), and the p99 ratio attack/quiet
from the same run (goal: no error, p99 within 2x).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procstat
from fastagi_bench import (
    DEMO_CALLERS, Case, child_env, crmroute_config_file, expected_routes, free_port, run_loadgen, stop_process, wait_for_port,
)

HERE = Path(__file__).resolve().parent
# The defaults an admin gets, region ES for the demo numbers.
CONFIG = '[routing]\ndefault_region = "ES"\n[server]\nlog_level = "WARNING"\n'


def start_slowloris(port: int, connections: int, cpu: int | None, workdir: Path) -> tuple[subprocess.Popen, Path]:
    ready = workdir / "slowloris-ready"
    command = [sys.executable, str(HERE / "slowloris.py"), "--port", str(port), "--connections", str(connections), "--ready-file", str(ready)]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"slowloris peer did not start: {proc.stderr.read()[-500:] if proc.stderr else ''}")
        time.sleep(0.05)
    return proc, ready


def stop_slowloris(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"slowloris peer failed: {err[-500:]}")
    return json.loads(out)


def measured(pid: int, load) -> dict:
    """``load()``'s figures, with the server's CPU time per completed call."""
    before = procstat.cpu_seconds(pid)
    figures = load()
    figures["server_cpu_us_per_call"] = round((procstat.cpu_seconds(pid) - before) / max(1, figures["completed"]) * 1e6, 1)
    return figures


def error_rate(load: dict) -> float:
    bad = load["failed"] + load["timeouts"] + load["verification"]["bad"]
    return bad / max(1, load["completed"] + load["failed"] + load["timeouts"])


def figures(load: dict) -> dict:
    return {
        "completed": load["completed"],
        "failed": load["failed"],
        "timeouts": load["timeouts"],
        "wrong_route": load["verification"]["bad"],
        "error_rate": round(error_rate(load), 4),
        "latency_ms": load["latency_ms"],
        "server_cpu_us_per_call": load["server_cpu_us_per_call"],
        "sessions_per_s": load["sessions_per_s"],
        "problems": load["verification"]["problems"][:3],
    }


def run(options) -> dict:
    sessions = 1000 if options.quick else 5000
    with tempfile.TemporaryDirectory(prefix="crmroute-slowloris-") as tmp:
        workdir = Path(tmp)
        config = crmroute_config_file(workdir, "crmroute.toml", CONFIG)
        case = Case("crmroute route under slowloris", [], "contract", expected_routes(CONFIG, DEMO_CALLERS))
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "fastagi_server", "serve", "--config", str(config), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
        )
        try:
            procstat.pin(server.pid, options.server_cpu)
            wait_for_port(port, server)
            run_loadgen(case, port, options.warmup, options)
            quiet = measured(server.pid, lambda: run_loadgen(case, port, sessions, options))
            attacker, _ready = start_slowloris(port, options.slowloris, options.loadgen_cpu, workdir)
            try:
                attacker_cpu = procstat.cpu_seconds(attacker.pid)
                attacked = measured(server.pid, lambda: run_loadgen(case, port, sessions, options))
                attacker_cpu = procstat.cpu_seconds(attacker.pid) - attacker_cpu
            finally:
                held = stop_slowloris(attacker)
            held["cpu_share"] = round(attacker_cpu / attacked["elapsed_s"], 3) if attacked["elapsed_s"] else 0.0
        finally:
            stop_process(server)
    quiet_p99 = quiet["latency_ms"]["p99"]
    return {
        "slowloris_connections": options.slowloris,
        "quiet": figures(quiet),
        "under_slowloris": figures(attacked),
        "slowloris": held,
        "p99_under_slowloris_vs_quiet": round(attacked["latency_ms"]["p99"] / quiet_p99, 3) if quiet_p99 else 0.0,
    }


def table(report: dict) -> str:
    from report import format_table

    rows = []
    for name, key in (("quiet", "quiet"), (f"{report['slowloris_connections']} slowloris connections held", "under_slowloris")):
        r = report[key]
        rows.append([
            name, r["completed"], f"{r['error_rate']:.2%}", r["sessions_per_s"],
            r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["latency_ms"]["p99"], r["latency_ms"]["max"], r["server_cpu_us_per_call"],
        ])
    text = format_table(
        "Normal calls while slowloris peers hold connections (latency in ms; errors: failed, timed out or wrong route)",
        ["run", "calls", "errors", "calls/s", "p50", "p95", "p99", "max", "server CPU µs/call"],
        rows,
    )
    held = report["slowloris"]
    return (
        f"{text}\np99 under slowloris / quiet: {report['p99_under_slowloris_vs_quiet']} (goal: at most 2, and no error)\n"
        f"slowloris peer: {held['connections_made']} connections made, {held['dropped_by_server']} dropped by the server, "
        f"at most {held['most_held']} open at once, {held['cpu_share']:.0%} of a CPU (shared with the load generator)"
    )
