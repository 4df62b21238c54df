"""No caller or CRM text can forge a log line: every control and line-separator
character (CR, LF, U+0085, U+2028, U+2029 ...) is escaped, in the per-call
line and in every other line, as a real ``crmroute serve`` writes them."""

from __future__ import annotations

import json
import re

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import run
from fastagi_server.calllog import format_fields
from fastagi_server.logs import escape_log_text
from serve_process import ServeProcess

SEPARATORS = ["\r", "\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x00", "\x1b", "\x7f"]
FORGED = "\r\u2028\u0085INFO crmroute.call: call status=OWNER target=PJSIP/666"
# A log line as serve writes it: the time first.
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ crmroute")


@pytest.mark.parametrize("separator", SEPARATORS)
def test_every_separator_is_escaped_and_reads_back(separator):
    text = f"Eve{separator}status=OWNER"
    escaped = escape_log_text(text)
    assert len(escaped.splitlines()) == 1 and separator not in escaped
    assert json.loads(f'"{escaped}"') == text
    line = format_fields({"caller_name": text, "plain": "PJSIP/101"})
    assert len(line.splitlines()) == 1 and separator not in line
    assert json.loads(line.split("=", 1)[1].rsplit(" plain=", 1)[0]) == text


class Unreadable(AsteriskPeer):
    """A channel that refuses to be read (the outcome's "channel not readable" warning)."""

    def reply(self, argv, result):
        if argv[:3] == ["GET", "FULL", "VARIABLE"]:
            return "510 Invalid or unknown command"
        return super().reply(argv, result)


def test_hostile_headers_cannot_forge_a_line_of_serve(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text(f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    hostile = dict(uniqueid="1700000000.1" + FORGED, caller="+34928000000" + FORGED, caller_name="Eve" + FORGED, arguments=("900" + FORGED,))
    with ServeProcess(config) as serve:
        run(AsteriskPeer().call(serve.port, asterisk_headers(**hostile)))
        run(Unreadable().call(serve.port, asterisk_headers(script="outcome", extension="s", **hostile)))
        run(AsteriskPeer().call(serve.port, asterisk_headers(script="nosuch" + FORGED, **hostile)))
        serve.wait_for("channel not readable")
        serve.wait_for("unknown AGI script")
        assert serve.stop() == 0
        log = serve.log
    for separator in ("\r", "\x85", "\u2028", "\u2029"):
        assert separator not in log
    lines = log.split("\n")
    assert all(LINE_START.match(line) for line in lines), lines
    assert sum("call script=route" in line for line in lines) == 1
