"""The crmroute command: through click's runner and as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from asterisk_peer import route_call
from conftest import run
from fastagi_server import __version__
from fastagi_server.cli import cli

CRMROUTE = [sys.executable, "-m", "fastagi_server"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"CRMROUTE_CONFIG": ""})


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_lookup_json():
    result = invoke("lookup", "+34928000000", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["variables"]["CRM_ROUTE_STATUS"] == "OWNER"
    assert payload["variables"]["CRM_TARGET"] == "PJSIP/101"
    assert payload["normalised_number"] == "+34928000000"
    assert any("Leads L-1001" in step for step in payload["steps"])


def test_lookup_explain():
    result = invoke("lookup", "+34928000002", "--explain")
    assert result.exit_code == 0
    out = result.output
    assert "packaged demo directory" in out
    assert "normalised to +34928000002" in out
    assert "matched Deals D-3001" in out
    assert "owner u1002 (Ben Okafor)" in out and "Deals D-3001 owner u1002: rings 102" in out
    assert "decided in" in out
    assert re.search(r"CRM_TARGET\s+PJSIP/102", out)


def test_lookup_unknown_and_garbage_numbers():
    result = invoke("lookup", "+12025550199")
    assert result.exit_code == 0 and "NOMATCH" in result.output
    # Not a phone number: still a decision shown, but not an "ok".
    result = invoke("lookup", "'; DROP TABLE records; --")
    assert result.exit_code == 2 and "NOMATCH" in result.output
    withheld = invoke("lookup", "anonymous")
    assert withheld.exit_code == 0 and "caller number withheld" in withheld.output


def test_bad_config_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[routing]\ndeadline_ms = 'fast'\n")
    result = invoke("lookup", "+34928000000", "--config", str(bad))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: routing.deadline_ms: expected an integer, got str 'fast'"]


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[routing]\ndeadline_ms = 'fast'\n")
    result = CliRunner().invoke(cli, ["--debug", "lookup", "1", "--config", str(bad)])
    assert result.exit_code == 1 and result.exception is not None


def test_check_config(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[routing]\ndefault_region = "ES"\n[routing.owner_extensions]\n"u1" = ["101"]\n')
    result = invoke("check-config", str(good))
    assert result.exit_code == 0 and "ok" in result.output and "1 owner(s) mapped" in result.output
    missing_dir = tmp_path / "missing.toml"
    missing_dir.write_text(f'[directory]\npath = "{tmp_path / "nope.sqlite"}"\n')
    result = invoke("check-config", str(missing_dir))
    assert result.exit_code == 1 and "directory file not found" in result.output
    result = invoke("check-config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 1 and "config file not found" in result.output


def test_directory_import_then_lookup(tmp_path):
    csv_file = tmp_path / "export.csv"
    csv_file.write_text(
        "module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status\n"
        "Contacts,C-9,Zoe,+34 928 123 456,u9,Iker,iker@example.com,109,\n",
        encoding="utf-8",
    )
    db = tmp_path / "dir.sqlite"
    result = invoke("directory", "import", str(csv_file), "--path", str(db))
    assert result.exit_code == 0, result.output
    assert "imported 1 record(s), 1 phone(s), 1 user(s)" in result.output
    config = tmp_path / "c.toml"
    config.write_text(f'[directory]\npath = "{db}"\n')
    result = invoke("lookup", "+34928123456", "--config", str(config), "--json")
    assert json.loads(result.stdout)["variables"]["CRM_TARGET"] == "PJSIP/109"


def test_directory_import_reports_each_bad_row(tmp_path):
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text(
        "module,id,name,phones\nContacts,C-1,A,+34928000000\nGadgets,G-1,B,+34928000001\nContacts,C-2,C,12ab\n",
        encoding="utf-8",
    )
    db = tmp_path / "dir.sqlite"
    result = CliRunner().invoke(cli, ["directory", "import", str(csv_file), "--path", str(db)])
    assert result.exit_code == 1
    assert f"{csv_file}:3: module 'Gadgets'" in result.output
    assert f"{csv_file}:4: phone '12ab'" in result.output
    assert "nothing imported: 2 bad row(s)" in result.output


def test_directory_import_needs_a_target(tmp_path):
    csv_file = tmp_path / "x.csv"
    csv_file.write_text("module,id,phones\n")
    result = invoke("directory", "import", str(csv_file))
    assert result.exit_code == 2 and "--path" in result.output


def test_directory_import_of_binary_garbage(tmp_path):
    csv_file = tmp_path / "x.csv"
    csv_file.write_bytes(b"\xff\xfe\x00\x01garbage")
    result = invoke("directory", "import", str(csv_file), "--path", str(tmp_path / "d.sqlite"))
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) <= 3  # with the DEMO MODE line


# -- as real processes ------------------------------------------------------


def test_lookup_as_a_process():
    done = subprocess.run(CRMROUTE + ["lookup", "+34928000000", "--json"], capture_output=True, text=True, timeout=60, env={**os.environ, "CRMROUTE_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["variables"]["CRM_OWNER_EMAIL"] == "ana.garcia@example.com"
    explained = subprocess.run(CRMROUTE + ["lookup", "928000001", "--explain"], capture_output=True, text=True, timeout=60, env={**os.environ, "CRMROUTE_CONFIG": ""})
    # A Spanish number without its country code is no number in the demo's region US: exit 2, and why.
    assert explained.returncode == 2 and "region US" in explained.stdout


def test_error_as_a_process_has_no_traceback(tmp_path):
    done = subprocess.run(CRMROUTE + ["check-config", str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: config file not found: {tmp_path / 'nope.toml'}"]


class ServeProcess:
    """``crmroute serve`` on a free port, read from its log."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            CRMROUTE + ["serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "CRMROUTE_CONFIG": ""},
        )
        self.lines: list[str] = []
        self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"{pattern!r} not seen in:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self.lines += self.proc.stdout.readlines()


@pytest.fixture
def serve_process():
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        started.append(ServeProcess(*args))
        return started[-1]

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def test_serve_routes_calls_and_stops_on_sigterm(serve_process):
    server = serve_process()
    result = run(route_call(server.port, caller="+34928000000"))
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert result.variables["CRM_TARGET"] == "PJSIP/101"
    server.wait_for(r"call script=route .*status=OWNER target=PJSIP/101")
    assert server.stop() == 0
    assert any("stopped" in line for line in server.lines)
    # Started without a configuration: it works, and says loudly that it routes from demo data.
    assert any("WARNING" in line and "DEMO MODE: no configuration file found" in line for line in server.lines)


def test_serve_reloads_on_sighup(serve_process, tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text('[routing.owner_extensions]\n"u1001" = ["301"]\n')
    server = serve_process("--config", str(config))
    assert run(route_call(server.port)).variables["CRM_TARGET"] == "PJSIP/301"
    config.write_text('[routing.owner_extensions]\n"u1001" = ["302"]\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("configuration reloaded")
    assert run(route_call(server.port)).variables["CRM_TARGET"] == "PJSIP/302"
    config.write_text("[routing\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("reload failed, keeping the running configuration")
    assert run(route_call(server.port)).variables["CRM_TARGET"] == "PJSIP/302"
    assert server.stop() == 0


def test_serve_with_a_bad_config_exits_1(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text("[server]\nport = -1\n")
    done = subprocess.run(CRMROUTE + ["serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "server: port must be between 0 and 65535" in done.stderr


def test_serve_on_a_busy_port_exits_1(serve_process):
    first = serve_process()
    done = subprocess.run(CRMROUTE + ["serve", "--port", str(first.port)], capture_output=True, text=True, timeout=60, env={**os.environ, "CRMROUTE_CONFIG": ""})
    assert done.returncode == 1 and "address already in use" in done.stderr.lower()
