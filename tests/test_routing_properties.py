"""Properties: whatever the CRM (and our call history) returns, the target is
empty or made only of mapped, validated extensions, and a phone Asterisk
reports busy never rings."""

from __future__ import annotations

import asyncio
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asterisk_peer import AsteriskPeer, asterisk_headers, mset
from conftest import agi_server, make_config
from crmlookup.records import MODULES, Match, Owner
from dialplan import CONTRACT_VARIABLES, FixedDeviceStates, InboundCall, Router
from dialplan.availability import DEFAULT_SKIP_STATES, DEVICE_STATES
from dialplan.targets import SAFE_EXTENSION, SAFE_TARGET
from routing_fixtures import RecordedAnswers, StaticBackend, build_app

HOSTILE = [
    '101"', "101&PJSIP/666", "101,tT", "101|102", "101\n102", "101\r", "1 01", "${SHELL(id)}", "101)", "(101",
    "ext\\", "١٠١", "１０１", "101\x00", "Local/101@x", "101;102", "PJSIP/101", "", " ", "101" * 30,
]
VALID = ["101", "102", "103", "201", "600", "7_7", "a-b"]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(HOSTILE)
extension = st.sampled_from(VALID) | st.sampled_from(HOSTILE) | st.text(max_size=12)
owner = st.builds(
    Owner,
    id=st.sampled_from(["u1", "u2", "u3", "boss"]) | text,
    name=text,
    email=st.sampled_from(["", "ana@example.com", 'x"@y', "a&b@c,d"]) | text,
    extensions=st.lists(extension, max_size=4).map(tuple),
)
match = st.builds(Match, module=st.sampled_from(MODULES), record_id=text, name=text, owner=st.none() | owner)
state = st.sampled_from(DEVICE_STATES) | st.sampled_from(["", "busy", "INUSE)", "(BUSY", "NOT_INUSE\nBUSY"]) | text
policy_keys = st.fixed_dictionaries(
    {
        "lookup_order": st.permutations(list(MODULES) + ["LastAgent"]).map(lambda rules: rules[:4]),
        "on_unavailable": st.lists(st.sampled_from(["next_owner", "team", "senior_manager"]), unique=True),
        "on_unmapped": st.lists(st.sampled_from(["next_owner", "team", "senior_manager"]), unique=True),
        "owner_extensions": st.dictionaries(st.sampled_from(["u1", "u2", "u3", "ana@example.com"]), st.lists(st.sampled_from(VALID), min_size=1, max_size=3)),
    }
)

TEMPLATE = "PJSIP/{ext}"


def routing(keys: dict) -> dict:
    owner_extensions = {"boss": ["100"], **keys["owner_extensions"]}
    return {
        "default_region": "ES",
        **keys,
        "owner_extensions": owner_extensions,
        "teams": {"floor": {"extensions": ["201", "202"]}},
        "team": "floor",
        "senior_manager": "boss",
    }


def allowed_extensions(mapped: dict[str, tuple[str, ...]], pattern: str, matches: list[Match], last: str | None) -> set[str]:
    """Everything the policy may legitimately ring for these matches: the
    team, the senior manager, the owners' mapped extensions (or, for owners the
    config does not map, the valid ones the CRM gave), the last agent."""
    allowed = {"100", "201", "202"}
    for m in matches:
        if m.owner is None:
            continue
        configured = mapped.get(m.owner.id)
        if configured is None and m.owner.email and m.owner.email.lower() in mapped:
            configured = mapped[m.owner.email.lower()]
        allowed |= set(configured if configured is not None else [e for e in m.owner.extensions if SAFE_EXTENSION.fullmatch(e)])
    if last is not None:
        allowed.add(last)
    return {e for e in allowed if SAFE_EXTENSION.fullmatch(e) and re.fullmatch(pattern, e)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=policy_keys,
    matches=st.lists(match, max_size=5),
    states=st.dictionaries(extension, state, max_size=6),
    last=st.none() | extension,
)
def test_target_is_only_ever_mapped_validated_extensions(keys, matches, states, last):
    config = make_config({"routing": routing(keys)})
    history = RecordedAnswers()
    if last is not None:
        history.answered("+34928000000", last, 10)
    router = Router(config.routing, StaticBackend(matches), history=history)

    async def decide():
        return await router.decide(InboundCall(caller="+34928000000"), FixedDeviceStates({f"PJSIP/{k}": v for k, v in states.items()}))

    decision = asyncio.run(decide())
    variables = decision.channel_variables()
    target = variables["CRM_TARGET"]
    assert target == decision.target
    if not target:
        assert decision.extensions == [] and decision.status.value not in ("OWNER", "SHARED")
        return
    assert SAFE_TARGET.fullmatch(target)
    parts = target.split("&")
    assert len(parts) == len(set(parts))
    assert parts == [TEMPLATE.replace("{ext}", e) for e in decision.extensions]
    allowed = allowed_extensions(config.routing.owner_extensions, config.routing.extension_pattern, matches, last)
    for ext in decision.extensions:
        assert ext in allowed
        assert SAFE_EXTENSION.fullmatch(ext) and re.fullmatch(config.routing.extension_pattern, ext)
        # Asterisk said busy (and was asked in time): that phone does not ring.
        reported = states.get(ext, "UNKNOWN").strip().upper()
        assert reported not in DEFAULT_SKIP_STATES
    assert variables["CRM_EXTENSION"] == decision.extensions[0]
    assert len(variables["CRM_ROUTE_REASON"]) <= 200


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(matches=st.lists(match, min_size=1, max_size=4), states=st.dictionaries(st.sampled_from(VALID + ["100"]), st.sampled_from(DEVICE_STATES)))
def test_on_the_wire_only_state_questions_and_variables(matches, states):
    """Over real TCP: every command is a state question about a validated
    device or a SET VARIABLE with exactly one value, whatever the CRM said."""
    config = make_config({"routing": routing({"lookup_order": list(MODULES), "on_unavailable": ["next_owner", "team"], "on_unmapped": ["senior_manager"], "owner_extensions": {}})})

    async def scenario():
        async with agi_server(app=build_app(config, backend=StaticBackend(matches))) as server:
            peer = AsteriskPeer(device_states={f"PJSIP/{k}": v for k, v in states.items()})
            return await peer.call(server.port, asterisk_headers(caller="+34928000000"))

    result = asyncio.run(scenario())
    for argv in result.commands:
        if argv[:3] == ["GET", "FULL", "VARIABLE"]:
            assert len(argv) == 4
            assert argv[3].startswith("${DEVICE_STATE(PJSIP/") and argv[3].endswith(")}")
            assert SAFE_EXTENSION.fullmatch(argv[3][len("${DEVICE_STATE(PJSIP/") : -2])
        elif argv[:2] == ["EXEC", "MSet"]:
            assert len(argv) == 3 and set(mset(argv[2])) <= set(CONTRACT_VARIABLES)
        else:
            assert argv[:2] == ["SET", "VARIABLE"] and len(argv) == 4 and argv[2] in CONTRACT_VARIABLES
    target = result.variables["CRM_TARGET"]
    assert target == "" or SAFE_TARGET.fullmatch(target)
