"""The policy as configuration: validated at load, every error naming its key;
and business hours, parsed once and asked per call."""

from __future__ import annotations

from datetime import datetime

import pytest

from conftest import make_config
from dialplan.hours import BusinessHours
from dialplan.policy import PolicyBook
from fastagi_server.config import ConfigError

TEAMS = {"floor": {"extensions": ["201"]}}


@pytest.mark.parametrize(
    "routing, key_and_message",
    [
        ({"lookup_order": ["Leads", "Cases"]}, "routing: lookup_order: 'Cases' is not one of Leads, Deals, Contacts, Accounts, LastAgent, Tickets"),
        ({"lookup_order": []}, "routing: lookup_order must name at least one rule"),
        ({"lookup_order": ["Leads", "Leads"]}, "routing: lookup_order: a rule is listed twice"),
        ({"dial_template": "PJSIP/{ext},tT"}, "routing: dial_template 'PJSIP/{ext},tT' must be like"),
        ({"state_template": "DEVICE_STATE(PJSIP/101)"}, "routing: state_template: 'DEVICE_STATE(PJSIP/101)' must be like"),
        ({"state_template": "${DEVICE_STATE(PJSIP/{ext})}"}, "routing: state_template:"),
        ({"state_template": "SHELL(rm {ext})"}, "routing: state_template:"),
        ({"skip_states": ["BUSY", "BUSSY"]}, "routing: skip_states: 'BUSSY' is not one of"),
        ({"on_unavailable": ["next_owner", "queue"]}, "routing: on_unavailable: 'queue' is not one of next_owner, team, senior_manager"),
        ({"on_unmapped": ["team", "team"]}, "routing: on_unmapped: a step is listed twice"),
        ({"team": "nobody"}, "routing: team: no team 'nobody' in [routing.teams] (known: none)"),
        ({"senior_manager": "boss@example.com"}, "routing: senior_manager: 'boss@example.com' has no extensions in [routing.owner_extensions]"),
        ({"last_agent_max_age_s": 0}, "routing: last_agent_max_age_s must be between 60"),
        ({"extension_pattern": "[0-9"}, "routing: extension_pattern is not a valid regular expression"),
        ({"owner_extensions": {"u1": ["101", "10 2"]}}, "routing: owner_extensions.u1[1]: '10 2' does not match extension_pattern"),
        ({"owner_extensions": {"u1": ["101&PJSIP/666"]}}, "routing: owner_extensions.u1[0]: '101&PJSIP/666' does not match"),
        ({"extension_pattern": "[0-9]{3}", "owner_extensions": {"u1": ["1001"]}}, "routing: owner_extensions.u1[0]: '1001'"),
        ({"owner_hours": {"u1": "office"}}, "routing: owner_hours.u1: no schedule 'office' in [routing.hours] (known: none)"),
        ({"teams": {"floor": {"extensions": []}}}, "routing: teams.floor.extensions: a team needs at least one extension"),
        ({"teams": {"floor": {"extensions": ["2,01"]}}}, "routing: teams.floor.extensions[0]: '2,01'"),
        ({"teams": {"floor": {"extensions": ["201"], "hours": "late"}}}, "routing: teams.floor.hours: no schedule 'late'"),
        ({"teams": {"the floor": {"extensions": ["201"]}}}, "routing: teams.the floor: names may hold letters, digits, _ and - only"),
        ({"hours": {"office": {"time_zone": "Mars/Olympus"}}}, "routing.hours.office: time_zone: 'Mars/Olympus' is not a known time zone"),
        ({"hours": {"office": {"open": ["mon-fri 9-18"]}}}, "routing.hours.office: open[0]: 'mon-fri 9-18' is not like 'mon-fri 09:00-18:00'"),
        ({"hours": {"office": {"open": ["sat 10:00-14:00", "funday 09:00-10:00"]}}}, "routing.hours.office: open[1]:"),
        ({"hours": {"office": {"open": ["mon 09:00-09:00"]}}}, "routing.hours.office: open[0]: 'mon 09:00-09:00': the span is empty"),
        ({"hours": {"office": {"open": ["mon 09:00-25:00"]}}}, "routing.hours.office: open[0]: 'mon 09:00-25:00': 25:00 is not a time of day"),
        ({"hours": {"office": {"closed_dates": ["2025-13-01"]}}}, "routing.hours.office: closed_dates[0]: '2025-13-01' is not a date"),
        ({"policies": {"sales": {"lookup_order": ["Leads"]}}}, "routing: policies.sales.dids: a policy needs at least one DID"),
        ({"policies": {"sales": {"dids": ["100"], "lookup_order": ["Cases"]}}}, "routing: policies.sales.lookup_order: 'Cases'"),
        ({"policies": {"sales": {"dids": ["100"], "team": "x"}}, "teams": TEAMS}, "routing: policies.sales.team: no team 'x' in [routing.teams] (known: floor)"),
        ({"policies": {"sales": {"dids": ["100"], "dial_template": "Local/{ext}@a b"}}}, "routing: policies.sales: dial_template 'Local/{ext}@a b'"),
        ({"policies": {"sales": {"dids": ["100"], "skip_states": ["NOPE"]}}}, "routing: policies.sales.skip_states: 'NOPE'"),
        ({"policies": {"sales": {"dids": ["100"]}, "support": {"dids": ["100"]}}}, "routing: policies.support.dids[0]: DID '100' is already listed by policy 'sales'"),
        (
            {"policies": {"sales": {"dids": ["+34928555100"]}, "support": {"dids": ["928 555 100"]}}},
            "routing: policies.support.dids[0]: DID '928 555 100' is the number +34928555100, already listed by policy 'sales'",
        ),
        ({"policies": {"sales": {"dids": [""]}}}, "routing: policies.sales.dids[0]: a DID cannot be empty"),
        ({"policies": {"default": {"dids": ["1"]}}}, "routing: policies.default: the name 'default' means the [routing] keys"),
        ({"policies": {"sales": {"dids": ["1"], "colour": "red"}}}, "routing.policies.sales.colour: unknown key"),
        ({"policies": {"sales": {"dids": ["1"], "check_availability": "yes"}}}, "routing.policies.sales.check_availability: expected true or false"),
        ({"policies": {"sales": ["1"]}}, "routing.policies.sales: expected a table, got a list"),
        ({"teams": {"floor": {"extensions": "201", "hours": 9}}}, "routing.teams.floor.hours: expected a string"),
    ],
)
def test_bad_policy_config_names_the_key(routing, key_and_message):
    data = {"routing": {"default_region": "ES", **routing}}
    with pytest.raises(ConfigError) as caught:
        make_config(data)
    assert key_and_message in str(caught.value)


def test_a_full_policy_loads_and_inherits(tmp_path):
    from fastagi_server.config import load_config

    path = tmp_path / "crmroute.toml"
    path.write_text(
        """
[routing]
default_region = "ES"
dial_template = "PJSIP/{ext}"
team = "floor"
senior_manager = "Boss@Example.com"
skip_states = ["UNAVAILABLE", "BUSY"]

[routing.owner_extensions]
"boss@example.com" = ["100"]

[routing.teams.floor]
extensions = ["201", "202"]
hours = "office"

[routing.hours.office]
time_zone = "Europe/Madrid"
open = ["mon-fri 09:00-14:00", "mon-thu 16:00-19:00"]
closed_dates = ["2025-12-25"]

[routing.policies.support]
dids = ["+34 928 555 200", "8200"]
lookup_order = ["Contacts", "Accounts"]
dial_template = "Local/{ext}@support"
on_unavailable = ["team"]
"""
    )
    config = load_config(path)
    book = PolicyBook.build(config.routing)
    default, support = book.default, book.for_did("8200")
    assert support.name == "support" and book.for_did("0034928555200") is support and book.for_did("555") is default
    assert support.modules == ("Contacts", "Accounts") and default.modules == ("Leads", "Deals", "Contacts", "Accounts")
    # Left out of the policy: taken from [routing].
    assert support.skip_states == default.skip_states == frozenset({"UNAVAILABLE", "BUSY"})
    assert support.team is default.team and support.team.extensions == ("201", "202")
    assert support.senior_manager.extensions == ("100",)
    # The policy's own dial template, and the state question it implies.
    assert support.targets.dial_string(["301"]) == "Local/301@support"
    assert support.states.query("301").expression == "${EXTENSION_STATE(301@support)}"
    assert default.states.query("301").expression == "${DEVICE_STATE(PJSIP/301)}"
    assert support.on_unavailable == ("team",) and default.on_unavailable == ("next_owner", "team")


def test_the_defaults_need_no_config():
    book = PolicyBook.build(make_config({}).routing)
    policy = book.default
    assert policy.rules == ("Leads", "Deals", "Contacts", "Accounts")
    assert policy.states is not None and policy.team is None and policy.senior_manager is None
    assert book.for_did("anything") is policy


def hours(*lines, zone="Europe/Madrid", closed=()):
    return BusinessHours.parse("t", zone, lines, closed)


def at(text):
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    "schedule, moment, expected",
    [
        (hours("mon-fri 09:00-18:00"), at("2025-01-06T08:59+01:00"), False),  # Monday, Madrid
        (hours("mon-fri 09:00-18:00"), at("2025-01-06T09:00+01:00"), True),
        (hours("mon-fri 09:00-18:00"), at("2025-01-06T17:59+01:00"), True),
        (hours("mon-fri 09:00-18:00"), at("2025-01-06T18:00+01:00"), False),  # the end is exclusive
        (hours("mon-fri 09:00-18:00"), at("2025-01-06T08:30+00:00"), True),  # 09:30 in Madrid
        (hours("mon-fri 09:00-18:00"), at("2025-07-07T07:30+00:00"), True),  # summer time: 09:30 in Madrid
        (hours("mon-fri 09:00-18:00"), at("2025-01-11T10:00+01:00"), False),  # Saturday
        (hours("mon-fri 09:00-14:00", "mon-thu 16:00-19:00"), at("2025-01-06T15:00+01:00"), False),  # lunch
        (hours("mon-fri 09:00-14:00", "mon-thu 16:00-19:00"), at("2025-01-10T17:00+01:00"), False),  # Friday afternoon
        (hours("mon-fri 09:00-14:00", "mon-thu 16:00-19:00"), at("2025-01-09T17:00+01:00"), True),
        (hours("fri 22:00-02:00"), at("2025-01-10T23:00+01:00"), True),  # Friday night
        (hours("fri 22:00-02:00"), at("2025-01-11T01:59+01:00"), True),  # past midnight, Saturday
        (hours("fri 22:00-02:00"), at("2025-01-11T02:00+01:00"), False),
        (hours("fri 22:00-02:00"), at("2025-01-10T01:00+01:00"), False),  # Friday early morning is not in it
        (hours("sun 20:00-06:00"), at("2025-01-06T05:00+01:00"), True),  # wraps into Monday
        (hours("fri-mon 10:00-12:00"), at("2025-01-12T11:00+01:00"), True),  # a day range over the weekend
        (hours("fri-mon 10:00-12:00"), at("2025-01-07T11:00+01:00"), False),  # Tuesday
        (hours("sat,sun 00:00-24:00"), at("2025-01-12T23:59+01:00"), True),
        (hours("daily 08:00-20:00"), at("2025-01-08T19:00+01:00"), True),
        (hours("daily 08:00-20:00", closed=["2025-12-25"]), at("2025-12-25T10:00+01:00"), False),
        (hours("daily 08:00-20:00", closed=["2025-12-25"]), at("2025-12-26T10:00+01:00"), True),
        # Closed dates are local dates: 02:00 UTC on the 26th is still the 25th in New York.
        (hours("daily 08:00-22:00", zone="America/New_York", closed=["2025-12-25"]), at("2025-12-26T02:00+00:00"), False),
        (hours("daily 08:00-22:00", zone="America/New_York", closed=["2025-12-25"]), at("2025-12-27T02:00+00:00"), True),
        (hours("daily 08:00-20:00", zone="America/New_York"), at("2025-01-06T14:00+00:00"), True),  # 09:00 in New York
        (hours("daily 08:00-20:00", zone="America/New_York"), at("2025-01-06T12:00+00:00"), False),  # 07:00 there
        (hours(), at("2025-01-06T12:00+00:00"), False),  # no lines: never open
    ],
)
def test_business_hours(schedule, moment, expected):
    assert schedule.is_open(moment) is expected


def test_readme_policy_example_loads_and_matches_the_sample_dialplan():
    """The README's sales/support example is a working config, and the sample
    dialplan's two lines reach the two policies it defines."""
    import re
    import tomllib
    from pathlib import Path

    from fastagi_server.config import config_from_dict

    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    section = readme[readme.index("### Per-DID policies"):]
    example = section[section.index("```toml") + len("```toml"): section.index("```", section.index("```toml") + 7)]
    config = config_from_dict(tomllib.loads(example))
    book = PolicyBook.build(config.routing)
    sample = (root / "extensions.conf.sample").read_text()
    lines = re.findall(r"^exten => (\d+),1,Gosub\(crm-route,s,1\(\$\{EXTEN\},(\w+)\)\)", sample, re.M)
    assert [queue for _, queue in lines] == ["sales", "support"]
    for did, queue in lines:
        assert book.for_did(did).name == queue
    assert book.for_did("34928555300").name == "default"
    support = book.for_did("34928555200")
    assert support.rules[:2] == ("Tickets", "LastAgent") and support.on_unavailable == ("team",)


def test_dids_in_another_form_are_resolved_once_and_the_memo_is_bounded():
    from dialplan.policy import MAX_RESOLVED_DIDS

    config = make_config({"routing": {"default_region": "ES", "policies": {"support": {"dids": ["+34928555200"]}}}})
    book = PolicyBook.build(config.routing)
    assert book.for_did("928555200").name == "support"
    assert book.for_did("928555200").name == "support"  # from the memo now
    # A stream of made-up DIDs (a hostile trunk) cannot grow it without bound.
    for i in range(MAX_RESOLVED_DIDS + 500):
        assert book.for_did(f"6{i:08d}").name == "default"
    assert len(book._resolved) == MAX_RESOLVED_DIDS
    assert book.for_did("0034928555200").name == "support"  # still resolved, just not remembered


def test_sample_dialplan_keeps_crm_text_out_of_expressions_and_arguments():
    """CRM text (names, ids, the reason) may appear in the sample only as a
    Set() value or inside LEN(): in $[...], IF() or ExecIf() a crafted contact
    name runs System() on Asterisk 22. CRM_TARGET and CRM_ROUTE_STATUS are
    ours (a validated dial string, a fixed word) and may be tested."""
    import re
    from pathlib import Path

    from dialplan import CONTRACT_VARIABLES

    ours = {"CRM_TARGET", "CRM_ROUTE_STATUS", "CRM_LOOKUP_MS", "CRM_EXTENSION"}
    crm_text = [name for name in CONTRACT_VARIABLES if name not in ours]
    sample = (Path(__file__).parent.parent / "extensions.conf.sample").read_text()
    code = [line.split(";", 1)[0] for line in sample.splitlines() if line.strip() and not line.lstrip().startswith(";")]
    for line in code:
        for name in crm_text:
            for use in re.finditer(r"\$\{" + name + r"\}", line):
                before = line[: use.start()]
                as_set_value = re.search(r"\bSet\([A-Za-z_()]+=$", before)
                in_len = before.endswith("${LEN(") and line[use.end():].startswith(")}")
                assert as_set_value or in_len, f"CRM text {name} used unsafely: {line.strip()}"
    assert any("Set(CALLERID(name)=${CRM_CALLER_NAME})" in line for line in code)
