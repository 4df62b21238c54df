"""``server.log_format = "json"``: one JSON object per line, the call's fields as keys, and no
value (a caller name with a newline, a U+2028, quotes) able to break a line or forge one."""

from __future__ import annotations

import json

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import run
from serve_process import ServeProcess

HOSTILE_ID = '1700000000.9\u2028 status=OWNER "x" \u0085'


def test_every_line_is_one_json_object_and_the_call_line_has_its_fields(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text(f'[server]\nlog_format = "json"\n[routing]\ndefault_region = "ES"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    with ServeProcess(config, wait=False) as serve:
        serve.wait_for(r'"message": "listening on 127\.0\.0\.1:\d+')
        serve.port = int(serve.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        result = run(AsteriskPeer().call(serve.port, asterisk_headers(caller="928 000 000", uniqueid=HOSTILE_ID)))
        assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
        serve.wait_for(r'"event": "call"')
        assert serve.stop() == 0
        lines = list(serve.lines)
    entries = [json.loads(line) for line in lines]  # every line: a JSON object
    assert all({"time", "level", "logger"} <= set(entry) for entry in entries)
    call = next(entry for entry in entries if entry.get("event") == "call")
    assert call["logger"] == "crmroute.call" and call["level"] == "INFO"
    assert call["uniqueid"] == HOSTILE_ID and call["status"] == "OWNER"
    assert call["caller"] == "+34928000000" and call["caller_raw"] == "928 000 000"
    assert call["owner_name"] and "@" in call["owner_email"]
    assert call["source"] in ("directory", "cache")
    assert all("\u2028" not in line and "\u0085" not in line for line in lines)
