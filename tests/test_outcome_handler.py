"""``outcome`` over real TCP on loopback, with a peer that speaks as Asterisk does in a hangup handler."""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from asterisk_peer import AsteriskPeer, answered_call_channel, asterisk_headers, header_block, parse_args
from conftest import agi_server, make_config, run, session_lines
from dialplan.outcome import CHANNEL_READINGS
from fastagi_server.app import App

START = time.time() - 60.0
ANSWERED_CHANNEL = answered_call_channel(START)


def outbox_config(tmp_path, **sections):
    data = {"outbox": {"path": str(tmp_path / "outbox.sqlite")}, "routing": {"default_region": "ES"}}
    data.update(sections)
    return make_config(data)


def outcome_headers(uniqueid="1700000000.1", caller="+34928000000", arguments=("900",), **kwargs):
    return asterisk_headers(script="outcome", uniqueid=uniqueid, caller=caller, extension="s", arguments=arguments, **kwargs)


def stored(tmp_path):
    if not (tmp_path / "outbox.sqlite").exists():
        return []
    conn = sqlite3.connect(tmp_path / "outbox.sqlite")
    rows = conn.execute("SELECT call_id, state, payload FROM outcomes ORDER BY id").fetchall()
    conn.close()
    return [(call_id, state, json.loads(payload)) for call_id, state, payload in rows]


def test_answered_call_is_recorded_in_one_round_trip(tmp_path, call_log):
    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            peer = AsteriskPeer(channel_variables=ANSWERED_CHANNEL)
            return await peer.call(server.port, outcome_headers())

    result = run(scenario())
    assert result.closed_by_server
    # One read of the channel; then, once committed, the dialplan is told.
    assert len(result.commands) == 2 and result.commands[1] == ["SET", "VARIABLE", "CRM_OUTCOME", "recorded"]
    argv = result.commands[0]
    assert argv[:3] == ["GET", "FULL", "VARIABLE"] and len(argv) == 4
    assert "${DIALSTATUS:0:64}" in argv[3] and "${CHANNEL(linkedid):0:64}" in argv[3]
    [(call_id, state, o)] = stored(tmp_path)
    assert (call_id, state) == ("1700000000.1", "pending")
    assert o["answered"] and o["answered_extension"] == "101" and o["talk_seconds"] == 42
    assert o["caller_e164"] == "+34928000000" and o["did"] == "900"
    assert o["started_at"] == pytest.approx(START, abs=1e-5) and o["linked_id"] == "1700000000.1"
    assert o["route"] == {"status": "OWNER", "owner_id": "u1001", "module": "Leads", "record_id": "L-1001", "extension": "101", "record_name": "Marta Ruiz"}
    assert o["complete"]
    [line] = session_lines(call_log)
    assert "script=outcome" in line and "outcome=recorded" in line and "answered_by=101" in line


def test_recording_writes_nothing_to_the_crm(tmp_path):
    """No CRM request inline: the directory's call history stays empty until the worker runs."""
    directory = tmp_path / "directory.sqlite"
    from crmlookup.local_directory import import_csv_text, open_connection

    conn = open_connection(directory, create=True)
    import_csv_text(conn, "module,id,name,phones,owner_id\nLeads,L-1,Marta,+34928000000,u1\n", "ES")
    conn.close()
    config = outbox_config(tmp_path, directory={"path": str(directory)})

    async def scenario():
        app = App.from_config(config)
        async with agi_server(app=app) as server:
            await AsteriskPeer(channel_variables={"DIALSTATUS": "NOANSWER"}).call(server.port, outcome_headers())
            before = sqlite3.connect(directory).execute("SELECT count(*) FROM calls").fetchone()[0]
            summary = await App.from_config(config).delivery_worker.flush()
            after = sqlite3.connect(directory).execute("SELECT call_type, record_id FROM calls").fetchall()
            return before, summary, after

    before, summary, after = run(scenario())
    assert before == 0
    assert summary.delivered == 1
    assert after == [("Missed", "L-1")]


def test_the_same_call_twice_is_recorded_once(tmp_path, call_log):
    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            peer = AsteriskPeer(channel_variables=ANSWERED_CHANNEL)
            await peer.call(server.port, outcome_headers())
            await peer.call(server.port, outcome_headers())

    run(scenario())
    assert len(stored(tmp_path)) == 1
    assert "outcome=duplicate" in session_lines(call_log)[-1]


def test_no_crm_variables_still_records_the_call(tmp_path):
    """The caller hung up during route and AGIEXITONHANGUP closed it: no CRM_* on the channel."""

    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            await AsteriskPeer(channel_variables={"DIALSTATUS": ""}).call(server.port, outcome_headers())

    run(scenario())
    [(_, _, o)] = stored(tmp_path)
    assert o["route"]["status"] == "" and not o["answered"] and o["complete"]


@pytest.mark.parametrize("when", [0, 1])
def test_hangup_line_does_not_stop_the_reading(tmp_path, when):
    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            peer = AsteriskPeer(channel_variables=ANSWERED_CHANNEL, hangup_before_command=when)
            return await peer.call(server.port, outcome_headers())

    result = run(scenario())
    assert result.closed_by_server
    [(_, _, o)] = stored(tmp_path)
    assert o["answered"] and o["complete"]


def test_a_value_holding_the_separator_falls_back_to_one_read_each(tmp_path):
    hostile = dict(ANSWERED_CHANNEL, CRM_CALLER_NAME="Evil |~| Name", CRM_RECORD_ID='L-1001")} ${SHELL(id)}')

    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            return await AsteriskPeer(channel_variables=hostile).call(server.port, outcome_headers())

    result = run(scenario())
    reads = result.commands[:-1]
    assert all(argv[:3] == ["GET", "FULL", "VARIABLE"] and len(argv) == 4 for argv in reads)
    assert len(reads) == 1 + len(CHANNEL_READINGS)  # the joined read, then one per reading
    assert result.variables["CRM_OUTCOME"] == "recorded"
    [(_, _, o)] = stored(tmp_path)
    assert o["route"]["record_name"] == "Evil |~| Name"
    assert o["route"]["record_id"] == 'L-1001")} ${SHELL(id)}'
    assert o["answered_extension"] == "101"


def test_long_values_are_cut_by_asterisk_not_by_us(tmp_path):
    """Every reading is bounded in the expression itself, so the reply line stays short."""
    long = dict(ANSWERED_CHANNEL, CRM_CALLER_NAME="x" * 5000, CRM_OWNER_ID="u" * 3000)

    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            return await AsteriskPeer(channel_variables=long).call(server.port, outcome_headers())

    result = run(scenario())
    assert [argv[:2] for argv in result.commands] == [["GET", "FULL"], ["SET", "VARIABLE"]]
    [(_, _, o)] = stored(tmp_path)
    assert o["route"]["record_name"] == "x" * 64 and o["route"]["owner_id"] == "u" * 64


def test_peer_closing_before_the_reply_still_records_from_headers(tmp_path, call_log):
    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(header_block(outcome_headers()))
            await writer.drain()
            await reader.readline()  # the GET FULL VARIABLE
            writer.close()
            # Until the session has recorded and ended (the outbox may still be opening
            # on a busy machine): a wide bound, not a delay guessed to be enough.
            for _ in range(3000):
                try:
                    if server.active_sessions == 0 and stored(tmp_path):
                        break
                except sqlite3.OperationalError:
                    pass  # the file is being created: look again
                await asyncio.sleep(0.01)
            return server.active_sessions

    assert run(scenario()) == 0
    [(call_id, _, o)] = stored(tmp_path)
    assert call_id == "1700000000.1" and not o["complete"] and o["caller_e164"] == "+34928000000"


def test_unusable_unique_id_records_nothing(tmp_path, call_log):
    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            return await AsteriskPeer().call(server.port, outcome_headers(uniqueid="not an id; DROP TABLE"))

    result = run(scenario())
    assert result.closed_by_server
    assert stored(tmp_path) == []
    assert "outcome=IGNORED" in session_lines(call_log)[-1]


def test_an_unwritable_outbox_is_logged_with_the_whole_outcome(tmp_path, caplog):
    (tmp_path / "blocked").write_text("a file where the outbox directory should be")
    config = make_config({"outbox": {"path": str(tmp_path / "blocked" / "outbox.sqlite")}})

    async def scenario():
        async with agi_server(config) as server:
            return await AsteriskPeer(channel_variables=ANSWERED_CHANNEL).call(server.port, outcome_headers())

    result = run(scenario())
    # No fallback route on the dead channel; the dialplan learns the outcome is not on disk.
    assert result.closed_by_server and [argv[:2] for argv in result.commands] == [["GET", "FULL"], ["SET", "VARIABLE"]]
    assert result.variables["CRM_OUTCOME"] == "failed"
    # Kept in memory while the server ran; logged whole when it stopped with the outbox still unusable.
    lost = [r.getMessage() for r in caplog.records if "NOT recorded" in r.getMessage()]
    assert lost and '"call_id": "1700000000.1"' in lost[0]


def test_many_calls_at_once_each_recorded_once(tmp_path):
    async def scenario():
        async with agi_server(outbox_config(tmp_path)) as server:
            calls = [
                AsteriskPeer(channel_variables=ANSWERED_CHANNEL).call(server.port, outcome_headers(uniqueid=f"1700000000.{i % 150}"))
                for i in range(300)
            ]
            await asyncio.gather(*calls)

    run(scenario())
    rows = stored(tmp_path)
    assert len(rows) == 150 and len({call_id for call_id, _, _ in rows}) == 150


def test_classic_agi_process_records_the_outcome(tmp_path):
    """``crmroute-agi outcome`` through the real process: the same handler, the same outbox."""
    config_file = tmp_path / "crmroute.toml"
    config_file.write_text(f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n[routing]\ndefault_region = "ES"\n')
    headers = [(k, v) for k, v in outcome_headers(arguments=()) if k not in ("agi_network", "agi_network_script")]
    headers += [("agi_arg_1", f"--config={config_file}"), ("agi_arg_2", "outcome"), ("agi_arg_3", "900")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastagi_server.stdio", f"--config={config_file}", "outcome", "900"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ},
    )
    peer = AsteriskPeer(channel_variables=ANSWERED_CHANNEL)
    from asterisk_peer import CallResult

    result = CallResult(variables=dict(ANSWERED_CHANNEL))
    proc.stdin.write(header_block(headers))
    proc.stdin.flush()
    commands = []
    while line := proc.stdout.readline():
        argv = parse_args(line.rstrip(b"\n").decode())
        commands.append(argv)
        proc.stdin.write(peer.reply(argv, result).encode() + b"\n")
        proc.stdin.flush()
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert len(commands) == 2 and result.variables["CRM_OUTCOME"] == "recorded"
    [(_, _, o)] = stored(tmp_path)
    assert o["answered"] and o["did"] == "900"


def test_recorded_answers_feed_the_call_history(tmp_path):
    """What the "last agent" rule reads: the extension that last answered this caller."""

    async def scenario():
        app = App.from_config(outbox_config(tmp_path))
        async with agi_server(app=app) as server:
            await AsteriskPeer(channel_variables=dict(ANSWERED_CHANNEL, DIALEDPEERNUMBER="102")).call(server.port, outcome_headers("1700000000.1"))
            await AsteriskPeer(channel_variables={"DIALSTATUS": "NOANSWER"}).call(server.port, outcome_headers("1700000000.2"))
            history = app.call_history()
            return (
                await history.last_answered_extension("+34928000000", 3600),
                await history.last_answered_extension("+34928000099", 3600),
            )

    assert run(scenario()) == ("102", None)


def test_outcomes_are_recorded_even_past_max_sessions(tmp_path):
    """A busy server answers route at once with ERROR, but never turns an outcome away."""

    async def scenario():
        config = outbox_config(tmp_path, server={"max_sessions": 1}, limits={"reply_timeout_ms": 3000})
        async with agi_server(config) as server:
            stuck_reader, stuck_writer = await asyncio.open_connection("127.0.0.1", server.port)
            stuck_writer.write(header_block(asterisk_headers(uniqueid="stuck")))
            await stuck_writer.drain()
            await stuck_reader.readline()  # a route session holds the only slot
            result = await AsteriskPeer(channel_variables=ANSWERED_CHANNEL).call(server.port, outcome_headers())
            stuck_writer.close()
            return result

    result = run(scenario())
    assert [argv[:3] for argv in result.commands] == [["GET", "FULL", "VARIABLE"], ["SET", "VARIABLE", "CRM_OUTCOME"]]
    [(call_id, _, o)] = stored(tmp_path)
    assert call_id == "1700000000.1" and o["answered"]
