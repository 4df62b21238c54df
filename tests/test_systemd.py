"""Running under systemd: the notify messages of a real ``crmroute serve`` arrive on a datagram
socket the test owns (as systemd's would), and the shipped unit passes ``systemd-analyze verify``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from serve_process import ServeProcess

UNIT = Path(__file__).parent.parent / "contrib" / "systemd" / "crmroute.service"


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "crmroute.toml"
    path.write_text(f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    return path


class NotifySocket:
    """A datagram socket standing in for systemd's: what the service sends, message by message."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address
        self.messages: list[dict[str, str]] = []

    def next_with(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """The next message carrying ``key`` (the others are kept in :attr:`messages`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {key} message; got {self.messages}"
            self.sock.settimeout(left)
            data = self.sock.recv(4096)
            message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append(message)
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path, abstract):
    address = f"@crmroute-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify")
    notify = NotifySocket(address)
    try:
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}  # WatchdogSec=0.2s: a ping every 0.1 s
        with ServeProcess(write_config(tmp_path), env=env) as serve:
            ready = notify.next_with("READY")
            assert ready["READY"] == "1" and ready["MAINPID"] == str(serve.proc.pid)
            assert ready["STATUS"] == f"serving on 127.0.0.1:{serve.port}"
            assert any("listening on" in line for line in serve.lines)  # READY only once it listens
            for _ in range(3):
                assert notify.next_with("WATCHDOG")["WATCHDOG"] == "1"
            serve.send(signal.SIGHUP)  # systemctl reload
            assert notify.next_with("RELOADING")["RELOADING"] == "1"
            assert notify.next_with("READY")["STATUS"] == f"serving on 127.0.0.1:{serve.port}"
            serve.wait_for("configuration reloaded")
            serve.send(signal.SIGTERM)
            assert notify.next_with("STOPPING")["STOPPING"] == "1"
            assert serve.stop() == 0
    finally:
        notify.close()


def test_no_watchdog_pings_when_the_watchdog_is_meant_for_another_process(tmp_path):
    address = str(tmp_path / "notify")
    notify = NotifySocket(address)
    try:
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
        with ServeProcess(write_config(tmp_path), env=env) as serve:
            notify.next_with("READY")
            serve.send(signal.SIGTERM)
            notify.next_with("STOPPING")
            assert serve.stop() == 0
        assert not any("WATCHDOG" in message for message in notify.messages)
    finally:
        notify.close()


def test_a_notify_socket_nobody_listens_on_changes_nothing(tmp_path):
    with ServeProcess(write_config(tmp_path), env={"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "100000"}) as serve:
        assert serve.stop() == 0
        assert "Traceback" not in serve.log


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    # The unit names the installed command; here it is this environment's.
    installed = Path(sys.executable).parent / "crmroute"
    text = UNIT.read_text()
    assert "ExecStart=/opt/crmroute/venv/bin/crmroute serve" in text
    unit = tmp_path / "crmroute.service"
    unit.write_text(text.replace("/opt/crmroute/venv/bin/crmroute", str(installed)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    for setting in (
        "Type=notify", "User=crmroute", "StateDirectory=crmroute", "ConfigurationDirectory=crmroute", "LimitNOFILE=",
        "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "RestrictAddressFamilies=", "WatchdogSec=",
    ):
        assert f"\n{setting}" in text, setting
    assert "\nCapabilityBoundingSet=\n" in text  # empty: no capability at all
