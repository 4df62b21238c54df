"""Two workers on one outbox, ``crmroute serve`` and ``crmroute outbox flush``
started together (the README says flush may run next to the server): every
unknown caller gets one lead, however the two share the backlog.

Real processes, a real SQLite outbox, the Zoho simulator over HTTP. An
earlier worker looked every caller up (none is in the CRM) and stopped before
writing; each worker now takes a batch holding an outcome of every caller,
and the simulator holds the round's first answer (the CRM's users) until
both workers ask for it, so both plan a lead for each caller at the same
moment. Only one may create it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import zoho_toml
from dialplan.outbox import Outbox
from dialplan.outbox.context import CrmContext
from dialplan.outcome import outcome_from_channel
from serve_process import ServeProcess

CALLERS = 50
CALLS_EACH = 4


def write_config(path: Path, sim, outbox_path: Path, boss_id: str) -> None:
    """A configuration whose process keeps its access token to itself (the simulator
    tells the two workers apart by their tokens)."""
    path.write_text(zoho_toml(sim, zoho=f"""
search_lag_s = 0
token_cache_file = "{path}.token"
""", rest=f"""
[outbox]
path = "{outbox_path}"
batch_size = 100
flush_interval_s = 0.2
backoff_initial_s = 0.05
backoff_max_s = 0.2
[outcomes]
senior_manager_id = "{boss_id}"
[mirror]
enabled = false  # the CRM's requests here are the two workers' only
"""))


def backlog() -> list:
    """CALLS_EACH missed calls from each unknown caller, in rounds: each batch of 100 holds every caller."""
    now = time.time()
    made = []
    for round_number in range(CALLS_EACH):
        for caller in range(CALLERS):
            made.append(outcome_from_channel(
                call_id=f"{int(now)}.{round_number * CALLERS + caller}", caller=f"+3492866{caller:04d}",
                readings={"dial_status": "NOANSWER", "route_status": "NOMATCH"}, ended_at=now - 600 + round_number, region="ES",
            ))
    return made


def holds_open(pid: int, path: Path) -> bool:
    """True once process ``pid`` has the file open (its worker is about to take a batch)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_serve_and_flush_together_give_each_caller_one_lead(tmp_path):
    from zoho_simulator import Stall, ZohoSimulator

    with ZohoSimulator(latency_s=0.01, max_tokens_per_window=1000) as sim:
        boss = sim.add_user("Sam Senior", "sam@example.com")
        outbox_path = tmp_path / "outbox.sqlite"
        config = tmp_path / "crmroute.toml"
        write_config(config, sim, outbox_path, boss["id"])
        flush_config = tmp_path / "flush.toml"
        write_config(flush_config, sim, outbox_path, boss["id"])
        box = Outbox.open(outbox_path)
        recorded = backlog()
        box.record_many([(o, time.time()) for o in recorded])
        looked_up = CrmContext(planned_at=time.time()).to_dict()
        box.save_contexts([(row.id, looked_up) for row in box.list_rows(limit=len(recorded))])
        box.close()

        # Both workers wait on this write lock, so neither can finish the backlog before the other starts.
        gate = sqlite3.connect(outbox_path, isolation_level=None, timeout=30)
        gate.execute("BEGIN IMMEDIATE")
        flush = None
        try:
            with ServeProcess(config, wait=False) as serve:
                flush = subprocess.Popen(
                    [sys.executable, "-m", "fastagi_server", "outbox", "flush", "--config", str(flush_config)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
                wait_until(lambda: holds_open(flush.pid, outbox_path) and holds_open(serve.proc.pid, outbox_path), 30, "both workers")
                sim.stall = Stall("/users$")
                gate.execute("ROLLBACK")
                # A round starts with the CRM's users: both workers then look up
                # the callers of their batches side by side, and plan their leads together.
                wait_until(lambda: len(sim.stall.waiting()) == 2, 30, "both workers to start a round")
                sim.stall.release_taking_turns()
                serve.wait_listening()
                flushed = flush.communicate(timeout=120)[0]

                def all_done() -> bool:
                    return Outbox.open(outbox_path).counts()["done"] == len(recorded)

                wait_until(all_done, 60, "every outcome delivered")
                assert serve.stop() == 0, serve.log
        finally:
            gate.close()
            if flush is not None and flush.poll() is None:
                flush.kill()
        assert flush.returncode in (0, 1), flushed

        leads = Counter(r["Phone"] for r in sim.records("Leads"))
        assert leads == Counter({o.caller_e164: 1 for o in recorded}), f"callers with more than one lead: {[p for p, n in leads.items() if n > 1]}"
        calls = Counter(re.search(r"\[([^\]]+)\]$", r["Subject"]).group(1) for r in sim.records("Calls"))
        assert calls == Counter(o.call_id for o in recorded), "every call exactly once"
        lead_by_phone = {r["Phone"]: r["id"] for r in sim.records("Leads")}
        by_key = {o.call_id: o for o in recorded}
        for record in sim.records("Calls"):
            outcome = by_key[re.search(r"\[([^\]]+)\]$", record["Subject"]).group(1)]
            assert record["What_Id"]["id"] == lead_by_phone[outcome.caller_e164], "logged on the caller's one lead"
