"""Nothing lost, nothing twice: ``crmroute outbox flush`` killed with SIGKILL at random points.

The worker runs as a real process against the Zoho simulator (real HTTP on
loopback) and is killed again and again in the middle of its work: between
a request and its answer, between the answer and the outbox's commit, in a
commit. Each restart takes up what the last one left; at the end every
outcome is in the CRM exactly once.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

from conftest import zoho_toml
from dialplan.outbox import Outbox
from dialplan.outcome import outcome_from_channel

KNOWN = "+34928000000"
CALLS = 120
KILLS = 20


def write_config(path, sim, outbox_path, boss_id):
    path.write_text(zoho_toml(sim, zoho="""
user_extension_field = "Extension"
search_lag_s = 0
breaker_open_s = 1
""", rest=f"""
[outbox]
path = "{outbox_path}"
batch_size = 7
backoff_initial_s = 0.01
backoff_max_s = 0.05
lease_s = 600
[outcomes]
senior_manager_id = "{boss_id}"
"""))


def outcomes(ana_id, lead_id):
    now = time.time()
    routed = {"route_status": "OWNER", "owner_id": ana_id, "module": "Leads", "record_id": lead_id, "route_extension": "101"}
    made = []
    for i in range(CALLS):
        if i % 4 == 0:  # an unknown caller, a new one each time: a lead, a call and a task
            caller, readings = f"+3492877{i:04d}", {"dial_status": "NOANSWER", "route_status": "NOMATCH"}
        elif i % 4 == 1:  # answered by Ben, not the owner: a call and a task
            caller, readings = KNOWN, {**routed, "dial_status": "ANSWER", "peer_number": "102", "answered_s": "61"}
        elif i % 4 == 2:  # answered by the owner: a call only
            caller, readings = KNOWN, {**routed, "dial_status": "ANSWER", "peer_number": "101", "answered_s": "5"}
        else:  # missed: a call and a task
            caller, readings = KNOWN, {**routed, "dial_status": "NOANSWER"}
        made.append(outcome_from_channel(call_id=f"{int(now)}.{i}", caller=caller, readings=readings, ended_at=now - 60, region="ES"))
    return made


def uncertain(outbox_path) -> int:
    """Writes sent whose answer was never recorded, plus outcomes left in flight."""
    conn = sqlite3.connect(outbox_path)
    try:
        sent = conn.execute("SELECT count(*) FROM writes WHERE state = 'sent'").fetchone()[0]
        flying = conn.execute("SELECT count(*) FROM outcomes WHERE state = 'in_flight'").fetchone()[0]
    finally:
        conn.close()
    return sent + flying


def record_now(outbox_path, outcomes) -> None:
    """Put ``outcomes`` in the outbox at ``outbox_path``, recorded now, as the server would."""
    box = Outbox.open(outbox_path)
    box.record_many([(o, time.time()) for o in outcomes])
    box.close()


def flush_env() -> dict[str, str]:
    """The environment of the flush processes: this one's, writing no bytecode, so the processes
    killed here leave nothing on disk but the outbox."""
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def flush_command(config_path) -> list[str]:
    return [sys.executable, "-m", "fastagi_server", "outbox", "flush", "--config", str(config_path)]


def claimed_by(outbox_path, pid: int) -> int:
    """Outcomes the process ``pid`` holds in flight (its lease token names it: host:pid:random)."""
    conn = sqlite3.connect(outbox_path)
    try:
        return conn.execute("SELECT count(*) FROM outcomes WHERE state = 'in_flight' AND lease_token LIKE ?", (f"%:{pid}:%",)).fetchone()[0]
    finally:
        conn.close()


def wait_until_busy(proc: subprocess.Popen, outbox_path, bound_s: float = 120.0) -> None:
    """Until ``proc`` has claimed work (or has ended): kills then land inside the work
    however long the process takes to start on a loaded machine."""
    give_up = time.monotonic() + bound_s
    while proc.poll() is None and time.monotonic() < give_up:
        try:
            if claimed_by(outbox_path, proc.pid):
                return
        except sqlite3.OperationalError:
            pass  # the file is being migrated or locked for a moment: look again
        time.sleep(0.002)


def flush_killed(command: list[str], env: dict[str, str], outbox_path, kills: int, pause) -> int:
    """Start ``command`` ``kills`` times, each killed with SIGKILL ``pause()`` seconds after
    it has work in flight; how many kills left a write uncertain (sent, its answer never recorded)."""
    killed_mid_write = 0
    for _ in range(kills):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_until_busy(proc, outbox_path)
        time.sleep(pause())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if uncertain(outbox_path):
            killed_mid_write += 1
    return killed_mid_write


def flush_until_done(command: list[str], env: dict[str, str], attempts: int = 10) -> None:
    """Run ``command`` to its end until one run exits 0, at most ``attempts`` times: the kills
    leave work that a single run may not finish. Failing, it shows every run's output."""
    finishing = []
    for _ in range(attempts):
        finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        finishing.append(finished.stdout + finished.stderr)
        if finished.returncode == 0:
            break
    assert finished.returncode == 0, "\n".join(finishing)


def test_sigkill_during_flush_loses_nothing_and_writes_nothing_twice(tmp_path):
    from zoho_simulator import ZohoSimulator

    rng = random.Random(20240501)
    with ZohoSimulator(latency_s=0.015, max_tokens_per_window=1000) as sim:
        ana = sim.add_user("Ana García", "ana@example.com", Extension="101")
        sim.add_user("Ben Okafor", "ben@example.com", Extension="102")
        boss = sim.add_user("Sam Senior", "sam@example.com")
        lead = sim.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
        outbox_path = tmp_path / "outbox.sqlite"
        config_path = tmp_path / "crmroute.toml"
        write_config(config_path, sim, outbox_path, boss["id"])
        recorded = outcomes(ana["id"], lead["id"])
        record_now(outbox_path, recorded)

        command = flush_command(config_path)
        env = flush_env()
        # Half the kills at once (a write on the wire), half a little later (anywhere in a round).
        killed_mid_write = flush_killed(command, env, outbox_path, KILLS, lambda: rng.choice((0.0, rng.uniform(0.0, 0.6))))
        flush_until_done(command, env)

        # The kills landed in the middle of the work, not only before or after it.
        assert killed_mid_write >= 3, f"only {killed_mid_write} kills hit a write in flight"
        box = Outbox.open(outbox_path)
        assert box.counts()["done"] == CALLS
        box.close()

        def keys(module):
            return Counter(re.search(r"\[([^\]]+)\]$", r["Subject"]).group(1) for r in sim.records(module))

        call_ids = [o.call_id for o in recorded]
        assert keys("Calls") == Counter(call_ids), "every call exactly once"
        expected_tasks = [o.call_id for i, o in enumerate(recorded) if i % 4 != 2]
        assert keys("Tasks") == Counter(expected_tasks), "every task exactly once"
        new_leads = Counter(r["Phone"] for r in sim.records("Leads") if r.get("Phone", "").startswith("+3492877"))
        assert new_leads == Counter(o.caller_e164 for i, o in enumerate(recorded) if i % 4 == 0), "one lead per unknown caller"
        # Every call and task of an unknown caller is linked to that caller's one lead.
        lead_by_phone = {r["Phone"]: r["id"] for r in sim.records("Leads")}
        by_key = {o.call_id: o for o in recorded}
        for module in ("Calls", "Tasks"):
            for record in sim.records(module):
                outcome = by_key[re.search(r"\[([^\]]+)\]$", record["Subject"]).group(1)]
                expected = lead_by_phone[outcome.caller_e164] if outcome.caller_e164 != KNOWN else lead["id"]
                assert record["What_Id"]["id"] == expected
