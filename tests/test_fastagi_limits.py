"""Every limit and every malformed input ends the session with one log line,
and the server goes on serving the next call."""

import asyncio
import os

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers, header_block, route_call
from conftest import agi_server, make_config, run, session_lines

# These tests are about the transport, so the first command is the contract's
# first SET VARIABLE: no device-state question comes before it (limits hit
# during device-state questions are tested with the routing policy).
FAST_LIMITS = make_config(
    {
        "limits": {"header_timeout_ms": 200, "reply_timeout_ms": 200, "session_timeout_ms": 1500, "max_line_bytes": 1024, "max_headers": 64},
        "routing": {"check_availability": False},
    }
)


async def raw_session(port: int, payload: bytes, *, close_write: bool = False, read_timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send ``payload``; return what the server wrote and whether it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if payload:
        writer.write(payload)
        await writer.drain()
    if close_write:
        writer.write_eof()
    received = b""
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not chunk:
                closed = True
                break
            received += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    writer.close()
    return received, closed


def run_and_check_next_call(payload: bytes, **kwargs) -> tuple[bytes, bool, str]:
    """Send a hostile session, then an ordinary call: the server must still route it."""

    async def scenario():
        async with agi_server(FAST_LIMITS) as server:
            received, closed = await raw_session(server.port, payload, **kwargs)
            following = await route_call(server.port)
            return received, closed, following.variables.get("CRM_ROUTE_STATUS", "")

    return run(scenario())


def only_session_error(caplog) -> str:
    lines = [line for line in session_lines(caplog) if line.startswith("session-ended")]
    assert len(lines) == 1, lines
    return lines[0]


def test_oversized_header_line(call_log):
    _, closed, following = run_and_check_next_call(b"agi_network_script: route\nagi_callerid: " + b"9" * 5000 + b"\n\n")
    assert closed and following == "OWNER"
    line = only_session_error(call_log)
    assert "line longer than 1024 bytes" in line and "peer=127.0.0.1:" in line


def test_oversized_line_without_newline(call_log):
    _, closed, _ = run_and_check_next_call(b"x" * 4000)
    assert closed
    assert "line longer than 1024 bytes" in only_session_error(call_log)


def test_eof_before_the_blank_line(call_log):
    received, closed, following = run_and_check_next_call(b"agi_network_script: route\nagi_callerid: 1\n", close_write=True)
    assert closed and received == b"" and following == "OWNER"
    assert "before the end of the header block" in only_session_error(call_log)


def test_garbage_bytes(call_log):
    garbage = bytes(range(256)) * 3 + b"\n\xff\xfe\xfd\n\n"
    received, closed, following = run_and_check_next_call(garbage)
    assert closed and received == b"" and following == "OWNER"
    assert "malformed header line" in only_session_error(call_log)


def test_random_garbage_never_crashes_the_server(call_log):
    async def scenario():
        async with agi_server(FAST_LIMITS) as server:
            for seed in range(30):
                payload = os.urandom(50 + seed * 37)
                await raw_session(server.port, payload, close_write=True, read_timeout=1)
            return (await route_call(server.port)).variables["CRM_ROUTE_STATUS"]

    assert run(scenario()) == "OWNER"


def test_ten_thousand_headers(call_log):
    headers = b"".join(b"agi_x_%d: y\n" % i for i in range(10_000)) + b"\n"
    _, closed, following = run_and_check_next_call(headers)
    assert closed and following == "OWNER"
    assert "more than 64 header lines" in only_session_error(call_log)


def test_peer_that_never_speaks(call_log):
    async def scenario():
        async with agi_server(FAST_LIMITS) as server:
            loop = asyncio.get_running_loop()
            started = loop.time()
            received, closed = await raw_session(server.port, b"")
            return received, closed, loop.time() - started

    received, closed, elapsed = run(scenario())
    assert closed and received == b""
    assert elapsed < 1.5  # the 200 ms header limit, not the 3 s read timeout
    assert "no complete header block within 200 ms" in only_session_error(call_log)


def test_peer_that_stops_reading_and_answering(call_log):
    """Headers, then silence: the first command's reply never comes."""
    received, closed, following = run_and_check_next_call(header_block(asterisk_headers()))
    assert closed and following == "OWNER"
    assert received.startswith(b'EXEC MSet "CRM_ROUTE_STATUS=OWNER,')
    line = only_session_error(call_log)
    assert "no reply to EXEC MSet within 200 ms" in line and "uniqueid=1700000000.1" in line


def test_peer_that_answers_too_slowly_hits_the_session_limit(call_log):
    async def scenario():
        config = make_config({"limits": {"reply_timeout_ms": 1000, "session_timeout_ms": 300}})
        async with agi_server(config) as server:
            peer = AsteriskPeer(reply_delay=0.5)
            return await peer.call(server.port, asterisk_headers())

    result = run(scenario())
    assert result.closed_by_server
    assert len(result.commands) == 1  # the contract's one command, whose reply came too late
    assert "session longer than 300 ms" in only_session_error(call_log)


def test_usage_reply_is_a_named_error(call_log):
    """A 520 block (which we never provoke) ends the session cleanly, read to its end."""

    class Refusing(AsteriskPeer):
        def reply(self, argv, result):
            return "520-Invalid command syntax.  Proper usage follows:\nUsage: SET VARIABLE <variablename> <value>\n520 End of proper usage."

    async def scenario():
        async with agi_server(FAST_LIMITS) as server:
            return await Refusing().call(server.port, asterisk_headers())

    result = run(scenario())
    assert result.closed_by_server and len(result.commands) == 1
    assert "Usage: SET VARIABLE" in only_session_error(call_log)


def test_invalid_command_reply_is_a_named_error(call_log):
    class Unknown(AsteriskPeer):
        def reply(self, argv, result):
            return "510 Invalid or unknown command"

    async def scenario():
        async with agi_server(FAST_LIMITS) as server:
            return await Unknown().call(server.port, asterisk_headers())

    assert run(scenario()).closed_by_server
    assert "Invalid or unknown command" in only_session_error(call_log)


def test_crlf_and_non_utf8_in_headers_are_tolerated():
    headers = header_block(asterisk_headers(caller_name="x")).replace(b"\n", b"\r\n")
    headers = headers.replace(b"agi_calleridname: x", b"agi_calleridname: \xff\xfeJos\xe9")

    async def scenario():
        async with agi_server(FAST_LIMITS) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(headers)
            await writer.drain()
            line = await reader.readline()
            writer.close()
            return line

    assert run(scenario()).startswith(b'EXEC MSet "CRM_ROUTE_STATUS=OWNER,')


@pytest.mark.parametrize("limit", ["max_line_bytes", "max_headers", "header_timeout_ms", "reply_timeout_ms", "session_timeout_ms"])
def test_each_limit_is_validated_at_load(limit):
    from fastagi_server.config import ConfigError

    with pytest.raises(ConfigError, match=f"limits: {limit}"):
        make_config({"limits": {limit: 1}})


@pytest.mark.parametrize(
    "limits, expected, at_least",
    [
        # The reply deadline falls after the header deadline: the one session timer re-arms for it.
        ({"header_timeout_ms": 100, "reply_timeout_ms": 400, "session_timeout_ms": 3000}, "no reply to EXEC MSet within 400 ms", 0.4),
        # The session deadline comes first.
        ({"header_timeout_ms": 100, "reply_timeout_ms": 2000, "session_timeout_ms": 300}, "session longer than 300 ms", 0.3),
    ],
)
def test_the_nearest_deadline_ends_a_silent_session(limits, expected, at_least, call_log):
    async def scenario():
        config = make_config({"limits": limits, "routing": {"check_availability": False}})
        async with agi_server(config) as server:
            loop = asyncio.get_running_loop()
            started = loop.time()
            received, closed = await raw_session(server.port, header_block(asterisk_headers()), read_timeout=5.0)
            return received, closed, loop.time() - started

    received, closed, elapsed = run(scenario())
    assert closed and received.startswith(b"EXEC MSet")
    assert at_least <= elapsed < at_least + 1.5
    assert expected in only_session_error(call_log)


def test_allow_list_decisions_follow_a_reload(tmp_path, call_log):
    """Peers are judged once per address, and judged again after a reload."""
    config_file = tmp_path / "crmroute.toml"
    config_file.write_text('[server]\nallowed_peers = ["192.0.2.0/24"]\n')

    async def scenario():
        async with agi_server() as server:
            before = (await route_call(server.port)).variables.get("CRM_ROUTE_STATUS")
            assert await server.reload(str(config_file))
            refused = await route_call(server.port)
            config_file.write_text('[server]\nallowed_peers = ["127.0.0.1"]\n')
            assert await server.reload(str(config_file))
            after = (await route_call(server.port)).variables.get("CRM_ROUTE_STATUS")
            return before, refused, after

    before, refused, after = run(scenario())
    assert before == "OWNER" and after == "OWNER"
    assert refused.commands == [] and refused.variables == {}


def test_a_port_check_is_not_a_warning(call_log):
    """Monitoring that only opens and closes the port leaves no warning."""

    async def scenario():
        async with agi_server(FAST_LIMITS) as server:
            received, closed = await raw_session(server.port, b"", close_write=True, read_timeout=1)
            following = await route_call(server.port)
            return received, closed, following.variables["CRM_ROUTE_STATUS"]

    received, closed, following = run(scenario())
    assert received == b"" and closed and following == "OWNER"
    assert not [line for line in session_lines(call_log) if line.startswith("session-ended")]
