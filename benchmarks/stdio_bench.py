"""Classic (process per call) AGI: ``crmroute-agi`` against a bare pyst2 script.

Each call starts the process the way Asterisk does, writes the header block
on its stdin and answers each command on its stdout with what Asterisk would
reply, until the process exits. Measured per call: wall time from start to
exit, and the child's CPU time (from ``wait4``). The bare script does the
minimal exchange: pyst2 reads the headers, one dict lookup, one ``SET
VARIABLE``.

``crmroute-agi`` reads a directory file (as a PBX without a daemon would have
one), so the figure is not the cost of loading the packaged demo data.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastagi_bench
import procstat
from report import percentiles

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from asterisk_peer import AsteriskPeer, CallResult, parse_args, stdio_headers

BARE_PYST2 = '''\
from asterisk.agi import AGI

OWNERS = {"+34928000000": "PJSIP/101", "+34928000002": "PJSIP/102"}
agi = AGI()
agi.set_variable("CRM_TARGET", OWNERS.get(agi.env.get("agi_callerid", ""), ""))
'''

CALLER = "+34928000000"


def one_call(command: list[str], env: dict[str, str], cpu: int | None) -> tuple[float, float, CallResult]:
    """Run one process AGI to its end; (wall seconds, CPU seconds, what it set)."""
    peer = AsteriskPeer()
    result = CallResult()
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        preexec_fn=procstat.pinning(cpu),
    )
    proc.stdin.write(stdio_headers(CALLER))
    proc.stdin.flush()
    while line := proc.stdout.readline():
        argv = parse_args(line.rstrip(b"\n").decode("utf-8", "replace"))
        result.commands.append(argv)
        try:
            proc.stdin.write(peer.reply(argv, result).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            break
    cpu_seconds, _ = procstat.reap(proc)
    wall = time.perf_counter() - started
    proc.stdin.close()
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{command} exited with {proc.returncode}")
    return wall, cpu_seconds, result


def measure(name: str, command: list[str], env: dict[str, str], calls: int, cpu: int | None, check) -> dict:
    one_call(command, env, cpu)  # writes the bytecode caches, warms the page cache
    walls, cpus, bad = [], [], 0
    for _ in range(calls):
        wall, used, result = one_call(command, env, cpu)
        walls.append(wall)
        cpus.append(used)
        bad += 0 if check(result) else 1
    return {
        "name": name,
        "calls": calls,
        "wall_ms": {"mean": statistics.fmean(walls) * 1000, **percentiles(walls)},
        "cpu_ms_mean": statistics.fmean(cpus) * 1000,
        "bad_calls": bad,
    }


def import_profile(command: list[str], env: dict[str, str], top: int = 12) -> list[dict]:
    """The heaviest top-level imports of one call (``python -X importtime``), cumulative ms."""
    proc = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], input=stdio_headers(CALLER) + b"200 result=0\n" * 20,
        capture_output=True, env=env, timeout=60,
    )
    rows = []
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and not name.startswith("  "):  # top level only
            rows.append({"module": name.strip(), "cumulative_ms": int(cumulative) / 1000})
    rows.sort(key=lambda r: -r["cumulative_ms"])
    return rows[:top]


def crmroute_agi_command() -> list[str]:
    script = Path(sys.executable).parent / "crmroute-agi"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "fastagi_server.stdio"]


def run(options) -> dict:
    env = fastagi_bench.child_env()
    cpu = options.server_cpu
    procstat.pin(os.getpid(), options.loadgen_cpu)
    with tempfile.TemporaryDirectory(prefix="crmroute-stdio-") as tmp:
        bare = Path(tmp) / "bare_pyst2.py"
        bare.write_text(BARE_PYST2)
        directory = Path(tmp) / "directory.sqlite"
        _demo_directory_file(directory)
        config = Path(tmp) / "crmroute.toml"
        config.write_text(f'[routing]\ndefault_region = "ES"\n\n[directory]\npath = "{directory}"\n')
        ours = crmroute_agi_command() + [f"--config={config}", "route"]
        results = [
            measure("bare pyst2 script (minimal)", [sys.executable, str(bare), "route"], env, options.stdio_calls, cpu,
                    lambda r: r.variables.get("CRM_TARGET") == "PJSIP/101"),
            measure("crmroute-agi route (directory file)", ours, env, options.stdio_calls, cpu,
                    lambda r: r.variables.get("CRM_ROUTE_STATUS") == "OWNER" and r.variables.get("CRM_TARGET") == "PJSIP/101"),
        ]
        imports = import_profile(ours, env)
    bare_result, ours_result = results
    return {
        "results": results,
        "ratio_wall_mean": round(ours_result["wall_ms"]["mean"] / bare_result["wall_ms"]["mean"], 3),
        "ratio_cpu": round(ours_result["cpu_ms_mean"] / bare_result["cpu_ms_mean"], 3),
        "heaviest_imports": imports,
    }


def _demo_directory_file(path: Path) -> None:
    """The packaged demo data in a directory file, as ``crmroute directory import`` would write it."""
    from importlib import resources

    from crmlookup.local_directory import LocalDirectory
    from crmlookup.local_directory.directory import DEMO_CSV, DEMO_REGION, open_connection

    store = LocalDirectory(open_connection(path, create=True), str(path))
    try:
        with resources.files("crmlookup.local_directory").joinpath(DEMO_CSV).open(encoding="utf-8", newline="") as demo:
            store.import_csv(demo, DEMO_REGION)
    finally:
        store.close()


def table(report: dict) -> str:
    from report import format_table

    rows = [
        [r["name"], r["calls"], r["wall_ms"]["mean"], r["wall_ms"]["p50"], r["wall_ms"]["p95"], r["cpu_ms_mean"], r["bad_calls"]]
        for r in report["results"]
    ]
    text = format_table(
        "Classic AGI: a process per call (ms per call)",
        ["script", "calls", "wall mean", "p50", "p95", "CPU", "bad"],
        rows,
    )
    imports = ", ".join(f"{r['module']} {r['cumulative_ms']:.0f}" for r in report["heaviest_imports"][:8])
    return (
        f"{text}\ncrmroute-agi / bare pyst2: wall {report['ratio_wall_mean']}x, CPU {report['ratio_cpu']}x"
        f"\nheaviest imports of crmroute-agi (cumulative ms): {imports}"
    )
