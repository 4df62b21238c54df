"""Peers that hold connections without being calls cannot take the calls' place:
slowloris and silent connections, a flood of refused peers, the open-file
limit. Each gets a bounded log, never a line (or a traceback) per connection."""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import signal
import socket
import time

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import make_config, run, session_lines
from fastagi_server.app import App
from fastagi_server.server import FastAgiServer
from serve_process import ServeProcess

NORMAL_CALLS = 20


async def hold(port: int, count: int, *, trickle: bool) -> list[asyncio.StreamWriter]:
    """``count`` connections that never finish a header block: one byte at a time (slowloris), or none."""
    writers = []
    for _ in range(count):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if trickle:
            writer.write(b"a")
        writers.append(writer)
    return writers


async def trickle_on(writers: list[asyncio.StreamWriter], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for writer in writers:
            if not writer.is_closing():
                writer.write(b"g")
        await asyncio.sleep(0.05)


def test_slowloris_and_silent_peers_take_no_call_slot(call_log):
    """150 connections that never finish their header block, against max_sessions = 5:
    every normal call is routed, none answered "server busy"."""
    config = make_config({"server": {"max_sessions": 5, "max_connecting": 20}, "limits": {"header_timeout_ms": 30000}})

    async def scenario():
        server = FastAgiServer(App.from_config(config), warning_interval_s=60)
        await server.start("127.0.0.1", 0)
        stop = asyncio.Event()
        try:
            slow = await hold(server.port, 100, trickle=True)
            silent = await hold(server.port, 50, trickle=False)
            trickling = asyncio.ensure_future(trickle_on(slow, stop))
            statuses = []
            for i in range(NORMAL_CALLS):
                result = await AsteriskPeer().call(server.port, asterisk_headers(uniqueid=f"1700000000.{i}"))
                statuses.append(result.variables.get("CRM_ROUTE_STATUS"))
            stop.set()
            await trickling
            for writer in slow + silent:
                writer.close()
            return statuses
        finally:
            await server.shutdown(grace_ms=1000)

    statuses = run(scenario())
    assert statuses == ["OWNER"] * NORMAL_CALLS
    dropped = [line for line in session_lines(call_log) if "still sending their header block" in line]
    # 150 + 20 connections dropped or cut short, told in a few lines.
    assert 1 <= len(dropped) <= 11


def told_refusals(records) -> tuple[int, int, int]:
    """(lines, refusals logged one by one, refusals counted in summary lines)."""
    lines = [r.getMessage() for r in records if "refused" in r.getMessage()]
    counted = sum(int(m.group(1)) for line in lines if (m := re.match(r"refused peers: (\d+) more", line)))
    single = sum(1 for line in lines if line.startswith("refused peer="))
    return len(lines), single, counted


def test_refused_peers_are_summarised(call_log):
    """200 refused connections: a few lines, and every refusal told, one by one or counted."""
    config = make_config({"server": {"allowed_peers": ["192.0.2.0/24"]}})

    async def scenario():
        server = FastAgiServer(App.from_config(config), warning_interval_s=0.5)
        await server.start("127.0.0.1", 0)
        try:
            for _ in range(200):
                _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.close()
            for _ in range(400):  # each summary comes when its interval ends
                _, single, counted = told_refusals(call_log.records)
                if single + counted >= 200:
                    break
                await asyncio.sleep(0.05)
        finally:
            await server.shutdown(grace_ms=100)

    run(scenario())
    lines, single, counted = told_refusals(call_log.records)
    assert single + counted == 200
    assert counted > 0 and lines < 40  # not a line per refusal


def limit_open_files(soft: int, hard: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def write_config(tmp_path, **server):
    path = tmp_path / "crmroute.toml"
    lines = "".join(f"{key} = {value}\n" for key, value in server.items())
    path.write_text(f'[server]\n{lines}[limits]\nheader_timeout_ms = 60000\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    return path


def test_descriptor_exhaustion_is_never_reached(tmp_path):
    """Under a 256 open-file limit, 400 silent connections: normal calls are routed,
    and the log has no traceback and no line per refused accept."""
    config = write_config(tmp_path, max_connecting=100_000)
    with ServeProcess(config, preexec_fn=limit_open_files(256, 256)) as serve:
        assert re.search(r"at most 192 connections open", serve.log)

        async def scenario():
            silent = await hold(serve.port, 400, trickle=False)
            statuses = []
            for i in range(NORMAL_CALLS):
                result = await AsteriskPeer().call(serve.port, asterisk_headers(uniqueid=f"1700000001.{i}"), timeout=20)
                statuses.append(result.variables.get("CRM_ROUTE_STATUS"))
            for writer in silent:
                writer.close()
            return statuses

        statuses = run(scenario())
        assert serve.stop() == 0
        log = serve.log
    assert statuses == ["OWNER"] * NORMAL_CALLS
    assert "Traceback" not in log and "out of system resource" not in log
    assert len(log.splitlines()) < 60, log[-3000:]


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path):
    with ServeProcess(write_config(tmp_path), preexec_fn=limit_open_files(256, 1024)) as serve:
        assert "at most 896 connections open" in serve.log  # 1024 less the descriptors kept for the rest
        assert serve.stop() == 0
