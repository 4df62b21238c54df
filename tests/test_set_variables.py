"""Setting many variables in one round trip (``EXEC MSet``), proven through
Asterisk's two parsers: the AGI command line, then MSet's argument splitter."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asterisk_peer import AsteriskPeer, CallResult, asterisk_headers, mset, parse_args, route_call
from conftest import agi_server, make_config, run
from crmlookup.local_directory import import_csv_text
from crmlookup.local_directory.directory import open_connection
from dialplan import CONTRACT_VARIABLES
from fastagi_server import commands

HOSTILE = [
    'O\'Brien "The Boss" \\ & Co',
    "a,b",
    "a(b",
    "a)b,c",
    "[x,y",
    "]",
    "(((",
    "a=b=c",
    "=",
    ",",
    "\\",
    "trailing backslash \\",
    '"',
    '\\"',
    '",CRM_TARGET=PJSIP/666',
    "x,CRM_ROUTE_STATUS=OWNER",
    "PJSIP/101&PJSIP/666,tT",
    "Line one\nEXEC System rm -rf /\n",
    "tab\there\rcr\x00nul",
    "Łódź — 東京 😀",
    "",
    "   ",
    " leading and trailing ",
]


def apply(lines: list[str], start: dict[str, str] | None = None) -> CallResult:
    """Run ``lines`` through the Asterisk model as a PBX would, return what it set."""
    peer = AsteriskPeer()
    result = CallResult(variables=dict(start or {}))
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x00" not in line
        assert len(line.encode("utf-8")) <= commands.MAX_COMMAND_BYTES
        reply = peer.reply(parse_args(line), result)
        assert reply.startswith("200 result="), (line, reply)
    return result


def contract(values: list[str]) -> dict[str, str]:
    return {name: values[i % len(values)] for i, name in enumerate(CONTRACT_VARIABLES)}


@pytest.mark.parametrize("value", HOSTILE)
def test_each_hostile_value_round_trips(value):
    variables = contract([value, "OWNER", value + value])
    lines = commands.set_variables(variables)
    assert apply(lines).variables == {name: commands.clean(v) for name, v in variables.items()}
    assert len(lines) == 1 and lines[0].startswith('EXEC MSet "')


def test_all_hostile_values_in_one_command():
    variables = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    lines = commands.set_variables(variables)
    assert len(lines) == 1
    assert parse_args(lines[0])[:2] == ["EXEC", "MSet"] and len(parse_args(lines[0])) == 3
    assert apply(lines).variables == {name: commands.clean(v) for name, v in variables.items()}


# Text weighted towards everything either parser treats specially.
SPECIALS = st.sampled_from(list('\\",()[]=$ {}|&;\t\r\n\x00') + ["é", "東", "😀", "${X}", "$[1]"])
VALUES = st.lists(st.one_of(SPECIALS, st.text(max_size=5)), max_size=40).map("".join) | st.text(max_size=600)


@settings(max_examples=400)
@given(st.lists(VALUES, min_size=1, max_size=15))
def test_any_values_round_trip_in_few_commands(values):
    variables = {f"CRM_V{i}": v for i, v in enumerate(values)}
    lines = commands.set_variables(variables)
    result = apply(lines)
    assert result.variables == {name: commands.clean(v) for name, v in variables.items()}
    for line in lines:
        argv = parse_args(line)
        if argv[0] == "EXEC":
            assert argv[1] == "MSet" and len(argv) == 3 and "$" not in line
        else:
            assert argv[:2] == ["SET", "VARIABLE"] and len(argv) == 4
    # A single command unless a value needs SET VARIABLE or the line is full.
    dollars = sum("$" in commands.clean(v) for v in values)
    execs = [line for line in lines if line.startswith("EXEC")]
    assert len(lines) - len(execs) >= dollars
    if sum(len(line.encode()) for line in execs) < commands.MAX_COMMAND_BYTES:
        assert len(execs) <= 1  # they would have fitted in one


def test_the_contract_is_one_round_trip():
    from dialplan import RouteDecision, RouteStatus

    lines = commands.set_variables(RouteDecision(RouteStatus.NOMATCH, reason="caller not in the CRM").channel_variables())
    assert len(lines) == 1
    assert [name for name, _ in apply(lines).assignments] == list(CONTRACT_VARIABLES)


def test_long_values_are_split_across_commands_within_the_line_limit():
    # 512 quotes become 2048 bytes on the wire: too long for one MSet line.
    variables = contract(['"' * 2000, "x" * 2000, "é" * 2000, "(" * 2000])
    lines = commands.set_variables(variables)
    assert 1 < len(lines) <= len(variables)
    assert max(len(line.encode()) for line in lines) <= commands.MAX_COMMAND_BYTES
    assert apply(lines).variables == {name: commands.clean(v) for name, v in variables.items()}
    # The worst value goes alone through SET VARIABLE, which escapes once only.
    assert any(line.startswith("SET VARIABLE") for line in lines)


def test_at_most_98_pairs_per_mset():
    variables = {f"N{i}": str(i) for i in range(250)}
    lines = commands.set_variables(variables)
    pair_counts = [len(mset(parse_args(line)[2])) for line in lines]
    assert max(pair_counts) <= commands.MAX_MSET_PAIRS and sum(pair_counts) == 250
    assert apply(lines).variables == variables


def test_the_99th_pair_would_be_taken_raw():
    """Why the bound: MSet hands its 99th argument over unsplit."""
    data = ",".join(f"N{i}={i}" for i in range(100))
    got = mset(data)
    assert len(got) == 99 and got["N98"] == "98,N99=99"
    with pytest.raises(ValueError):
        commands.mset([(f"N{i}", "v") for i in range(99)])
    with pytest.raises(ValueError):
        commands.mset([])


def test_without_application_escaping_values_would_leak():
    """The model catches what the escaping prevents (so the tests above can fail)."""
    assert mset("A=a,b,B=x") == {"A": "a", "B": "x"}
    assert mset("A=a(b,B=x") == {"A": "a(b,B=x"}
    assert mset('A=a"b,B=x') == {"A": 'ab,B=x'}
    assert mset("A=" + commands.app_argument("a(b") + ",B=x") == {"A": "a(b", "B": "x"}


class TestAgiExecFull:
    """With ``AGIEXECFULL=yes`` Asterisk substitutes ``${...}`` in EXEC data."""

    EVIL = ["${SHELL(touch /tmp/owned)}", "$[1+1]", "a$b", "${CHANNEL}", "\\${X}"]

    def test_the_model_would_evaluate_exec_data(self):
        result = apply(['EXEC Set "X=${SHELL(id)}"'], {"AGIEXECFULL": "yes"})
        assert result.evaluated == ["${SHELL(id)}"]

    @pytest.mark.parametrize("value", EVIL)
    def test_values_with_a_dollar_never_go_through_exec(self, value):
        variables = contract(["OWNER", value, "plain"])
        lines = commands.set_variables(variables)
        assert not any("$" in line for line in lines if line.startswith("EXEC"))
        result = apply(lines, {"AGIEXECFULL": "yes"})
        assert result.evaluated == []
        assert {n: result.variables[n] for n in variables} == {n: commands.clean(v) for n, v in variables.items()}
        # Still few round trips: the other values share one MSet.
        assert len(lines) == 1 + sum("$" in v for v in variables.values())

    def test_mset_refuses_a_dollar(self):
        with pytest.raises(ValueError):
            commands.mset([("A", "x"), ("B", "${SHELL(id)}")])

    def test_crm_text_is_not_evaluated_over_tcp(self, tmp_path):
        path = tmp_path / "dollar.sqlite"
        conn = open_connection(path, create=True)
        import_csv_text(
            conn,
            "module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status\n"
            "Leads,L-9,${SHELL(touch /tmp/owned)},+34928777009,u9,$[1+1] (boss),boss@example.com,109,open\n",
            "ES",
        )
        conn.close()

        async def scenario():
            config = make_config({"directory": {"path": str(path)}, "routing": {"default_region": "ES"}})
            async with agi_server(config) as server:
                peer = AsteriskPeer(channel_variables={"AGIEXECFULL": "yes"})
                return await route_call(server.port, peer, caller="+34928777009")

        result = run(scenario())
        assert result.evaluated == []
        v = result.variables
        assert v["CRM_CALLER_NAME"] == "${SHELL(touch /tmp/owned)}"
        assert v["CRM_OWNER_NAME"] == "$[1+1] (boss)"
        assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/109")
        # The owner's device state; then the two values with '$' alone, the rest of the contract in one MSet.
        assert [argv[:2] for argv in result.commands] == [["GET", "FULL"], ["EXEC", "MSet"], ["SET", "VARIABLE"], ["SET", "VARIABLE"]]


def test_mset_on_a_dead_channel_sets_the_contract():
    """Asterisk runs EXEC MSet on a dead channel (after HANGUP), as SET VARIABLE."""

    async def scenario():
        async with agi_server() as server:
            peer = AsteriskPeer(hangup_before_command=0, dead_channel_rejects=True)
            return await peer.call(server.port, asterisk_headers(caller="+34928000000"))

    result = run(scenario())
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert all(name in result.variables for name in CONTRACT_VARIABLES)


def test_mset_cleans_what_it_is_given():
    line = commands.mset([("A", "one\ntwo\x00"), ("B", "x" * 3000)])
    assert "\n" not in line and "\x00" not in line
    assert apply([line]).variables == {"A": "one two ", "B": "x" * commands.MAX_VALUE_BYTES}
