"""The AGI wire format: headers, replies, quoting."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asterisk_peer import asterisk_headers, parse_args
from fastagi_server import commands
from fastagi_server.environment import AgiEnvironment, parse_header_block, parse_header_line
from fastagi_server.errors import AgiDeadChannel, AgiInvalidCommand, AgiProtocolError, AgiUsageError
from fastagi_server.replies import parse_reply


def env_of(**kwargs) -> AgiEnvironment:
    return AgiEnvironment(dict(asterisk_headers(**kwargs)))


class TestHeaders:
    def test_header_line_with_empty_value(self):
        assert parse_header_line("agi_accountcode: ") == ("agi_accountcode", "")
        assert parse_header_line("agi_accountcode:") == ("agi_accountcode", "")

    def test_value_keeps_colons_and_inner_spaces(self):
        assert parse_header_line("agi_request: agi://127.0.0.1:4573/route?a=1") == ("agi_request", "agi://127.0.0.1:4573/route?a=1")
        assert parse_header_line("agi_calleridname: Ana  María ") == ("agi_calleridname", "Ana  María ")

    @pytest.mark.parametrize("line", ["no colon here", ": value", "bad key: x", "\x00\xff"])
    def test_malformed_line(self, line):
        with pytest.raises(AgiProtocolError):
            parse_header_line(line)

    def test_typed_fields(self):
        env = env_of(script="route?did=34928111222&x=1", caller="+34928000000", arguments=("900", "b"))
        assert env.script == "route"
        assert env.query == {"did": "34928111222", "x": "1"}
        assert env.arguments == ("900", "b")
        assert env.caller_number == "+34928000000"
        assert env.unique_id == "1700000000.1"
        assert env.version == "22.10.0"
        assert env.did == "34928111222"

    def test_did_over_local_channel_is_the_extension(self):
        env = env_of(dnid="unknown", extension="34928555000")
        assert env.did == "34928555000"

    def test_did_over_pjsip_is_the_dnid(self):
        env = env_of(dnid="34928555111", extension="s")
        assert env.did == "34928555111"

    def test_unknown_keys_are_kept(self):
        env = AgiEnvironment({"agi_network_script": "route", "agi_x_custom": "1"})
        assert env.headers["agi_x_custom"] == "1"

    def test_script_from_request_when_network_script_missing(self):
        env = AgiEnvironment({"agi_request": "agi://10.0.0.1:4573/outcome?a=b"})
        assert env.script == "outcome"

    def test_withheld_caller(self):
        assert env_of(caller="unknown").caller_number == ""


HEADER_TEXT = st.text(alphabet=st.sampled_from(list("agi_xy: \t\r:é") + ["\n"]), max_size=60)


@settings(max_examples=500)
@given(HEADER_TEXT)
def test_header_block_parses_as_line_by_line(block):
    """The one-pass block parser agrees with the line parser, errors included
    (a key given twice is one: Asterisk never repeats one)."""
    try:
        pairs = [parse_header_line(line[:-1] if line.endswith("\r") else line) for line in block.split("\n")] if block else []
        expected = dict(pairs)
        if len(expected) != len(pairs):
            expected = AgiProtocolError
    except AgiProtocolError:
        expected = AgiProtocolError
    try:
        got = parse_header_block(block)
    except AgiProtocolError:
        got = AgiProtocolError
    assert got == expected


class TestReplies:
    def test_plain(self):
        reply = parse_reply("200 result=1")
        assert (reply.result, reply.data, reply.endpos) == (1, None, None)

    def test_data_with_parentheses(self):
        assert parse_reply("200 result=1 (a (b) c)").data == "a (b) c"

    def test_endpos(self):
        reply = parse_reply("200 result=0 endpos=8000")
        assert (reply.result, reply.endpos) == (0, 8000)
        reply = parse_reply("200 result=49 (dtmf) endpos=1234")
        assert (reply.result, reply.data, reply.endpos) == (49, "dtmf", 1234)

    def test_negative_result(self):
        assert parse_reply("200 result=-1").result == -1

    def test_errors(self):
        with pytest.raises(AgiInvalidCommand):
            parse_reply("510 Invalid or unknown command")
        with pytest.raises(AgiDeadChannel):
            parse_reply("511 Command Not Permitted on a dead channel or intercept routine")
        with pytest.raises(AgiUsageError) as usage:
            parse_reply("520-Invalid command syntax.  Proper usage follows:\nUsage: x\n520 End of proper usage.")
        assert "Usage: x" in usage.value.message
        with pytest.raises(AgiProtocolError):
            parse_reply("garbage")
        with pytest.raises(AgiProtocolError):
            parse_reply("200 result=x")


HOSTILE = [
    'O\'Brien "The Boss" \\ & Co',
    "Line one\nEXEC System rm -rf /\n",
    "trailing backslash \\",
    '"',
    "\\\"",
    "PJSIP/101&PJSIP/666,tT",
    "${SHELL(id)} $[1+1]",
    "tab\there\rcr\x00nul",
    "Łódź — 東京 😀",
    "",
    "   ",
]


class TestQuoting:
    @pytest.mark.parametrize("value", HOSTILE)
    def test_set_variable_round_trips_through_parse_args(self, value):
        line = commands.set_variable("CRM_OWNER_NAME", value)
        assert "\n" not in line and "\r" not in line and "\x00" not in line
        assert parse_args(line) == ["SET", "VARIABLE", "CRM_OWNER_NAME", commands.clean(value)]

    @settings(max_examples=300)
    @given(st.text(max_size=600))
    def test_any_text_is_one_argument(self, value):
        line = commands.set_variable("X", value)
        argv = parse_args(line)
        assert argv == ["SET", "VARIABLE", "X", commands.clean(value)]
        assert len(line.encode()) < commands.MAX_COMMAND_BYTES

    def test_long_value_is_cut_on_a_character_boundary(self):
        value = "é" * 1000
        cleaned = commands.clean(value)
        assert len(cleaned.encode()) <= commands.MAX_VALUE_BYTES
        assert cleaned == "é" * (commands.MAX_VALUE_BYTES // 2)

    def test_verbose_level_is_clamped(self):
        assert parse_args(commands.verbose("hi\nthere", 9)) == ["VERBOSE", "hi there", "4"]

    @pytest.mark.parametrize("name", ["", "1ABC", "A B", "A\nB", "X;Y", "A" * 81])
    def test_bad_variable_names_are_refused(self, name):
        with pytest.raises(ValueError):
            commands.set_variable(name, "v")

    def test_get_full_variable_only_simple_expressions(self):
        assert parse_args(commands.get_full_variable("${DEVICE_STATE(PJSIP/101)}")) == ["GET", "FULL", "VARIABLE", "${DEVICE_STATE(PJSIP/101)}"]
        for bad in ("${SHELL(rm -rf /)}", "${SHELL(id)}", "${SYSTEM(id)}", "${X} ${Y}", "$[1+1]", "${A(\")}"):
            with pytest.raises(ValueError):
                commands.get_full_variable(bad)

    def test_overlong_command_is_refused(self):
        with pytest.raises(ValueError):
            commands.finish("VERBOSE " + "x" * 3000)
