"""Peers that hold connections without being calls cannot take the calls' place:
slowloris and silent connections, a flood of refused peers, the open-file
limit. Each gets a bounded log, never a line (or a traceback) per connection."""

from __future__ import annotations

import asyncio
import re
import resource

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


ACCEPT_ERRORS_CHILD = r"""
import asyncio, logging, os, sys
sys.path.insert(0, sys.argv[1])
from conftest import make_config
from fastagi_server.app import App
from fastagi_server.server import FastAgiServer

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

async def main():
    server = FastAgiServer(App.from_config(make_config({"limits": {"header_timeout_ms": 60000}})), warning_interval_s=60)
    await server.start("127.0.0.1", 0)
    print(server.port, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    filler = []
    while line := (await reader.readline()).strip():
        if line == b"fill":  # every descriptor left taken: the next accept fails with EMFILE
            try:
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
        elif line == b"free":
            for fd in filler:
                os.close(fd)
            filler.clear()
        print("done", flush=True)
    await server.shutdown(grace_ms=100)

asyncio.run(main())
"""


def test_failed_accepts_pause_and_are_summarised(tmp_path):
    """Descriptors exhausted by something else: the accepts that fail are told in a
    few lines, without tracebacks, and accepting resumes once descriptors are free."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "child.py"
    script.write_text(ACCEPT_ERRORS_CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(Path(__file__).parent)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=limit_open_files(128, 128),
    )
    try:
        port = int(child.stdout.readline())
        child.stdin.write(b"fill\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"done\n"

        async def waiting_calls():
            calls = [asyncio.ensure_future(AsteriskPeer().call(port, asterisk_headers(uniqueid=f"1700000002.{i}"), timeout=30)) for i in range(5)]
            await asyncio.sleep(1.0)  # the listener retries every 0.1 s meanwhile, each time failing
            child.stdin.write(b"free\n")
            child.stdin.flush()
            return await asyncio.gather(*calls)

        results = run(waiting_calls())
        assert [r.variables.get("CRM_ROUTE_STATUS") for r in results] == ["OWNER"] * 5
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    log = child.stderr.read().decode()
    failed = [line for line in log.splitlines() if "accept failed" in line or "accept errors" in line]
    assert 1 <= len(failed) <= 11, log
    assert "Traceback" not in log and "out of system resource" not in log
