"""The routing policy over real TCP: each rule and each fallback step, table-driven.

A real FastAGI server routes real calls from a peer that answers device-state
questions as Asterisk 22 does; the CRM is a real SQLite directory file.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from datetime import datetime, UTC

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers, contract_commands
from conftest import agi_server, make_config, run, session_lines
from crmlookup.local_directory import import_csv_text
from crmlookup.local_directory.directory import open_connection
from dialplan import CONTRACT_VARIABLES
from routing_fixtures import RecordedAnswers, build_app

DIRECTORY_CSV = """module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status
Leads,L-1,Chain Caller,+34928100001,u1,Ana,ana@example.com,101,open
Contacts,C-1,Chain Caller,+34928100001,u2,Ben,ben@example.com,102,
Accounts,A-1,Chain Co,+34928100001,u3,Carla,carla@example.com,103,
Leads,L-2,Unmapped Lead,+34928100002,u4,Dev,dev@example.com,,open
Contacts,C-2,Unmapped Lead,+34928100002,u2,Ben,ben@example.com,102,
Contacts,C-3,Nobody's,+34928100003,,,,,
Contacts,C-4,Queue Client,+34928100004,u6,Fay,fay@example.com,,
Contacts,C-5,Two Phones,+34928100005,u5,Eva,eva@example.com,104;105,
Leads,L-6,Loyal,+34928100006,u1,Ana,ana@example.com,101,open
Contacts,C-6,Loyal,+34928100006,u1,Ana,ana@example.com,101,
"""

CHAIN = "+34928100001"  # a lead of Ana (101), a contact of Ben (102), an account of Carla (103)
UNMAPPED = "+34928100002"  # a lead of Dev (no extension), a contact of Ben
NO_OWNER = "+34928100003"
SHARED_EXT = "+34928100004"  # Fay, on extension 600 with Gil
TWO_PHONES = "+34928100005"  # Eva on 104 and 105
LOYAL = "+34928100006"  # Ana owns both the lead and the contact
UNKNOWN = "+34928199999"

SALES_DID = "+34928555100"
SUPPORT_DID = "+34928555200"

MONDAY_10 = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)  # 10:00 in the Canaries too (UTC+0 in winter)
MONDAY_20 = datetime(2025, 1, 6, 20, 0, tzinfo=UTC)
SATURDAY_10 = datetime(2025, 1, 11, 10, 0, tzinfo=UTC)

ROUTING = {
    "default_region": "ES",
    "owner_extensions": {"u6": ["600"], "u7": ["600"], "Boss@Example.com": ["100"]},
    "senior_manager": "boss@example.com",
    "teams": {"floor": {"extensions": ["201", "202"]}, "desk": {"extensions": ["301", "302"], "hours": "office"}},
    "team": "floor",
    "hours": {"office": {"time_zone": "Atlantic/Canary", "open": ["mon-fri 09:00-18:00"]}},
    "policies": {
        "sales": {"dids": [SALES_DID, "8100"]},
        "support": {
            "dids": [SUPPORT_DID, "8200"],
            "lookup_order": ["LastAgent", "Contacts", "Accounts"],
            "team": "desk",
            "on_unavailable": ["team"],
        },
    },
}


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "directory.sqlite"
    conn = open_connection(path, create=True)
    import_csv_text(conn, DIRECTORY_CSV, "ES")
    conn.close()
    return str(path)


def merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Case:
    id: str
    caller: str
    status: str
    target: str
    asked: list[str] = field(default_factory=list)  # devices whose state was asked, in order
    states: dict[str, str] = field(default_factory=dict)
    did: str = SALES_DID
    routing: dict = field(default_factory=dict)
    now: datetime = MONDAY_10
    answered: list[tuple[str, str, float]] = field(default_factory=list)  # (caller, extension, seconds ago)
    reason_has: list[str] = field(default_factory=list)
    owner: str = ""  # CRM_OWNER_ID expected, when the case says
    record: str = ""  # CRM_RECORD_ID expected, when the case says
    extension_states: dict[str, str] = field(default_factory=dict)
    policy: str = ""  # the policy the log line names, when the case says
    limits: dict = field(default_factory=dict)


def route(directory: str, case: Case, peer: AsteriskPeer | None = None):
    config = make_config({"routing": merged(ROUTING, case.routing), "directory": {"path": directory}, "limits": case.limits})
    history = RecordedAnswers()
    for caller, extension, ago in case.answered:
        history.answered(caller, extension, ago)
    peer = peer or AsteriskPeer(device_states=case.states, extension_states=case.extension_states)

    async def scenario():
        async with agi_server(app=build_app(config, history=history, now=case.now)) as server:
            return await peer.call(server.port, asterisk_headers(caller=case.caller, arguments=(case.did,)))

    return run(scenario())


def asked_devices(result) -> list[str]:
    return [argv[3] for argv in result.commands if argv[:3] == ["GET", "FULL", "VARIABLE"]]


def device(asked: str) -> str:
    """The question for ``101`` (a PJSIP extension) or ``IAX2/101`` (a device)."""
    return "${DEVICE_STATE(%s)}" % (asked if "/" in asked else f"PJSIP/{asked}")


CASES = [
    # The first rule's owner is free: one question, the owner rings.
    Case("owner-free", CHAIN, "OWNER", "PJSIP/101", ["101"], {"PJSIP/101": "NOT_INUSE"}, reason_has=["owner of Leads L-1"], owner="u1", record="L-1"),
    Case("owner-unknown-state-rings", CHAIN, "OWNER", "PJSIP/101", ["101"], {}, owner="u1"),
    # Owner unavailable: the owner of the next matched record, then the next.
    Case(
        "busy-owner-next-match",
        CHAIN, "OWNER", "PJSIP/102", ["101", "102"], {"PJSIP/101": "INUSE"},
        reason_has=["Leads L-1 owner u1: 101 INUSE", "owner of Contacts C-1"], owner="u2", record="C-1",
    ),
    Case(
        "two-busy-third-match",
        CHAIN, "OWNER", "PJSIP/103", ["101", "102", "103"], {"PJSIP/101": "BUSY", "PJSIP/102": "UNAVAILABLE"},
        reason_has=["101 BUSY", "102 UNAVAILABLE", "owner of Accounts A-1"], owner="u3", record="A-1",
    ),
    # Every owner unavailable: the team ring group, only its free phones.
    Case(
        "all-owners-busy-team",
        CHAIN, "SHARED", "PJSIP/201", ["101", "102", "103", "201", "202"],
        {"PJSIP/101": "INVALID", "PJSIP/102": "RINGING", "PJSIP/103": "ONHOLD", "PJSIP/202": "INUSE"},
        reason_has=["team floor"], owner="u1", record="L-1",
    ),
    Case(
        "everyone-busy-no-target",
        CHAIN, "UNMAPPED", "", ["101", "102", "103", "201", "202"],
        {"PJSIP/101": "INUSE", "PJSIP/102": "INUSE", "PJSIP/103": "INUSE", "PJSIP/201": "BUSY", "PJSIP/202": "RINGINUSE"},
        reason_has=["team floor: 201 BUSY, 202 RINGINUSE", "no one to ring"], owner="u1",
    ),
    # Owner found but unmapped: the senior manager (UNMAPPED names it), not the next owner.
    Case(
        "unmapped-senior-manager",
        UNMAPPED, "UNMAPPED", "PJSIP/100", ["100"], {},
        reason_has=["Leads L-2 owner u4 has no valid extension", "senior manager boss@example.com"], owner="u4", record="L-2",
    ),
    Case(
        "unmapped-senior-busy",
        UNMAPPED, "UNMAPPED", "", ["100"], {"PJSIP/100": "BUSY"},
        reason_has=["senior manager boss@example.com: 100 BUSY", "no one to ring"],
    ),
    Case(
        "unmapped-next-owner-when-configured",
        UNMAPPED, "OWNER", "PJSIP/102", ["102"], {}, routing={"on_unmapped": ["next_owner", "senior_manager"]},
        owner="u2", record="C-2",
    ),
    Case("record-without-owner-senior", NO_OWNER, "UNMAPPED", "PJSIP/100", ["100"], {}, reason_has=["Contacts C-3 has no owner"]),
    Case(
        "unmapped-no-senior-configured",
        UNMAPPED, "UNMAPPED", "", [], {}, routing={"senior_manager": ""}, reason_has=["no one to ring"],
    ),
    # Nothing found: NOMATCH and the dialplan's own queue; nobody is asked about.
    Case("nomatch", UNKNOWN, "NOMATCH", "", [], {}, reason_has=["caller not in the CRM"]),
    # Several owners on one extension: SHARED.
    Case("extension-owned-by-many", SHARED_EXT, "SHARED", "PJSIP/600", ["600"], {}, owner="u6"),
    # One owner, several phones: ring-all across the free ones.
    Case("two-phones-ring-all", TWO_PHONES, "OWNER", "PJSIP/104&PJSIP/105", ["104", "105"], {}, owner="u5"),
    Case("two-phones-one-busy", TWO_PHONES, "OWNER", "PJSIP/105", ["104", "105"], {"PJSIP/104": "INUSE"}),
    # One person is tried once, however many records they own.
    Case("same-owner-tried-once", LOYAL, "SHARED", "PJSIP/201&PJSIP/202", ["101", "201", "202"], {"PJSIP/101": "INUSE"}),
    # The fallback order is configuration.
    Case(
        "unavailable-goes-to-senior",
        CHAIN, "UNMAPPED", "PJSIP/100", ["101", "100"], {"PJSIP/101": "INUSE"}, routing={"on_unavailable": ["senior_manager"]},
    ),
    Case(
        "unavailable-team-before-next-owner",
        CHAIN, "SHARED", "PJSIP/201&PJSIP/202", ["101", "201", "202"], {"PJSIP/101": "INUSE"}, routing={"on_unavailable": ["team", "next_owner"]},
    ),
    Case("unavailable-nothing", CHAIN, "UNMAPPED", "", ["101"], {"PJSIP/101": "INUSE"}, routing={"on_unavailable": []}),
    # Lookup order is configuration.
    Case("lookup-order-accounts-first", CHAIN, "OWNER", "PJSIP/103", ["103"], {}, routing={"lookup_order": ["Accounts", "Leads"]}, record="A-1"),
    # Skip states are configuration: INUSE rings when only UNAVAILABLE skips.
    Case("skip-states-configured", CHAIN, "OWNER", "PJSIP/101", ["101"], {"PJSIP/101": "INUSE"}, routing={"skip_states": ["UNAVAILABLE"]}),
    Case("availability-off", CHAIN, "OWNER", "PJSIP/101", [], {"PJSIP/101": "INUSE"}, routing={"check_availability": False}),
    # The dial template per technology; Local channels ask the hint.
    Case("sip-template", CHAIN, "OWNER", "SIP/101", [], {}, routing={"dial_template": "SIP/{ext}", "check_availability": False}),
    Case("iax2-template-asks-iax2", CHAIN, "OWNER", "IAX2/102", ["IAX2/101", "IAX2/102"], {"IAX2/101": "BUSY"}, routing={"dial_template": "IAX2/{ext}"}),
    # Business hours per owner, with a time zone.
    Case(
        "owner-out-of-hours",
        CHAIN, "OWNER", "PJSIP/102", ["102"], {}, routing={"owner_hours": {"ana@example.com": "office"}}, now=SATURDAY_10,
        reason_has=["Leads L-1 owner u1 out of hours", "owner of Contacts C-1"],
    ),
    Case("owner-in-hours", CHAIN, "OWNER", "PJSIP/101", ["101"], {}, routing={"owner_hours": {"u1": "office"}}, now=MONDAY_10),
    Case("owner-evening", CHAIN, "OWNER", "PJSIP/102", ["102"], {}, routing={"owner_hours": {"u1": "office"}}, now=MONDAY_20),
    # ... and per team.
    Case(
        "team-out-of-hours",
        CHAIN, "UNMAPPED", "", ["101", "102", "103"], {"PJSIP/101": "INUSE", "PJSIP/102": "INUSE", "PJSIP/103": "INUSE"},
        routing={"team": "desk"}, now=SATURDAY_10, reason_has=["team desk out of hours"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_and_fallback_table(directory, case):
    result = route(directory, case)
    v = result.variables
    assert [name for name in CONTRACT_VARIABLES if name not in v] == []
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == (case.status, case.target), v["CRM_ROUTE_REASON"]
    assert asked_devices(result) == [device(a) for a in case.asked]
    assert v["CRM_EXTENSION"] == (case.target.split("&")[0].split("/")[1] if case.target else "")
    for text in case.reason_has:
        assert text in v["CRM_ROUTE_REASON"], v["CRM_ROUTE_REASON"]
    if case.owner:
        assert v["CRM_OWNER_ID"] == case.owner
    if case.record:
        assert v["CRM_RECORD_ID"] == case.record
    assert len(v["CRM_ROUTE_REASON"]) <= 200


LOCAL = {"dial_template": "Local/{ext}@agents/n"}

LOCAL_CASES = [
    Case("local-asks-extension-state", CHAIN, "OWNER", "Local/102@agents/n", ["${EXTENSION_STATE(101@agents)}", "${EXTENSION_STATE(102@agents)}"],
         routing=LOCAL, extension_states={"101@agents": "HOLDINUSE"}),
    Case("local-explicit-device-state", CHAIN, "OWNER", "Local/102@agents/n", ["${DEVICE_STATE(PJSIP/101)}", "${DEVICE_STATE(PJSIP/102)}"],
         routing={**LOCAL, "state_template": "DEVICE_STATE(PJSIP/{ext})"}, states={"PJSIP/101": "UNAVAILABLE"}),
]


@pytest.mark.parametrize("case", LOCAL_CASES, ids=[c.id for c in LOCAL_CASES])
def test_local_channels_ask_the_hint_or_the_configured_device(directory, case):
    result = route(directory, case)
    assert (result.variables["CRM_ROUTE_STATUS"], result.variables["CRM_TARGET"]) == (case.status, case.target)
    assert asked_devices(result) == case.asked


# The same caller on the sales line and on the support line: different policies.
DID_CASES = [
    Case("sales-did", CHAIN, "OWNER", "PJSIP/101", ["101"], did=SALES_DID, answered=[(CHAIN, "103", 3600)], record="L-1", policy="sales"),
    Case("sales-did-short-form", CHAIN, "OWNER", "PJSIP/101", ["101"], did="8100", answered=[(CHAIN, "103", 3600)], policy="sales"),
    Case("support-did-last-agent", CHAIN, "OWNER", "PJSIP/103", ["103"], did=SUPPORT_DID, answered=[(CHAIN, "103", 3600)],
         reason_has=["last agent 103"], record="C-1", policy="support"),
    Case("support-did-national-form", CHAIN, "OWNER", "PJSIP/103", ["103"], did="928555200", answered=[(CHAIN, "103", 3600)], policy="support"),
    Case("support-did-e164-without-plus", CHAIN, "OWNER", "PJSIP/103", ["103"], did="34928555200", answered=[(CHAIN, "103", 3600)], policy="support"),
    # Support skips leads: its lookup order starts with the contacts.
    Case("support-no-history-contact-owner", CHAIN, "OWNER", "PJSIP/102", ["102"], did=SUPPORT_DID, record="C-1", policy="support"),
    Case("support-last-agent-too-old", CHAIN, "OWNER", "PJSIP/102", ["102"], did=SUPPORT_DID, answered=[(CHAIN, "103", 40 * 86400)], policy="support"),
    Case("support-newest-answer-wins", CHAIN, "OWNER", "PJSIP/301", ["301"], did=SUPPORT_DID,
         answered=[(CHAIN, "103", 7200), (CHAIN, "301", 60)], policy="support"),
    # Support: last agent busy -> its own team (not the next owner), in office hours.
    Case("support-last-agent-busy-team", CHAIN, "SHARED", "PJSIP/301&PJSIP/302", ["103", "301", "302"], {"PJSIP/103": "INUSE"},
         did=SUPPORT_DID, answered=[(CHAIN, "103", 3600)], reason_has=["last agent 103: 103 INUSE", "team desk"], policy="support"),
    Case("support-unknown-caller-with-history", UNKNOWN, "OWNER", "PJSIP/103", ["103"], did="8200", answered=[(UNKNOWN, "103", 60)], policy="support"),
    Case("support-history-extension-invalid", CHAIN, "OWNER", "PJSIP/102", ["102"], did=SUPPORT_DID, answered=[(CHAIN, "1&PJSIP/9", 60)], policy="support"),
    Case("unlisted-did-default-policy", CHAIN, "OWNER", "PJSIP/101", ["101"], did="999", answered=[(CHAIN, "103", 60)], policy="default"),
    Case("no-did-default-policy", CHAIN, "OWNER", "PJSIP/101", ["101"], did="", answered=[(CHAIN, "103", 60)], policy="default"),
]


@pytest.mark.parametrize("case", DID_CASES, ids=[c.id for c in DID_CASES])
def test_each_did_selects_its_policy(directory, case, call_log):
    result = route(directory, case)
    v = result.variables
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == (case.status, case.target), v["CRM_ROUTE_REASON"]
    assert asked_devices(result) == [device(a) for a in case.asked]
    for text in case.reason_has:
        assert text in v["CRM_ROUTE_REASON"]
    if case.record:
        assert v["CRM_RECORD_ID"] == case.record
    line = next(line for line in session_lines(call_log) if line.startswith("call "))
    assert f"policy={case.policy}" in line


def test_the_log_line_carries_the_whole_chain(directory, call_log):
    case = Case("x", CHAIN, "OWNER", "PJSIP/103", states={"PJSIP/101": "BUSY", "PJSIP/102": "UNAVAILABLE"})
    route(directory, case)
    line = next(line for line in session_lines(call_log) if line.startswith("call "))
    assert "Leads L-1 owner u1: passed over, 101 BUSY" in line
    assert "Contacts C-1 owner u2: passed over, 102 UNAVAILABLE" in line
    assert "Accounts A-1 owner u3: rings 103 (103 UNKNOWN)" in line
    assert "status=SHARED" not in line and "status=OWNER" in line


def test_hostile_device_state_replies_are_unknown_and_ring(directory):
    """A reply that is no state at all (or tries to look like one) is UNKNOWN: it rings."""
    case = Case("x", CHAIN, "OWNER", "PJSIP/101", states={"PJSIP/101": 'BUSY) (INUSE" \\'})
    assert route(directory, case).variables["CRM_TARGET"] == "PJSIP/101"
    lower = Case("x", CHAIN, "OWNER", "PJSIP/102", states={"PJSIP/101": "inuse"})
    assert route(directory, lower).variables["CRM_TARGET"] == "PJSIP/102"


# -- the AGI session during availability checks -------------------------------


def test_caller_already_hung_up_skips_the_checks(directory, call_log):
    peer = AsteriskPeer(hangup_before_command=0, device_states={"PJSIP/101": "INUSE"})
    result = route(directory, Case("x", CHAIN, "", ""), peer)
    v = result.variables
    assert asked_devices(result) == []
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/101")
    assert "state unchecked (caller hung up)" in v["CRM_ROUTE_REASON"]
    assert [argv[:2] for argv in result.commands] == [["EXEC", "MSet"]]
    assert [name for name, _ in result.assignments] == list(CONTRACT_VARIABLES)


def test_hangup_during_the_checks_stops_them(directory):
    """HANGUP arrives before the first state reply: no second question is asked."""
    peer = AsteriskPeer(hangup_before_command=1, device_states={"PJSIP/101": "INUSE", "PJSIP/102": "INUSE"})
    result = route(directory, Case("x", CHAIN, "", ""), peer)
    v = result.variables
    assert asked_devices(result) == [device("101")]
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/102")
    assert "101 INUSE" in v["CRM_ROUTE_REASON"] and "state unchecked (caller hung up)" in v["CRM_ROUTE_REASON"]
    assert result.closed_by_server


def test_asterisk_refusing_the_question_routes_without_states(directory):
    class NoFunctions(AsteriskPeer):
        def reply(self, argv, result):
            if argv[:3] == ["GET", "FULL", "VARIABLE"]:
                return "510 Invalid or unknown command"
            return super().reply(argv, result)

    result = route(directory, Case("x", CHAIN, "", ""), NoFunctions())
    v = result.variables
    assert asked_devices(result) == [device("101")]  # asked once, then not again
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/101")
    assert "state unchecked (Asterisk refused DEVICE_STATE(PJSIP/101)" in v["CRM_ROUTE_REASON"]


def test_a_silent_peer_ends_the_session_and_the_server_goes_on(directory, call_log):
    """No reply to the state question at all: the reply limit ends the session
    (its replies could no longer be told apart); the next call routes."""

    class Silent(AsteriskPeer):
        async def _serve(self, reader, writer, result):
            while await reader.read(65536):
                pass
            result.closed_by_server = True

    config = make_config({
        "routing": merged(ROUTING, {"deadline_ms": 200}),
        "directory": {"path": directory},
        "limits": {"reply_timeout_ms": 400},
    })

    async def scenario():
        async with agi_server(app=build_app(config, history=RecordedAnswers())) as server:
            silent = await Silent().call(server.port, asterisk_headers(caller=CHAIN))
            following = await AsteriskPeer().call(server.port, asterisk_headers(caller=CHAIN))
            return silent, following

    silent, following = run(scenario())
    assert silent.closed_by_server
    assert following.variables["CRM_TARGET"] == "PJSIP/101"
    errors = [line for line in session_lines(call_log) if line.startswith("session-ended")]
    assert len(errors) == 1 and "no reply to GET FULL" in errors[0]


def test_deadline_holds_on_a_slow_peer(directory, call_log):
    """Two state answers come at once, the third takes far longer than the
    1000 ms deadline: two owners are found busy, the third question is cut
    short by the deadline, and the third owner rings unchecked, the reason
    saying so. The variables are set only after the late answer came, so
    every reply is matched to its own command. (Every margin is wide: a busy
    machine cannot turn the answers' order around the deadline.)"""
    deadline_ms = 1000
    case = Case(
        "x", CHAIN, "", "", states={"PJSIP/101": "INUSE", "PJSIP/102": "BUSY"},
        routing={"deadline_ms": deadline_ms}, limits={"reply_timeout_ms": 5000},
    )
    peer = AsteriskPeer(device_states=case.states, state_delays={"PJSIP/101": 0.02, "PJSIP/102": 0.02, "PJSIP/103": 2.0})
    result = route(directory, case, peer)
    v = result.variables
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/103")
    assert "101 INUSE" in v["CRM_ROUTE_REASON"] and "102 BUSY" in v["CRM_ROUTE_REASON"]
    assert "state unchecked (deadline)" in v["CRM_ROUTE_REASON"]
    # On time: the decision is measured by the router, before any variable is
    # set; it did not wait for the answer that came 2 s after the question.
    assert deadline_ms - 100 <= int(v["CRM_LOOKUP_MS"]) < 1900
    assert asked_devices(result) == [device("101"), device("102"), device("103")]
    # One command, one reply: the contract left only after the late third answer.
    third_reply = [t for t, kind, line in result.timeline if kind == "reply" and line == "200 result=1 (UNKNOWN)"][0]
    first_set = [t for t, kind, line in result.timeline if kind == "command" and line.startswith("EXEC MSet")][0]
    assert first_set >= third_reply
    assert [argv[:2] for argv in contract_commands(result)] == [["EXEC", "MSet"]]
    assert [name for name, _ in result.assignments] == list(CONTRACT_VARIABLES)


def test_slow_crm_leaves_no_time_for_checks(directory):
    """The CRM answers late, but well within the deadline; the state question
    that follows is answered long after the deadline: the owner rings
    unchecked. The margins (600 ms before the deadline, 1 s after it) hold on
    a busy machine."""
    from routing_fixtures import StaticBackend
    from crmlookup.records import Match, Owner

    config = make_config({"routing": {"default_region": "ES", "deadline_ms": 800}, "limits": {"reply_timeout_ms": 5000}})
    backend = StaticBackend([Match("Leads", "L-9", "Slow", Owner("u9", "Zed", "", ("109",)))], delay=0.2)

    async def scenario():
        async with agi_server(app=build_app(config, backend=backend)) as server:
            peer = AsteriskPeer(device_states={"PJSIP/109": "INUSE"}, state_delay=2.0)
            return await peer.call(server.port, asterisk_headers(caller=CHAIN))

    result = run(scenario())
    v = result.variables
    assert v["CRM_TARGET"] == "PJSIP/109"
    assert "state unchecked (deadline)" in v["CRM_ROUTE_REASON"]
    assert int(v["CRM_LOOKUP_MS"]) < 2000  # the decision did not wait for the state answer


def test_slow_history_does_not_cost_the_crm_answer(directory):
    history = RecordedAnswers(delay=5)
    history.answered(CHAIN, "103", 60)
    config = make_config({"routing": merged(ROUTING, {"deadline_ms": 1000}), "directory": {"path": directory}})

    async def scenario():
        async with agi_server(app=build_app(config, history=history, now=MONDAY_10)) as server:
            return await AsteriskPeer().call(server.port, asterisk_headers(caller=CHAIN, arguments=(SUPPORT_DID,)))

    v = run(scenario()).variables
    # The history never answered in time; the CRM did, and its contact owner rings.
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"], v["CRM_RECORD_ID"]) == ("OWNER", "PJSIP/102", "C-1")
    assert int(v["CRM_LOOKUP_MS"]) < 4000  # the deadline, not the history's 5 s


def test_failing_history_is_a_reason_not_an_error(directory, call_log):
    history = RecordedAnswers(fail=True)
    config = make_config({"routing": ROUTING, "directory": {"path": directory}})

    async def scenario():
        async with agi_server(app=build_app(config, history=history, now=MONDAY_10)) as server:
            return await AsteriskPeer().call(server.port, asterisk_headers(caller=CHAIN, arguments=(SUPPORT_DID,)))

    v = run(scenario()).variables
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/102")
    line = next(line for line in session_lines(call_log) if line.startswith("call "))
    assert "LastAgent: the call history failed (OSError: history store unreadable)" in line
    assert history.asked == [(CHAIN, 30 * 86400)]


def test_last_agent_rings_even_when_the_crm_is_down():
    from routing_fixtures import StaticBackend

    history = RecordedAnswers()
    history.answered(CHAIN, "103", 60)
    config = make_config({"routing": {"default_region": "ES", "lookup_order": ["Leads", "LastAgent"]}})

    async def scenario():
        async with agi_server(app=build_app(config, backend=StaticBackend(fail=True), history=history)) as server:
            return await AsteriskPeer().call(server.port, asterisk_headers(caller=CHAIN))

    v = run(scenario()).variables
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/103")
    assert "last agent 103" in v["CRM_ROUTE_REASON"] and "CRM lookup failed" in v["CRM_ROUTE_REASON"]


def test_last_agent_without_a_history_is_refused_naming_the_key(directory):
    from dialplan.router import require_history

    config = make_config({"routing": ROUTING, "directory": {"path": directory}})
    with pytest.raises(ValueError, match=r"routing\.policies\.support\.lookup_order: LastAgent needs the call history"):
        require_history(config.routing, None)
    plain = make_config({"routing": {"lookup_order": ["LastAgent", "Leads"]}})
    with pytest.raises(ValueError, match=r"routing\.lookup_order: LastAgent"):
        require_history(plain.routing, None)


def test_the_app_reads_last_agent_from_its_outbox(directory, tmp_path):
    """A served call recorded by ``outcome`` is what LastAgent finds next time."""
    from fastagi_server.app import App

    config = make_config({"routing": ROUTING, "directory": {"path": directory}, "outbox": {"path": str(tmp_path / "outbox.sqlite")}})
    app = App.from_config(config)
    try:
        assert app.router.history is not None
        assert (tmp_path / "outbox.sqlite").exists()
    finally:
        run(app.aclose())


def test_many_calls_at_once_each_get_their_own_states(directory):
    """Concurrent sessions ask their own channels: no state leaks between calls."""
    config = make_config({"routing": ROUTING, "directory": {"path": directory}})

    async def scenario():
        async with agi_server(app=build_app(config, history=RecordedAnswers(), now=MONDAY_10)) as server:
            busy = AsteriskPeer(device_states={"PJSIP/101": "INUSE"}, state_delay=0.01)
            free = AsteriskPeer(state_delay=0.01)
            calls = [(busy if i % 2 else free).call(server.port, asterisk_headers(caller=CHAIN, uniqueid=f"1.{i}")) for i in range(40)]
            return await asyncio.gather(*calls)

    targets = [r.variables["CRM_TARGET"] for r in run(scenario())]
    assert targets == ["PJSIP/101", "PJSIP/102"] * 20


@pytest.mark.parametrize("did", ['"; EXEC System(id)', "+34 928\t555 200", "9" * 3000, "８２００", "${SHELL(id)}", "8200\r"])
def test_hostile_dids_fall_back_to_a_policy_and_never_crash(directory, did, call_log):
    case = Case("x", CHAIN, "", "", did=did)
    v = route(directory, case).variables
    assert v["CRM_ROUTE_STATUS"] in ("OWNER", "SHARED")
    assert v["CRM_TARGET"] in ("PJSIP/101", "PJSIP/102")  # sales/default ring Ana; support rings the contact's owner
    assert not [line for line in session_lines(call_log) if line.startswith("session-ended")]
