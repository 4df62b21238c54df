"""FastAGI throughput: each server in its own process on one core, the load
generator on the other, the same sessions for all.

Per server: sessions/s, session and decision latency percentiles, the
server's CPU time per session (from ``/proc/<pid>/stat`` before and after the
timed run, so a warm-up is not counted) and its RSS after the run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import procstat

HERE = Path(__file__).resolve().parent
# Demo directory callers that route to an owner (see README), in the forms Asterisk may
# send them: a lead's owner, a contact's owner, a deal's owner, an owner with two phones.
# Every call then pays for the whole contract: the lookup, the device-state check, the MSet.
DEMO_CALLERS = ["+34928000000", "928000001", "0034928000002", "928000005"]
# What the load generator answers to ${DEVICE_STATE(...)}: every owner's phone is free.
DEVICE_STATES = {f"PJSIP/{extension}": "NOT_INUSE" for extension in range(101, 106)}
# The event loops measured: asyncio's own, and uvloop where it is installed.
LOOPS = ("asyncio", "uvloop") if importlib.util.find_spec("uvloop") is not None else ("asyncio",)
# Values that differ from call to call are not compared.
# Timing, and the reason's wording: a session the load generator hangs up
# early skips its device-state checks, which the reason says; where it goes does not change.
_UNCOMPARED = frozenset({"CRM_LOOKUP_MS", "CRM_ROUTE_REASON"})


@dataclass
class Case:
    """One server to measure."""

    name: str
    command: list[str]  # {port} is replaced
    expect: str = "contract"  # "contract": the whole dialplan contract; "any": the minimal exchange
    callers: list[dict] = field(default_factory=list)
    baseline: bool = False  # the floor the others are compared with
    peer: bool = False  # a library ours must beat
    scrape: str = ""  # a /metrics URL read every SCRAPE_EVERY_S during the timed run, as Prometheus would
    loop: str = "asyncio"  # the event loop the server runs on


# Scrapes of the metrics case: far more often than Prometheus's usual 15 s, so their cost shows.
SCRAPE_EVERY_S = 1.0
# The case whose CPU per session the metrics case is compared with (the same server, metrics off).
METRICS_OFF = "crmroute route, demo directory [asyncio] ("
METRICS_ON = "crmroute route, demo directory [asyncio], metrics on"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment for every process measured: bytecode caches on (see README)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def crmroute_config_file(directory: Path, name: str, data: str) -> Path:
    path = directory / name
    path.write_text(data)
    return path


BENCH_CONFIG = """
[routing]
default_region = "ES"

[server]
max_sessions = 2000
"""


def expected_routes(config_text: str, callers: list[str]) -> list[dict]:
    """What each caller must get, decided in this process by the same code the server runs."""
    import tomllib

    from crmlookup.factory import live_backend
    from dialplan import FixedDeviceStates, InboundCall
    from fastagi_server.app import App
    from fastagi_server.config import config_from_dict

    config = config_from_dict(tomllib.loads(config_text))

    async def decide_all() -> list[dict]:
        app = App.from_config(config)
        # What the server reads ahead once it listens (Zoho: its users, with their full names),
        # which its warm-up has surely done by the timed run: read it here too.
        warm = getattr(live_backend(app.backend), "warm", None)
        if warm is not None:
            await warm()
        try:
            out = []
            for caller in callers:
                # The load generator answers every device-state question as DEVICE_STATES says: decide with the same.
                decision = await app.router.decide(InboundCall(caller=caller), FixedDeviceStates(DEVICE_STATES))
                variables = decision.channel_variables()
                expected = {k: v for k, v in variables.items() if k not in _UNCOMPARED}
                out.append({"caller": caller, "expected": expected, "device_states": DEVICE_STATES})
            return out
        finally:
            await app.aclose()

    return asyncio.run(decide_all())


def cases(workdir: Path) -> list[Case]:
    """Every server this machine can run, on each event loop it has; each loop's baseline first."""
    python = sys.executable
    minimal_callers = [{"caller": c} for c in ("+34928000000", "+34928000002", "+34928999999")]
    found = []
    expected = expected_routes(BENCH_CONFIG, DEMO_CALLERS)
    cache = "warm cache" if has_cache() else "no cache in this build"
    serve = [python, "-m", "fastagi_server", "serve", "--port", "{port}", "--config"]
    for loop in LOOPS:
        peer = [python, str(HERE / "peers.py"), "--loop", loop, "--port", "{port}"]
        found.append(Case(f"bare asyncio.Protocol (minimal) [{loop}]", peer + ["protocol"], "any", minimal_callers, baseline=True, loop=loop))
        found.append(Case(f"bare asyncio streams (minimal) [{loop}]", peer + ["streams"], "any", minimal_callers, loop=loop))
        if importlib.util.find_spec("panoramisk") is not None:
            found.append(Case(f"panoramisk fast_agi (minimal) [{loop}]", peer + ["panoramisk"], "any", minimal_callers, peer=True, loop=loop))
        config = crmroute_config_file(workdir, f"crmroute-{loop}.toml", BENCH_CONFIG + f'event_loop = "{loop}"\n')
        found.append(Case(f"crmroute route, demo directory [{loop}] ({cache})", serve + [str(config)], "contract", expected, loop=loop))
    # The variants below run on asyncio's loop: what each part of the work costs.
    on_asyncio = BENCH_CONFIG + 'event_loop = "asyncio"\n'
    # What the one log line per call costs: the same without it.
    quiet = crmroute_config_file(workdir, "crmroute-quiet.toml", on_asyncio + 'log_level = "WARNING"\n')
    found.append(Case("crmroute route, demo directory [asyncio], log_level WARNING", serve + [str(quiet)], "contract", expected))
    # What the metrics cost: the same with [metrics] listen on, scraped every second meanwhile.
    metrics_port = free_port()
    metered = crmroute_config_file(workdir, "crmroute-metrics.toml", on_asyncio + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    found.append(Case(f"{METRICS_ON} (scraped every {SCRAPE_EVERY_S:.0f} s)", serve + [str(metered)], "contract", expected,
                      scrape=f"http://127.0.0.1:{metrics_port}/metrics"))
    # What the device-state round trip costs: the same without it (where the call goes
    # does not change, since the load generator reports every phone free).
    unchecked_config = on_asyncio.replace("[routing]\n", "[routing]\ncheck_availability = false\n")
    unchecked = crmroute_config_file(workdir, "crmroute-unchecked.toml", unchecked_config)
    found.append(Case("crmroute route, demo directory [asyncio], no device-state check", serve + [str(unchecked)], "contract",
                      expected_routes(unchecked_config, DEMO_CALLERS)))
    return found


def zoho_case(workdir: Path):
    """Our server on the Zoho backend, against the Zoho CRM simulator on loopback:
    (the case, the running simulator), or None in a build without them."""
    tests = HERE.parent / "tests"
    if not (tests / "zoho_simulator.py").exists() or importlib.util.find_spec("crmlookup.zoho") is None:
        return None
    sys.path.insert(0, str(tests))
    from zoho_simulator import ZohoSimulator

    simulator = ZohoSimulator().start()
    owner = simulator.add_user("Ana García", "ana@example.com", Extension="101")
    other = simulator.add_user("Ben Ito", "ben@example.com", Extension="102")
    simulator.add_record("Leads", owner, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone="+34 928 00 00 00", Lead_Status="New")
    contact = simulator.add_record("Contacts", owner, Full_Name="Pedro Sanz", Last_Name="Sanz", Phone="+34928000002")
    simulator.add_record("Deals", other, Deal_Name="Renewal", Stage="Qualification", Contact_Name={"id": contact["id"]})
    simulator.add_record("Accounts", other, Account_Name="Acme", Phone="+34928000004")
    zoho = simulator.zoho_config(user_extension_field="Extension")
    text = BENCH_CONFIG + 'event_loop = "asyncio"\n\n[crm]\nbackend = "zoho"\n\n[zoho]\n' + "".join(f"{key} = {json.dumps(value)}\n" for key, value in zoho.items())
    path = crmroute_config_file(workdir, "crmroute-zoho.toml", text)
    callers = ["+34928000000", "928000002", "+34928000004", "928999999"]
    case = Case(
        "crmroute route, Zoho simulator [asyncio] (warm cache)",
        [sys.executable, "-m", "fastagi_server", "serve", "--config", str(path), "--port", "{port}"],
        "contract",
        expected_routes(text, callers),
    )
    return case, simulator


def has_cache() -> bool:
    """True once the lookup cache is part of the build (it then wraps every backend)."""
    return importlib.util.find_spec("crmlookup.cache") is not None


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until something listens on ``port``, without connecting: a connection
    closed before its header block makes panoramisk 1.4 spin on EOF for ever."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        if procstat.listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout} s")


def run_loadgen(case: Case, port: int, sessions: int, options) -> dict:
    command = [
        sys.executable, str(HERE / "loadgen.py"),
        "--port", str(port),
        "--sessions", str(sessions),
        "--concurrency", str(options.concurrency),
        "--hangup-share", str(options.hangup_share),
        "--max-seconds", str(options.max_seconds),
        "--callers", json.dumps(case.callers),
        "--expect", case.expect,
        "--device-states", json.dumps(DEVICE_STATES),
    ]
    if options.loadgen_cpu is not None:
        command += ["--cpu", str(options.loadgen_cpu)]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=options.max_seconds + 300)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(case: Case, options) -> dict:
    """Start the server, warm it up, run the timed sessions, stop it."""
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in case.command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    try:
        pinned = procstat.pin(proc.pid, options.server_cpu)
        wait_for_port(port, proc)
        run_loadgen(case, port, options.warmup, options)
        cpu_before = procstat.cpu_seconds(proc.pid)
        with Scraper(case.scrape) as scraper:
            load = run_loadgen(case, port, options.sessions, options)
        cpu = procstat.cpu_seconds(proc.pid) - cpu_before
        memory = procstat.memory_kib(proc.pid)
    finally:
        stop_process(proc)
    completed = load["completed"] or 1
    return {
        "scrapes": scraper.scrapes,
        "name": case.name,
        "baseline": case.baseline,
        "peer": case.peer,
        "loop": case.loop,
        "pinned": pinned,
        "server_cpu_us_per_session": cpu / completed * 1e6,
        "server_cpu_share": cpu / load["elapsed_s"] if load["elapsed_s"] else 0.0,
        "server_rss_kib": memory.get("rss", 0),
        "server_peak_rss_kib": memory.get("hwm", 0),
        **load,
    }


class Scraper:
    """Reads ``url`` every :data:`SCRAPE_EVERY_S` on a thread of this process while in use (nothing without a URL)."""

    def __init__(self, url: str):
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.scrapes = 0

    def __enter__(self) -> Scraper:
        if self._url:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._url:
            self._thread.join(10)

    def _run(self) -> None:
        while True:
            with urllib.request.urlopen(self._url, timeout=10) as response:
                response.read()
            self.scrapes += 1
            if self._stop.wait(SCRAPE_EVERY_S):
                return


def metrics_overhead(results: list[dict]) -> dict:
    """The metrics case against the same server without metrics, from this one run (goal: under 1.05 CPU per session)."""
    off = next((r for r in results if r["name"].startswith(METRICS_OFF)), None)
    on = next((r for r in results if r["name"].startswith(METRICS_ON)), None)
    if off is None or on is None:
        return {}
    return {
        "cpu_us_per_session_off": round(off["server_cpu_us_per_session"], 1),
        "cpu_us_per_session_on": round(on["server_cpu_us_per_session"], 1),
        "cpu_per_session_on_vs_off": _ratio(on["server_cpu_us_per_session"], off["server_cpu_us_per_session"]),
        "sessions_per_s_on_vs_off": _ratio(on["sessions_per_s"], off["sessions_per_s"]),
        "p99_session_on_vs_off": _ratio(on["latency_ms"]["p99"], off["latency_ms"]["p99"]),
        "scrapes_during_the_run": on["scrapes"],
    }


def ratios(results: list[dict]) -> dict:
    """Ours against the baseline and the peers on the same event loop, from this one run;
    and each crmroute row on uvloop against the same row on asyncio."""
    out = {}
    for mine in (r for r in results if r["name"].startswith("crmroute")):
        entry = {}
        baseline = next((r for r in results if r["baseline"] and r["loop"] == mine["loop"]), None)
        if baseline:
            entry["cpu_per_session_vs_baseline"] = _ratio(mine["server_cpu_us_per_session"], baseline["server_cpu_us_per_session"])
            entry["sessions_per_s_vs_baseline"] = _ratio(mine["sessions_per_s"], baseline["sessions_per_s"])
            entry["cpu_capacity_vs_baseline"] = _ratio(baseline["server_cpu_us_per_session"], mine["server_cpu_us_per_session"])
            entry["p99_decision_vs_baseline"] = _ratio(mine["decision_ms"]["p99"], baseline["decision_ms"]["p99"])
            entry["p99_session_vs_baseline"] = _ratio(mine["latency_ms"]["p99"], baseline["latency_ms"]["p99"])
        for peer in (r for r in results if r["peer"] and r["loop"] == mine["loop"]):
            entry[f"cpu_per_session_vs {peer['name']}"] = _ratio(mine["server_cpu_us_per_session"], peer["server_cpu_us_per_session"])
            entry[f"sessions_per_s_vs {peer['name']}"] = _ratio(mine["sessions_per_s"], peer["sessions_per_s"])
            entry[f"cpu_capacity_vs {peer['name']}"] = _ratio(peer["server_cpu_us_per_session"], mine["server_cpu_us_per_session"])
        if mine["loop"] != "asyncio":
            same = mine["name"].replace(f"[{mine['loop']}]", "[asyncio]")
            on_asyncio = next((r for r in results if r["name"] == same), None)
            if on_asyncio:
                entry["cpu_per_session_vs the same on asyncio"] = _ratio(mine["server_cpu_us_per_session"], on_asyncio["server_cpu_us_per_session"])
        out[mine["name"]] = entry
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def run(options) -> dict:
    """Measure every case ``options.repeat`` times, interleaved; keep each case's
    least-disturbed run (the lowest server CPU per session) for the table."""
    with tempfile.TemporaryDirectory(prefix="crmroute-bench-") as tmp:
        available = cases(Path(tmp))
        zoho = zoho_case(Path(tmp)) if not options.cases or any(w in "crmroute route, Zoho simulator [asyncio]" for w in options.cases) else None
        if zoho is not None:
            available.append(zoho[0])
        chosen = [c for c in available if not options.cases or any(word in c.name for word in options.cases)]
        runs: dict[str, list[dict]] = {c.name: [] for c in chosen}
        try:
            for round_number in range(options.repeat):
                for case in chosen:
                    print(f"  fastagi: {case.name} (run {round_number + 1}/{options.repeat}) ...", file=sys.stderr, flush=True)
                    runs[case.name].append(measure(case, options))
        finally:
            if zoho is not None:
                zoho[1].stop()
    results = []
    for measured in runs.values():
        best = min(measured, key=lambda r: r["server_cpu_us_per_session"])
        best["all_runs"] = [
            {"sessions_per_s": r["sessions_per_s"], "server_cpu_us_per_session": r["server_cpu_us_per_session"], "p99_ms": r["latency_ms"]["p99"]}
            for r in measured
        ]
        results.append(best)
    return {"results": results, "ratios": ratios(results), "metrics_overhead": metrics_overhead(results)}


def table(report: dict) -> str:
    from report import format_table

    rows = []
    for r in report["results"]:
        verified = r["verification"]
        rows.append([
            r["name"] + (" *" if r["baseline"] else ""),
            r["completed"],
            r["sessions_per_s"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p95"],
            r["latency_ms"]["p99"],
            r["latency_ms"]["max"],
            r["decision_ms"]["p99"],
            r["server_cpu_us_per_session"],
            r["server_rss_kib"] / 1024,
            r["commands_per_session"],
            f"{verified['ok']}/{verified['checked']}",
            f"{r['loadgen_cpu_share']:.0%}",
        ])
    text = format_table(
        "FastAGI: sessions through real TCP (* = the baseline of its event loop; latency in ms, CPU in µs per session)",
        ["server", "sessions", "sess/s", "p50", "p95", "p99", "max", "decide p99", "CPU µs", "RSS MiB", "cmds", "verified", "loadgen CPU"],
        rows,
    )
    lines = [text]
    for name, entry in report["ratios"].items():
        lines.append(f"{name}:")
        for key, value in entry.items():
            lines.append(f"  {key}: {value}")
    if report.get("metrics_overhead"):
        lines.append("metrics on against off (same run):")
        lines.extend(f"  {key}: {value}" for key, value in report["metrics_overhead"].items())
    problems = [p for r in report["results"] for p in r["verification"]["problems"]]
    if problems:
        lines.append("verification problems: " + "; ".join(problems[:5]))
    return "\n".join(lines)
