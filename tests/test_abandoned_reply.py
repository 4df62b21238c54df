"""A handler that stops waiting for a reply still gets its next reply right.

The routing deadline may cancel a wait for a device-state answer; Asterisk
answers that command anyway. The connection reads that late reply before it
writes the next command, so no reply is ever paired with the wrong command.
"""

import asyncio

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import agi_server, make_config, run, session_lines
from fastagi_server.handlers import builtin_routes

STATE = "${DEVICE_STATE(PJSIP/101)}"


async def give_up_then_ask(session, app):
    """Asks a state, gives up after 50 ms, then reads a variable."""
    gave_up = False
    try:
        async with asyncio.timeout(0.05):
            await session.get_full_variable(STATE)
    except TimeoutError:
        gave_up = True
    value = await session.get_variable("GREETING")
    await session.set_variable("SEEN", f"{gave_up}:{value}")
    return {"status": "OK"}


@pytest.fixture
def probe_script():
    routes = builtin_routes()
    routes.add("probe", give_up_then_ask)
    return routes


def call(peer: AsteriskPeer, limits: dict | None = None, routes=None):
    async def scenario():
        async with agi_server(make_config({"limits": limits or {}}), routes=routes) as server:
            return await peer.call(server.port, asterisk_headers(script="probe"))

    return run(scenario())


def test_the_next_command_waits_for_the_abandoned_reply(probe_script):
    peer = AsteriskPeer(device_states={"PJSIP/101": "INUSE"}, state_delay=0.2, channel_variables={"GREETING": "hello"})
    result = call(peer, routes=probe_script)
    # The variable's own value came back, not the late "INUSE".
    assert result.variables["SEEN"] == "True:hello"
    late_reply = next(t for t, kind, line in result.timeline if kind == "reply" and line == "200 result=1 (INUSE)")
    next_command = next(t for t, kind, line in result.timeline if kind == "command" and line.startswith("GET VARIABLE"))
    assert next_command >= late_reply
    assert [argv[:2] for argv in result.commands] == [["GET", "FULL"], ["GET", "VARIABLE"], ["SET", "VARIABLE"]]


def test_an_abandoned_reply_that_never_comes_ends_the_session(probe_script, call_log):
    class Silent(AsteriskPeer):
        async def _serve(self, reader, writer, result):
            while chunk := await reader.read(65536):
                result.raw += chunk
            result.closed_by_server = True

    result = call(Silent(), {"reply_timeout_ms": 300}, routes=probe_script)
    assert result.closed_by_server
    assert result.raw.count(b"\n") == 1  # the state question only: nothing was sent after it
    errors = [line for line in session_lines(call_log) if line.startswith("session-ended")]
    assert len(errors) == 1 and "no reply to GET FULL within 300 ms" in errors[0]
