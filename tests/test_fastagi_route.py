"""``route`` over real TCP on loopback, with a peer that speaks as Asterisk."""

import asyncio

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers, mset, route_call
from conftest import agi_server, make_config, run, session_lines
from crmlookup.local_directory import LocalDirectory, import_csv_text
from crmlookup.local_directory.directory import open_connection
from dialplan import CONTRACT_VARIABLES
from fastagi_server.app import App
from fastagi_server.config import Config

ES = {"routing": {"default_region": "ES"}}


def assert_full_contract(variables: dict[str, str]) -> None:
    missing = [name for name in CONTRACT_VARIABLES if name not in variables]
    assert not missing, f"contract variables not set: {missing}"


def test_demo_caller_rings_the_owner(call_log):
    async def scenario():
        async with agi_server() as server:
            return await route_call(server.port, caller="+34928000000")

    result = run(scenario())
    v = result.variables
    assert_full_contract(v)
    assert v["CRM_ROUTE_STATUS"] == "OWNER"
    assert v["CRM_TARGET"] == "PJSIP/101"
    assert v["CRM_EXTENSION"] == "101"
    assert (v["CRM_OWNER_ID"], v["CRM_OWNER_NAME"], v["CRM_OWNER_EMAIL"]) == ("u1001", "Ana García", "ana.garcia@example.com")
    assert (v["CRM_MODULE"], v["CRM_RECORD_ID"], v["CRM_CALLER_NAME"]) == ("Leads", "L-1001", "Marta Ruiz")
    assert int(v["CRM_LOOKUP_MS"]) >= 0
    assert result.closed_by_server
    # One command, one reply: the owner's device state, then the whole contract in one EXEC MSet.
    assert result.commands[0] == ["GET", "FULL", "VARIABLE", "${DEVICE_STATE(PJSIP/101)}"]
    assert len(result.commands) == 2 and result.commands[1][:2] == ["EXEC", "MSet"]
    assert list(mset(result.commands[1][2])) == list(CONTRACT_VARIABLES)
    lines = session_lines(call_log)
    assert len(lines) == 1
    assert "status=OWNER" in lines[0] and "target=PJSIP/101" in lines[0] and "uniqueid=1700000000.1" in lines[0]


@pytest.mark.parametrize(
    "caller, status, target",
    [
        ("928000001", "OWNER", "PJSIP/103"),  # closed lead skipped, contact owner
        ("0034928000002", "OWNER", "PJSIP/102"),  # open deal beats the contact
        ("+34 928 00 00 04", "UNMAPPED", ""),  # account owner without extension
        ("928000005", "OWNER", "PJSIP/104&PJSIP/105"),  # one owner, two phones ring together
        ("928999999", "NOMATCH", ""),
        ("anonymous", "NOMATCH", ""),
        ("", "NOMATCH", ""),
        ("not-a-number", "NOMATCH", ""),
    ],
)
def test_statuses(caller, status, target):
    async def scenario():
        async with agi_server(make_config(ES)) as server:
            return await route_call(server.port, caller=caller)

    v = run(scenario()).variables
    assert_full_contract(v)
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == (status, target)
    if status == "NOMATCH":
        assert all(v[name] == "" for name in ("CRM_OWNER_ID", "CRM_MODULE", "CRM_EXTENSION"))


def test_unknown_caller_gets_nomatch_and_every_variable():
    async def scenario():
        async with agi_server() as server:
            return await route_call(server.port, caller="+12025550199")

    v = run(scenario()).variables
    assert_full_contract(v)
    assert v["CRM_ROUTE_STATUS"] == "NOMATCH"
    assert v["CRM_TARGET"] == ""


def test_unknown_script_gets_error(call_log):
    async def scenario():
        async with agi_server() as server:
            return await route_call(server.port, script="rotue")

    v = run(scenario()).variables
    assert_full_contract(v)
    assert v["CRM_ROUTE_STATUS"] == "ERROR"
    assert "rotue" in v["CRM_ROUTE_REASON"]
    assert any("unknown AGI script 'rotue'" in r.getMessage() for r in call_log.records)


def test_did_from_argument_beats_headers():
    from fastagi_server.handlers.route import inbound_call
    from fastagi_server.environment import AgiEnvironment

    class Session:
        env = AgiEnvironment(dict(asterisk_headers(dnid="111", arguments=("34928555000",))))
        arguments = env.arguments

    assert inbound_call(Session()).did == "34928555000"


@pytest.mark.parametrize("when", [0, 1, 5])
def test_hangup_mid_session_still_sets_variables_and_closes(when, call_log):
    """HANGUP before the first command, after it, or midway: the variables
    still land (allowed on a dead channel) and the server closes at once."""

    async def scenario():
        async with agi_server() as server:
            peer = AsteriskPeer(hangup_before_command=when)
            result = await peer.call(server.port, asterisk_headers(caller="+34928000000"))
            await asyncio.sleep(0.05)
            return result, server.active_sessions

    result, active = run(scenario())
    assert result.closed_by_server
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert_full_contract(result.variables)
    assert active == 0
    assert any("status=OWNER" in line for line in session_lines(call_log))


def test_peer_closing_mid_session_is_logged_and_forgotten(call_log):
    async def scenario():
        async with agi_server() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"".join(f"{k}: {v}\n".encode() for k, v in asterisk_headers()) + b"\n")
            await writer.drain()
            await reader.readline()  # the first command
            writer.close()
            await asyncio.sleep(0.1)
            return server.active_sessions

    assert run(scenario()) == 0
    assert any("session-ended" in line and "peer closed" in line for line in session_lines(call_log))


HOSTILE_CSV = """module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status
Contacts,C-1,"Evil ""Name"" \\ x
EXEC System rm -rf /",+34928777001,u-evil,"Boss"" \\
EXEC System touch /tmp/pwned",evil@example.com,"101&PJSIP/666,tT",open
Contacts,C-2,Plain,+34928777002,u-ok,"Ok \\",ok@example.com,"666,tT;102",open
"""


@pytest.fixture
def hostile_directory(tmp_path):
    """A directory holding extensions with dial-string syntax. The import refuses
    them; a file written by another tool can still hold them, so they go in by SQL."""
    from crmlookup.errors import DirectoryImportError

    path = tmp_path / "hostile.sqlite"
    conn = open_connection(path, create=True)
    with pytest.raises(DirectoryImportError, match="is not an extension"):
        import_csv_text(conn, HOSTILE_CSV, "ES")
    import_csv_text(conn, HOSTILE_CSV.replace('"101&PJSIP/666,tT"', "101").replace('"666,tT;102"', "102"), "ES")
    conn.execute("UPDATE users SET extensions = ? WHERE id = 'u-evil'", ("101&PJSIP/666,tT",))
    conn.execute("UPDATE users SET extensions = ? WHERE id = 'u-ok'", ("666,tT 102",))
    conn.commit()
    conn.close()
    return path


def test_hostile_crm_text_never_becomes_a_command(hostile_directory):
    async def scenario(caller):
        config = make_config({"directory": {"path": str(hostile_directory)}})
        async with agi_server(config) as server:
            return await route_call(server.port, caller=caller)

    evil = run(scenario("+34928777001"))
    # One line on the wire: an EXEC MSet with exactly one data argument, which
    # Asterisk's application parser splits into exactly the contract's variables.
    wire_lines = evil.raw.decode().split("\n")
    assert wire_lines[-1] == "" and len(wire_lines) == 2
    assert wire_lines[0].startswith('EXEC MSet "CRM_ROUTE_STATUS='), wire_lines[0]
    assert len(evil.commands) == 1 and len(evil.commands[0]) == 3
    assert list(mset(evil.commands[0][2])) == list(CONTRACT_VARIABLES)
    v = evil.variables
    assert v["CRM_CALLER_NAME"] == 'Evil "Name" \\ x EXEC System rm -rf /'
    assert v["CRM_OWNER_NAME"] == 'Boss" \\ EXEC System touch /tmp/pwned'
    # An extension with dial-string syntax is never dialled.
    assert v["CRM_ROUTE_STATUS"] == "UNMAPPED"
    assert v["CRM_TARGET"] == ""

    plain = run(scenario("+34928777002")).variables
    assert plain["CRM_TARGET"] == "PJSIP/102"  # the bad extension skipped, the good one kept


def test_routes_many_calls_at_once():
    async def scenario():
        async with agi_server(make_config(ES)) as server:
            callers = ["+34928000000", "928000001", "928999999"] * 30
            return await asyncio.gather(*(route_call(server.port, caller=c, uniqueid=f"1.{i}") for i, c in enumerate(callers)))

    results = run(scenario())
    statuses = [r.variables["CRM_ROUTE_STATUS"] for r in results]
    assert statuses == ["OWNER", "OWNER", "NOMATCH"] * 30


def test_over_capacity_answers_at_once_with_error(call_log):
    async def scenario():
        config = make_config({"server": {"max_sessions": 1}, "limits": {"reply_timeout_ms": 3000}})
        async with agi_server(config) as server:
            # The first session waits on a peer that never answers its first command.
            stuck_reader, stuck_writer = await asyncio.open_connection("127.0.0.1", server.port)
            stuck_writer.write(b"".join(f"{k}: {v}\n".encode() for k, v in asterisk_headers(uniqueid="stuck")) + b"\n")
            await stuck_writer.drain()
            await stuck_reader.readline()
            loop = asyncio.get_running_loop()
            started = loop.time()
            busy = await route_call(server.port, uniqueid="second")
            elapsed = loop.time() - started
            stuck_writer.close()
            return busy, elapsed

    busy, elapsed = run(scenario())
    assert busy.variables["CRM_ROUTE_STATUS"] == "ERROR"
    assert "busy" in busy.variables["CRM_ROUTE_REASON"]
    assert_full_contract(busy.variables)
    assert elapsed < 2.0  # answered without waiting for the stuck session's reply timeout


def test_peer_outside_allow_list_is_refused(call_log):
    async def scenario():
        config = make_config({"server": {"allowed_peers": ["192.0.2.0/24"]}})
        async with agi_server(config) as server:
            return await route_call(server.port)

    result = run(scenario())
    assert result.commands == [] and result.variables == {}
    assert any("refused" in r.getMessage() and "127.0.0.1" in r.getMessage() for r in call_log.records)


def test_shutdown_lets_sessions_in_flight_finish():
    async def scenario():
        async with agi_server() as server:
            peer = AsteriskPeer(reply_delay=0.2)  # the contract's one command takes 0.2 s
            call = asyncio.create_task(peer.call(server.port, asterisk_headers()))
            await asyncio.sleep(0.05)
            port = server.port
            await server.shutdown(grace_ms=3000)
            result = await call
            refused = None
            try:
                await asyncio.open_connection("127.0.0.1", port)
            except OSError as exc:
                refused = exc
            return result, refused

    result, refused = run(scenario())
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert refused is not None


def test_reload_swaps_the_app_and_keeps_old_on_error(tmp_path):
    config_file = tmp_path / "crmroute.toml"
    config_file.write_text('[routing.owner_extensions]\n"u1001" = ["201"]\n')

    async def scenario():
        async with agi_server(App.from_config(Config()).config) as server:
            before = (await route_call(server.port)).variables["CRM_TARGET"]
            assert await server.reload(str(config_file))
            after = (await route_call(server.port)).variables["CRM_TARGET"]
            config_file.write_text("[routing]\ndeadline_ms = 'soon'\n")
            assert not await server.reload(str(config_file))
            kept = (await route_call(server.port)).variables["CRM_TARGET"]
            return before, after, kept

    assert run(scenario()) == ("PJSIP/101", "PJSIP/201", "PJSIP/201")


def test_local_directory_lookup_runs_off_the_event_loop():
    """The SQLite read happens on the directory's own thread."""
    import threading

    directory = LocalDirectory.open(None)
    seen = []
    original = directory.lookup_sync

    def spy(*args):
        seen.append(threading.current_thread().name)
        return original(*args)

    directory.lookup_sync = spy

    async def scenario():
        from crmlookup.phone import normalise

        await directory.lookup(normalise("+34928000000", "ES"), ["Leads"])
        await directory.aclose()

    run(scenario())
    assert seen and seen[0].startswith("local-directory")


def test_the_call_line_names_the_owner_the_source_and_the_normalised_caller(call_log):
    """``owner u1002`` alone says nothing to a reader of the log; a grep for
    ``+34928...`` must find a caller Asterisk sent as ``928...``."""

    async def scenario():
        async with agi_server(make_config(ES)) as server:
            await route_call(server.port, caller="928000000", uniqueid="1.1")
            await route_call(server.port, caller="+34928000000", uniqueid="1.2")

    run(scenario())
    first, second = session_lines(call_log)
    assert "caller=+34928000000 " in first and "caller_raw=928000000" in first
    assert 'owner=u1001 owner_name="Ana García" owner_email=ana.garcia@example.com' in first
    assert "source=directory" in first and "source=cache" in second
    assert "caller_raw" not in second
