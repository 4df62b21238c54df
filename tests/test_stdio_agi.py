"""Classic AGI: the real ``crmroute-agi`` process, driven through its stdin/stdout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from asterisk_peer import AsteriskPeer, CallResult, parse_args, stdio_headers
from dialplan import CONTRACT_VARIABLES

AGI_COMMAND = [sys.executable, "-m", "fastagi_server.stdio"]


class StdioAsterisk:
    """Plays Asterisk for a process AGI: header block on stdin, a reply per command."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            AGI_COMMAND + args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.peer = AsteriskPeer()
        self.result = CallResult()

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:  # the process already gave up, as it should on bad input
            pass

    def next_command(self) -> list[str] | None:
        line = self.proc.stdout.readline()
        if not line:
            return None
        self.result.raw += line
        return parse_args(line.rstrip(b"\n").decode())

    def answer(self, argv: list[str]) -> None:
        self.result.commands.append(argv)
        self.send(self.peer.reply(argv, self.result).encode() + b"\n")

    def run_to_end(self, before_each=None) -> tuple[CallResult, int, str]:
        while (argv := self.next_command()) is not None:
            if before_each:
                before_each(len(self.result.commands), self)
            self.answer(argv)
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self.proc.wait(timeout=30)
        return self.result, code, self.proc.stderr.read().decode()


def test_routes_a_demo_caller():
    agi = StdioAsterisk(["route", "900"])
    agi.send(stdio_headers())
    result, code, stderr = agi.run_to_end()
    assert code == 0, stderr
    v = result.variables
    assert [name for name in CONTRACT_VARIABLES if name not in v] == []
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"], v["CRM_OWNER_NAME"]) == ("OWNER", "PJSIP/101", "Ana García")
    # pyst2's chatter does not reach the Asterisk console: only our own lines,
    # the call's and, with no configuration file, the demo-mode warning.
    lines = stderr.splitlines()
    assert all(line.startswith("crmroute-agi ") for line in lines), stderr
    assert any("WARNING" in line and "DEMO MODE" in line for line in lines)
    assert any("INFO crmroute.call: call script=route" in line for line in lines)


def test_unknown_caller_nomatch():
    agi = StdioAsterisk(["route"])
    agi.send(stdio_headers(caller="+12025550199"))
    result, code, _ = agi.run_to_end()
    assert code == 0 and result.variables["CRM_ROUTE_STATUS"] == "NOMATCH"


def test_hangup_line_before_a_reply():
    def hang_up_first(count, agi):
        if count == 0:
            agi.send(b"HANGUP\n")

    agi = StdioAsterisk(["route"])
    agi.send(stdio_headers())
    result, code, _ = agi.run_to_end(hang_up_first)
    assert code == 0
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    # The device-state question was already asked when the HANGUP came; then the contract, in one EXEC MSet.
    assert result.commands[0][:3] == ["GET", "FULL", "VARIABLE"]
    assert len(result.commands) == 2 and result.commands[1][:2] == ["EXEC", "MSet"]
    assert [name for name, _ in result.assignments] == list(CONTRACT_VARIABLES)


def test_sighup_still_sets_the_variables_and_exits():
    def sighup_after_first(count, agi):
        if count == 1:
            agi.proc.send_signal(signal.SIGHUP)
            time.sleep(0.05)

    agi = StdioAsterisk(["route"])
    agi.send(stdio_headers())
    result, code, stderr = agi.run_to_end(sighup_after_first)
    assert code == 0, stderr
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"


def test_unknown_script_sets_error():
    agi = StdioAsterisk(["rotue"])
    agi.send(stdio_headers())
    result, code, stderr = agi.run_to_end()
    assert code == 0
    assert result.variables["CRM_ROUTE_STATUS"] == "ERROR"
    assert "unknown AGI script 'rotue'" in stderr


def test_eof_before_the_header_block_ends():
    agi = StdioAsterisk(["route"])
    agi.send(b"agi_request: x\nagi_callerid: 1\n")
    agi.proc.stdin.close()
    result, code, stderr = agi.run_to_end()
    assert code == 1 and result.commands == []
    assert "before the end of the header block" in stderr


def test_oversized_header_line():
    agi = StdioAsterisk(["route"])
    agi.send(b"agi_callerid: " + b"1" * 100_000 + b"\n\n")
    result, code, stderr = agi.run_to_end()
    assert code == 1 and result.commands == []
    assert "line longer than" in stderr


def test_silent_asterisk_hits_the_session_limit(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text("[limits]\nsession_timeout_ms = 300\n")
    agi = StdioAsterisk([f"--config={config}", "route"])
    started = time.monotonic()
    result, code, stderr = agi.run_to_end()  # no header block at all, stdin left open
    assert code == 1 and time.monotonic() - started < 10
    assert "session time limit" in stderr


def test_bad_config_still_answers_error(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text("[routing]\ndeadline_ms = -1\n")
    agi = StdioAsterisk([f"--config={config}", "route"])
    agi.send(stdio_headers())
    result, code, stderr = agi.run_to_end()
    assert result.variables["CRM_ROUTE_STATUS"] == "ERROR"
    assert "deadline_ms" in stderr


@pytest.mark.parametrize("argv, expected", [
    ([], (None, "route", ())),
    (["route", "900"], (None, "route", ("900",))),
    (["--config=/etc/x.toml", "outcome"], ("/etc/x.toml", "outcome", ())),
    (["--config", "/etc/x.toml", "route", "1", "2"], ("/etc/x.toml", "route", ("1", "2"))),
])
def test_argv(argv, expected):
    from fastagi_server.stdio import parse_argv

    assert parse_argv(argv) == expected


def wait_until_sighup_is_caught(pid: int, timeout: float = 20.0) -> None:
    """Poll the process's caught-signal mask (Linux /proc) until SIGHUP is in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGHUP - 1)):
            return
        time.sleep(0.005)
    raise AssertionError("the process never installed a SIGHUP handler")


def test_sighup_before_the_header_block_is_read():
    """Asterisk may signal the hang-up before the header block is read: the
    process must not die of it, and still sets the contract (the channel is
    dead, so no device state is asked)."""
    agi = StdioAsterisk(["route"])
    wait_until_sighup_is_caught(agi.proc.pid)  # main() has started; no header block read yet
    agi.proc.send_signal(signal.SIGHUP)
    agi.send(stdio_headers())
    result, code, stderr = agi.run_to_end()
    assert code == 0, stderr
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert not any(argv[:3] == ["GET", "FULL", "VARIABLE"] for argv in result.commands)


def test_route_loads_only_what_routing_needs():
    """A process AGI pays for every module it imports on every call: the route
    path must not load the outbox, the CRM writers or the Zoho client."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *AGI_COMMAND[1:], "route"],
        input=stdio_headers() + b"200 result=1 (NOT_INUSE)\n" + b"200 result=1\n",
        capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    loaded = {line.rpartition("|")[2].strip() for line in proc.stderr.decode().splitlines() if line.startswith("import time:")}
    assert "dialplan.router" in loaded and "fastagi_server.stdio_route" in loaded  # the listing is real
    unused = {"dialplan.outbox.store", "dialplan.outbox.worker", "crmlookup.writer", "crmlookup.local_directory.writer",
              "crmlookup.zoho.backend", "httpx",
              # No event loop on this path (fastagi_server.stdio_route): none of asyncio, nor what it drags in.
              "asyncio", "asyncio.base_events", "ssl", "selectors", "socket",
              # The server's app, the lookup cache (a process per call has nothing to cache), the metrics.
              "fastagi_server.app", "crmlookup.cache", "cachetools", "prometheus_client",
              # phonenumbers' extras: geocoding, carriers, time zones, as-you-type formatting.
              "phonenumbers.geocoder", "phonenumbers.carrier", "phonenumbers.timezone"}
    assert sorted(loaded & unused) == []
    # Number metadata of two regions only: the configured one (the default, US) and the caller's own (+34: ES).
    regions = {name.rpartition("_")[2] for name in loaded if name.startswith("phonenumbers.data.region_")}
    assert regions == {"US", "ES"}


@pytest.mark.parametrize("option", ["--help", "-h"])
def test_help_prints_the_usage_without_waiting_for_stdin(option):
    proc = subprocess.Popen(AGI_COMMAND + [option], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=20)  # stdin stays open until communicate closes it: no read may wait on it
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.decode().startswith("usage: crmroute-agi") and "AGI(" in out.decode()


def test_a_terminal_gets_the_usage_not_a_silent_wait():
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(AGI_COMMAND + ["route"], stdin=follower, capture_output=True, timeout=20)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 2 and b"usage: crmroute-agi" in proc.stderr


def test_a_routed_call_logs_its_line(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text('[routing]\ndefault_region = "ES"\n')
    agi = StdioAsterisk([f"--config={config}", "route", "34928555100"])
    agi.send(stdio_headers(caller="928000000"))
    result, code, stderr = agi.run_to_end()
    assert code == 0 and result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    lines = [line for line in stderr.splitlines() if "crmroute.call" in line]
    assert len(lines) == 1, stderr
    assert "INFO" in lines[0] and "call script=route" in lines[0] and "peer=stdio" in lines[0]
    assert "caller=+34928000000" in lines[0] and "did=34928555100" in lines[0] and "status=OWNER target=PJSIP/101" in lines[0]
    quiet = tmp_path / "quiet.toml"
    quiet.write_text('[server]\nlog_level = "WARNING"\n[routing]\ndefault_region = "ES"\n')
    agi = StdioAsterisk([f"--config={quiet}", "route"])
    agi.send(stdio_headers())
    _, _, stderr = agi.run_to_end()
    assert "crmroute.call" not in stderr


def test_the_routing_deadline_holds_on_a_slow_state_answer(tmp_path):
    """A device-state answer that takes 2.5 s does not hold a 500 ms decision:
    the owner rings unchecked, and the late answer is read before the contract."""
    config = tmp_path / "crmroute.toml"
    config.write_text("[routing]\ndeadline_ms = 500\n[limits]\nreply_timeout_ms = 8000\n")

    def slow_state_answer(count, agi):
        if count == 0:
            time.sleep(2.5)

    agi = StdioAsterisk([f"--config={config}", "route", "900"])
    agi.send(stdio_headers())
    result, code, stderr = agi.run_to_end(slow_state_answer)
    assert code == 0, stderr
    v = result.variables
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/101")
    assert "state unchecked (deadline)" in v["CRM_ROUTE_REASON"]
    assert int(v["CRM_LOOKUP_MS"]) < 2000  # the deadline, not the 2.5 s answer
    assert [argv[:2] for argv in result.commands] == [["GET", "FULL"], ["EXEC", "MSet"]]
