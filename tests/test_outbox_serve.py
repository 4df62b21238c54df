"""The delivery worker inside ``crmroute serve``, a real process: started with it, reloaded with SIGHUP, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import run
from crmlookup.local_directory import import_csv_text, open_connection

KNOWN = "+34928000000"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


class Serve:
    """``crmroute serve`` in a child process."""

    def __init__(self, config_path, port):
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastagi_server", "serve", "--config", str(config_path), "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
        )
        wait_for(lambda: listening(port) or self.proc.poll() is not None, what="the server to listen")
        assert self.proc.poll() is None, self.proc.stdout.read()

    def outcome(self, uniqueid, caller=KNOWN, **variables):
        headers = asterisk_headers(script="outcome", uniqueid=uniqueid, caller=caller, extension="s", arguments=("900",))
        return run(AsteriskPeer(channel_variables={"DIALSTATUS": "NOANSWER", **variables}).call(self.port, headers))

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        return code, self.proc.stdout.read()


def test_serve_delivers_in_the_background_reloads_and_stops(tmp_path):
    directory = tmp_path / "directory.sqlite"
    conn = open_connection(directory, create=True)
    import_csv_text(conn, f"module,id,name,phones,owner_id,owner_extensions\nLeads,L-1,Marta,{KNOWN},u1,101\n", "ES")
    conn.close()
    config = tmp_path / "crmroute.toml"
    config.write_text(f'[routing]\ndefault_region = "ES"\n[directory]\npath = "{directory}"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\nflush_interval_s = 60\n')

    def calls():
        db = sqlite3.connect(directory)
        try:
            return db.execute("SELECT key, call_type, record_id FROM calls ORDER BY key").fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    server = Serve(config, free_port())
    try:
        result = server.outcome("1700000000.1")
        assert result.closed_by_server
        # Woken by the new outcome: delivered long before the 60 s idle interval.
        assert wait_for(calls, 10, "the first call in the history") == [("1700000000.1", "Missed", "L-1")]
        config.write_text(config.read_text().replace('default_region = "ES"', 'default_region = "ES"\ndeadline_ms = 1400'))
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        server.outcome("1700000000.2", DIALSTATUS="ANSWER", DIALEDPEERNUMBER="101")
        assert wait_for(lambda: len(calls()) == 2 and calls(), 10, "the second call")[1] == ("1700000000.2", "Inbound", "L-1")
    finally:
        code, output = server.stop()
    assert code == 0, output
    assert "configuration reloaded" in output and "stopped" in output


def test_revoked_token_then_new_token_file_and_sighup_replays_everything(tmp_path):
    """The admin's way out of a revoked token: a new refresh token in its file, then SIGHUP."""
    from zoho_simulator import ZohoSimulator

    with ZohoSimulator() as sim:
        ana = sim.add_user("Ana García", "ana@example.com", Extension="101")
        sim.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
        token_file = tmp_path / "refresh_token"
        token_file.write_text(sim.refresh_token)
        config = tmp_path / "crmroute.toml"
        config.write_text(
            f'[crm]\nbackend = "zoho"\n[routing]\ndefault_region = "ES"\n'
            f'[zoho]\naccounts_url = "{sim.url}"\nclient_id = "{sim.client_id}"\nclient_secret = "{sim.client_secret}"\n'
            f'refresh_token_file = "{token_file}"\nuser_extension_field = "Extension"\nsearch_lag_s = 0\n'
            f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\nauth_retry_s = 3600\nbackoff_initial_s = 0.05\n'
            f'[outcomes]\nmissed_known_task = false\n'
        )
        server = Serve(config, free_port())
        try:
            server.outcome("1700000000.1")
            wait_for(lambda: len(sim.records("Calls")) == 1, what="the first call in Zoho")
            sim.revoke_refresh_token()
            for i in range(2, 12):
                server.outcome(f"1700000000.{i}")
            box = lambda: sqlite3.connect(tmp_path / "outbox.sqlite")  # noqa: E731
            wait_for(lambda: box().execute("SELECT value FROM meta WHERE key = 'paused'").fetchone(), what="the queue to pause")
            assert len(sim.records("Calls")) == 1
            # Zoho issues a new refresh token; the admin puts it in the file and reloads.
            sim.refresh_token, sim.refresh_token_revoked = "1000.brand-new-token.abc", False
            token_file.write_text(sim.refresh_token)
            server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: len(sim.records("Calls")) == 11, what="the replay")
            wait_for(lambda: box().execute("SELECT value FROM meta WHERE key = 'paused'").fetchone() is None, what="the pause to clear")
            subjects = sorted(r["Subject"] for r in sim.records("Calls"))
            assert len(set(subjects)) == 11
        finally:
            code, output = server.stop()
        assert code == 0, output
        assert "outbox paused" in output and "outbox resumed" in output


def test_in_the_demo_setup_what_the_outbox_delivered_survives_a_restart():
    """With no configuration, outcomes go into the demo directory: it is kept in the
    state directory, so after a restart the leads the outbox says it created are there."""
    import time

    from conftest import decide
    from dialplan.outcome import outcome_from_channel
    from fastagi_server.app import App
    from fastagi_server.config import Config

    unknown = "+34928555999"

    async def deliver():
        app = App.from_config(Config())
        try:
            missed = outcome_from_channel(call_id="1700000123.1", caller=unknown, readings={"dial_status": "NOANSWER"}, ended_at=time.time(), region="ES")
            assert await app.outbox.record(missed, time.time())
            summary = await app.delivery_worker.flush()
            assert summary.delivered == 1 and app.outbox.counts()["done"] == 1
        finally:
            await app.aclose()

    async def after_restart():
        app = App.from_config(Config())
        try:
            return await decide(app, unknown)
        finally:
            await app.aclose()

    run(deliver())
    decision = run(after_restart())
    assert decision.match is not None and (decision.match.module, decision.match.record_id) == ("Leads", "L-1700000123.1")
