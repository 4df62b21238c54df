"""Signals during start and shutdown never end ``crmroute serve`` at once:
SIGHUP during the grace period is ignored, a second SIGTERM stops at once
but gives calls not yet answered the fallback answer first."""

from __future__ import annotations

import asyncio
import os
import signal


from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import run
from fastagi_server.signals import ServerSignals
from serve_process import ServeProcess

CALLS = 10


def config_file(tmp_path):
    path = tmp_path / "crmroute.toml"
    path.write_text(
        "[server]\nshutdown_grace_ms = 30000\n"
        "[routing]\ndeadline_ms = 30000\n"
        "[limits]\nreply_timeout_ms = 30000\nsession_timeout_ms = 60000\n"
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
    )
    return path


async def calls_in_flight(serve: ServeProcess, during_grace) -> list:
    """CALLS calls held at their device-state question; SIGTERM; then ``during_grace``; then the answers flow."""
    gate = asyncio.Event()
    peers = [AsteriskPeer(state_gate=gate) for _ in range(CALLS)]
    calls = [asyncio.ensure_future(peer.call(serve.port, asterisk_headers(uniqueid=f"1700000000.{i}"), timeout=60)) for i, peer in enumerate(peers)]
    await asyncio.gather(*(peer.state_asked.wait() for peer in peers))
    serve.send(signal.SIGTERM)
    await asyncio.to_thread(serve.wait_for, "shutting down: waiting up to 30000 ms for 10 session")
    await during_grace()
    gate.set()
    return await asyncio.gather(*calls, return_exceptions=True)


def test_sighup_during_the_grace_period_is_ignored(tmp_path):
    with ServeProcess(config_file(tmp_path)) as serve:

        async def hang_up():
            serve.send(signal.SIGHUP)
            await asyncio.to_thread(serve.wait_for, "SIGHUP ignored")

        results = run(calls_in_flight(serve, hang_up))
        assert serve.proc.wait(timeout=30) == 0, serve.log  # the first SIGTERM's shutdown, completed
    assert [r.variables.get("CRM_ROUTE_STATUS") for r in results] == ["OWNER"] * CALLS


def test_a_second_sigterm_stops_at_once_with_the_fallback_answer(tmp_path):
    with ServeProcess(config_file(tmp_path)) as serve:

        async def terminate_again():
            serve.send(signal.SIGTERM)
            await asyncio.to_thread(serve.wait_for, "stopping now")

        results = run(calls_in_flight(serve, terminate_again))
        assert serve.proc.wait(timeout=30) == 0, serve.log
    for result in results:
        assert result.variables.get("CRM_ROUTE_STATUS") == "ERROR"
        assert "server stopping now" in result.variables["CRM_ROUTE_REASON"]


def test_sighup_while_starting_is_carried_out_once_serving():
    """A SIGHUP before the server serves neither ends it nor is lost."""
    reloads = []

    async def scenario():
        signals = ServerSignals(asyncio.get_running_loop())
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0)  # the loop runs the handler
            for _ in range(100):
                if signals._reload_pending:
                    break
                await asyncio.sleep(0.01)
            signals.serving(lambda: reloads.append("reload"), lambda: None)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(signals.stop.wait(), 10)
            os.kill(os.getpid(), signal.SIGHUP)  # during shutdown: ignored
            await asyncio.sleep(0.05)
        finally:
            signals.remove()

    run(scenario())
    assert reloads == ["reload"]
