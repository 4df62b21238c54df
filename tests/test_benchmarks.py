"""The benchmark entry point runs, and what it measures is the real job: every
session of the load generator got the whole dialplan contract, with the route
the directory gives, in one round trip, never pipelined. (No timing is asserted.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benchmarks read /proc")
def test_fastagi_smoke_run(tmp_path):
    output = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "fastagi", "--cases", "crmroute,Protocol",
         "--sessions", "300", "--warmup", "30", "--hangup-share", "0.2", "--output", str(output)],
        capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())
    results = {r["name"]: r for r in report["fastagi"]["results"]}
    ours = next(r for name, r in results.items() if name.startswith("crmroute"))
    baseline = next(r for r in results.values() if r["baseline"])
    for result in (ours, baseline):
        assert result["completed"] == 300 and result["failed"] == 0 and result["timeouts"] == 0
        assert result["verification"] == {"checked": 300, "ok": 300, "bad": 0, "problems": []}
        assert result["pipelined"] == 0 and result["oversized_lines"] == 0
        assert result["server_cpu_us_per_session"] > 0 and result["server_rss_kib"] > 0
    # The owner's device state (both phones of the owner who has two), then the whole
    # contract in one EXEC MSet; a call hung up before the question is asked skips it.
    assert 1.0 <= ours["commands_per_session"] <= 3.0
    assert all(r["server_cpu_us_per_session"] > 0 for r in results.values())
    assert ours["loop"] in ("asyncio", "uvloop")
    assert ours["hangups_sent"] == 60
    assert "sessions_per_s_vs_baseline" in report["fastagi"]["ratios"][ours["name"]]
    # The same server with its metrics on, scraped while the calls ran, against it with them off.
    metered = next(r for name, r in results.items() if "metrics on" in name)
    assert metered["verification"]["ok"] == 300 and metered["scrapes"] >= 1
    assert report["fastagi"]["metrics_overhead"]["cpu_per_session_on_vs_off"] > 0
    assert "FastAGI: sessions through real TCP" in done.stdout


def test_the_load_generator_catches_a_wrong_route():
    """Its verification can fail: a caller expected elsewhere is reported."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import loadgen

    raw = b'EXEC MSet "CRM_ROUTE_STATUS=OWNER,CRM_TARGET=PJSIP/101"\n'
    assert loadgen._check_session(raw, {"caller": "x", "expected": {"CRM_TARGET": "PJSIP/101"}}, "any") == ""
    assert "CRM_TARGET" in loadgen._check_session(raw, {"caller": "x", "expected": {"CRM_TARGET": "PJSIP/102"}}, "any")
    assert "not set" in loadgen._check_session(raw, {"caller": "x"}, "contract")
    evaluated = b'SET VARIABLE AGIEXECFULL "yes"\nEXEC Set "X=${SHELL(id)}"\n'
    assert "evaluated" in loadgen._check_session(evaluated, {"caller": "x"}, "any")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benchmarks read /proc")
def test_mirror_smoke_run(tmp_path):
    """A small org: the mirror loads it all, answers every kind of caller right without asking Zoho,
    and without it the live lookup routes the same callers in one round trip."""
    output = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "mirror", "--mirror-records", "500", "--mirror-callers", "25",
         "--mirror-latency-ms", "20", "--mirror-call-rate", "500", "--memory-phones", "2000", "--output", str(output)],
        capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())["mirror"]
    mirrored, live = report["with_mirror"], report["without_mirror"]
    assert mirrored["first_load_records"] == 500 and mirrored["misrouted"] == 0
    assert set(mirrored["requests_waited_for"].values()) == {0}
    assert mirrored["background_lookup_requests"] == 4, "the unknown numbers together: one listing per module"
    assert live["misrouted"] == 0 and live["statuses"] == {"OWNER": 20, "NOMATCH": 5}
    assert report["memory"]["phones"] == 2000
    assert "Zoho mirror:" in done.stdout


def test_retailcrm_smoke_run(tmp_path):
    """A few cold callers: each lookup sends its forms at once, everyone routes right, every screen pop arrives."""
    output = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "retailcrm", "--retailcrm-callers", "3",
         "--retailcrm-latency-ms", "50", "--output", str(output)],
        capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())["retailcrm"]
    assert report["misrouted"] == 0 and report["events"] == 3
    assert report["requests_per_lookup"] == 4.0
    assert "retailCRM: 50 ms per request" in done.stdout


def test_desk_smoke_run(tmp_path):
    """A few callers with an open ticket: one search each after the first lookup, everyone routes to the ticket's agent."""
    output = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "desk", "--desk-callers", "3",
         "--desk-latency-ms", "50", "--output", str(output)],
        capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())["desk"]
    assert report["misrouted"] == 0
    assert report["later_lookup_requests_p50"] == 2  # the ticket search and the contact search, at once
    assert report["requests_per_day_live"] < report["requests_per_day_mirror"]
    assert "Zoho Desk: 50 ms per request" in done.stdout


def test_store_smoke_run_measures_both_stores_in_one_run(tmp_path):
    """The shared store's suite: recording and flush rates on PostgreSQL and SQLite, as same-run ratios."""
    from postgres_server import base_url

    base_url()
    output = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "store", "--store-outcomes", "100", "--store-flush", "40",
         "--output", str(output)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())["store"]
    for kind in ("sqlite", "postgresql"):
        assert report[f"{kind}_recording"]["outcomes"] == 100
        assert report[f"{kind}_flush"]["delivered"] == 40
    assert report["recording_postgresql_vs_sqlite"] > 0 and report["flush_postgresql_vs_sqlite"] > 0
    assert "PostgreSQL vs SQLite, same run" in done.stdout
