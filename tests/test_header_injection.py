"""A line break inside a header value cannot override what Asterisk said.

Asterisk writes each header once, values raw: a caller name holding a line
break would otherwise add a header of its own choosing, and a repeated key
used to win over the real one (the call then ran as ``outcome``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers, stdio_headers
from conftest import agi_server, make_config, run, session_lines
from fastagi_server.environment import parse_header_block
from fastagi_server.errors import AgiProtocolError

FORGED_NAME = "Eve\nagi_network_script: outcome\nagi_arg_1: 900"


def test_a_repeated_key_is_refused():
    with pytest.raises(AgiProtocolError, match="'agi_network_script' sent twice"):
        parse_header_block("agi_network_script: route\nagi_callerid: 1\nagi_network_script: outcome")
    # The slower path (a key that is not an identifier) refuses it too.
    with pytest.raises(AgiProtocolError, match="sent twice"):
        parse_header_block("agi-x: 1\nagi-x: 2")


def test_forged_header_ends_the_session_with_one_line(tmp_path, call_log):
    config = make_config({"outbox": {"path": str(tmp_path / "outbox.sqlite")}})

    async def scenario():
        async with agi_server(config) as server:
            forged = await AsteriskPeer().call(server.port, asterisk_headers(caller_name=FORGED_NAME, uniqueid="1700000000.9"))
            following = await AsteriskPeer().call(server.port, asterisk_headers())
            return forged, following

    forged, following = run(scenario())
    assert forged.closed_by_server and forged.commands == []  # neither routed nor taken for an outcome
    assert following.variables["CRM_ROUTE_STATUS"] == "OWNER"
    ended = [line for line in session_lines(call_log) if line.startswith("session-ended")]
    assert len(ended) == 1 and "sent twice" in ended[0]
    assert not (tmp_path / "outbox.sqlite").exists()


def test_forged_header_ends_a_process_agi(tmp_path):
    block = stdio_headers().replace(b"agi_calleridname: unknown\n", (f"agi_calleridname: {FORGED_NAME}\n").encode())
    done = subprocess.run(
        [sys.executable, "-m", "fastagi_server.stdio", "route"], input=block, capture_output=True, timeout=30,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path)},
    )
    assert done.returncode == 1 and done.stdout == b""
    assert b"sent twice" in done.stderr and b"Traceback" not in done.stderr
