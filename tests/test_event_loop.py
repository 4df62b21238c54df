"""``server.event_loop``: asyncio's loop or uvloop, chosen at start, and a real call routed on each."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asterisk_peer import AsteriskPeer, CallResult, asterisk_headers, header_block, parse_args
from conftest import TEST_EVENT_LOOP, make_config
from fastagi_server.config import ConfigError, config_from_dict
from fastagi_server.connection import stream_transport
from fastagi_server.event_loop import loop_factory, loop_name, run, uvloop_installed
from serve_process import ServeProcess

uvloop_missing = pytest.mark.skipif(not uvloop_installed(), reason="uvloop is not installed (pip install -e '.[fast]')")


def test_the_suite_runs_on_the_loop_it_was_asked_for() -> None:
    """CRMROUTE_TEST_EVENT_LOOP=uvloop really runs the in-process tests on uvloop."""

    async def running() -> str:
        return loop_name(asyncio.get_running_loop())

    assert asyncio.run(running()) == TEST_EVENT_LOOP


def test_a_value_other_than_the_three_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server: event_loop must be auto, asyncio, uvloop, got 'tokio'"):
        config_from_dict({"server": {"event_loop": "tokio"}})


def test_asyncio_is_asyncio_whatever_is_installed() -> None:
    async def running() -> str:
        return loop_name(asyncio.get_running_loop())

    assert loop_factory("asyncio") is asyncio.SelectorEventLoop
    assert run(running(), "asyncio") == "asyncio"


def test_uvloop_asked_for_and_missing_is_an_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a silent fall-back to the slower loop: the admin asked for uvloop."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets where it is not installed
    with pytest.raises(ConfigError, match=r"server\.event_loop: \"uvloop\" is not installed or cannot be loaded.*crmroute\[fast\]"):
        loop_factory("uvloop")

    async def never_run() -> None:
        raise AssertionError("ran")

    with pytest.raises(ConfigError, match="server.event_loop"):
        run(never_run(), "uvloop")


def test_a_transport_that_cannot_write_is_refused() -> None:
    """The check is on what a session uses of its transport, not on asyncio's class."""
    with pytest.raises(TypeError, match="stream transport"):
        stream_transport(asyncio.BaseTransport())


def _route_one_call(port: int) -> CallResult:
    """One Asterisk-like call over real TCP to ``route``, with every reply as Asterisk gives it."""
    peer = AsteriskPeer(device_states={"PJSIP/101": "NOT_INUSE"})
    result = CallResult()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(header_block(asterisk_headers(caller="+34928000000", host=f"127.0.0.1:{port}")))
        stream = sock.makefile("rb")
        while line := stream.readline():
            argv = parse_args(line.rstrip(b"\n").decode())
            result.commands.append(argv)
            sock.sendall(peer.reply(argv, result).encode() + b"\n")
    return result


@uvloop_missing
@pytest.mark.parametrize("choice", ["uvloop", "auto"])
def test_serve_on_uvloop_routes_a_real_call(tmp_path: Path, choice: str) -> None:
    config = tmp_path / "crmroute.toml"
    config.write_text(textwrap.dedent(f"""
        [routing]
        default_region = "ES"

        [server]
        event_loop = "{choice}"

        [outbox]
        path = "{tmp_path / 'outbox.sqlite'}"
    """))
    with ServeProcess(config) as serve:
        assert any("event loop=uvloop" in line for line in serve.lines if "listening on" in line), serve.log
        result = _route_one_call(serve.port)
    v = result.variables
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"], v["CRM_OWNER_NAME"]) == ("OWNER", "PJSIP/101", "Ana García")


def test_serve_on_asyncio_routes_a_real_call(tmp_path: Path) -> None:
    config = tmp_path / "crmroute.toml"
    config.write_text(f'[routing]\ndefault_region = "ES"\n\n[server]\nevent_loop = "asyncio"\n\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    with ServeProcess(config) as serve:
        assert any("event loop=asyncio" in line for line in serve.lines if "listening on" in line), serve.log
        result = _route_one_call(serve.port)
    assert result.variables["CRM_TARGET"] == "PJSIP/101"


def test_check_config_reports_uvloop_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastagi_server.config_check import inspect

    monkeypatch.setitem(sys.modules, "uvloop", None)
    report = asyncio.run(inspect(make_config({"server": {"event_loop": "uvloop"}})))
    assert any(p.startswith("server.event_loop:") for p in report.problems), report.problems


def test_serve_names_the_key_when_uvloop_is_asked_for_and_cannot_load(tmp_path: Path) -> None:
    """A uvloop that fails to import (missing, or built for another Python) stops serve with one line naming the key."""
    broken = tmp_path / "site" / "uvloop"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("uvloop is not usable here")\n')
    config = tmp_path / "crmroute.toml"
    config.write_text('[server]\nevent_loop = "uvloop"\n')
    done = subprocess.run(
        [sys.executable, "-m", "fastagi_server", "serve", "--config", str(config), "--port", "0"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(broken.parent), os.environ.get("PYTHONPATH", "")]))},
    )
    assert done.returncode == 1, done.stderr
    assert 'Error: server.event_loop: "uvloop" is not installed or cannot be loaded here (uvloop is not usable here)' in done.stderr
    assert "listening on" not in done.stderr
