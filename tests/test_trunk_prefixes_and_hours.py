"""Per-policy caller-number rewriting (trunk prefixes) and policy-wide business hours."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from click.testing import CliRunner

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import agi_server, make_config, run
from dialplan import InboundCall, Router
from dialplan.outbox import Outbox
from dialplan.rewrite import NumberRewrite
from fastagi_server.app import App
from fastagi_server.cli import cli
from fastagi_server.config import ConfigError

SALES = "+34928555100"
STRIP = {"strip_prefixes": ["00", "0"]}


def routing(**policy) -> dict:
    """Region ES; the sales line has ``policy``'s keys, the other DIDs the [routing] defaults."""
    return {"routing": {"default_region": "ES", "policies": {"sales": {"dids": [SALES], **policy}}}}


def decide(config_data: dict, caller: str, did: str = SALES, at: datetime | None = None):
    async def scenario():
        app = App.from_config(make_config(config_data))
        router = app.router if at is None else Router(app.config.routing, app.backend, clock=lambda: at)
        try:
            return await router.decide(InboundCall(caller=caller, did=did))
        finally:
            await app.aclose()

    return run(scenario())


# -- trunk prefixes ------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["0928000000", "00928000000"])
def test_an_outside_line_prefix_is_stripped_before_the_number_is_read(caller):
    """``0928000000`` is no Spanish number and ``00928000000`` reads as +92...: stripped, both are Ana's lead."""
    plain = decide(routing(), caller)
    assert plain.status.value == "NOMATCH"
    stripped = decide(routing(**STRIP), caller)
    assert (stripped.status.value, stripped.target) == ("OWNER", "PJSIP/101")
    assert stripped.normalised_number == "+34928000000"
    assert f"caller '{caller}' rewritten to '928000000' (strip_prefixes ['00', '0'])" in stripped.steps


def test_the_rules_are_per_policy():
    other_line = decide(routing(**STRIP), "0928000000", did="+34928555999")
    assert other_line.status.value == "NOMATCH" and not any("rewritten" in step for step in other_line.steps)


def test_a_prefix_can_be_added_and_a_plus_number_is_never_rewritten():
    added = decide(routing(add_prefix="+34"), "928000000")
    assert added.normalised_number == "+34928000000" and added.target == "PJSIP/101"
    complete = decide(routing(strip_prefixes=["0"], add_prefix="+34"), "+34928000002")
    assert complete.normalised_number == "+34928000002" and not any("rewritten" in step for step in complete.steps)


def test_rewrite_rules():
    rules = NumberRewrite.build(("0", "00", "0"), "")
    assert rules.strip_prefixes == ("00", "0")  # the longest first, once each
    assert rules.apply("00928000000") == "928000000"
    assert rules.apply("0928000000") == "928000000"
    assert rules.apply("012") == "012", "a short internal number is never eaten whole"
    assert rules.apply("anonymous") == "anonymous" and rules.apply("") == ""
    assert NumberRewrite().apply(" 0928 ") == " 0928 "


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"strip_prefixes": ["0a"]}, "policies.sales: strip_prefixes[0]: '0a' is not a prefix of digits"),
        ({"strip_prefixes": [""]}, "strip_prefixes[0]: '' is not a prefix of digits"),
        ({"add_prefix": "+34 "}, "policies.sales: add_prefix: '+34 ' is not digits"),
        ({"business_hours": "night"}, "policies.sales.business_hours: no schedule 'night' in [routing.hours]"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(policy, message):
    with pytest.raises(ConfigError) as refused:
        make_config(routing(**policy))
    assert message in str(refused.value)


def test_explain_shows_the_rewriting(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[routing]\ndefault_region = "ES"\n[routing.policies.sales]\ndids = ["{SALES}"]\nstrip_prefixes = ["0"]\n')
    result = CliRunner().invoke(cli, ["lookup", "0928000000", "--did", SALES, "--explain", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "caller '0928000000' rewritten to '928000000' (strip_prefixes ['0'])" in result.stdout
    assert "normalised to +34928000000" in result.stdout


def test_the_outcome_reads_the_caller_as_route_did(tmp_path):
    config = make_config({**routing(**STRIP), "outbox": {"path": str(tmp_path / "outbox.sqlite")}})

    async def scenario():
        async with agi_server(config) as server:
            headers = asterisk_headers(script="outcome", caller="0928000000", extension="s", arguments=(SALES,))
            await AsteriskPeer(channel_variables={"DIALSTATUS": "NOANSWER"}).call(server.port, headers)

    run(scenario())
    box = Outbox.open(tmp_path / "outbox.sqlite", create=False)
    [item] = box.claim(time.time() + 60, 10, 60)
    box.close()
    assert (item.outcome.caller, item.outcome.caller_e164) == ("0928000000", "+34928000000")


# -- business hours for the whole policy -----------------------------------------------------------


OFFICE = {"time_zone": "Atlantic/Canary", "open": ["mon-fri 09:00-14:00", "mon-thu 16:00-19:00"]}


def hours_config(**extra) -> dict:
    data = routing(business_hours="office")
    data["routing"]["hours"] = {"office": OFFICE}
    data["routing"].update(extra)
    return data


def test_outside_the_policys_hours_nobody_without_their_own_rings():
    monday_noon = datetime.fromisoformat("2025-03-03T12:00+00:00")  # 12:00 in the Canaries
    monday_night = datetime.fromisoformat("2025-03-03T21:48+00:00")
    assert decide(hours_config(), "+34928000000", at=monday_noon).target == "PJSIP/101"
    night = decide(hours_config(), "+34928000000", at=monday_night)
    assert (night.status.value, night.target) == ("UNMAPPED", "")
    assert "out of hours" in night.reason and "office, Mon 21:48 Atlantic/Canary" in "\n".join(night.steps)
    # Another DID of the same office has no business_hours: it rings at night.
    assert decide(hours_config(), "+34928000000", did="+34928555999", at=monday_night).target == "PJSIP/101"


def test_an_owners_own_schedule_wins_over_the_policys():
    data = hours_config(owner_hours={"u1001": "late"})
    data["routing"]["hours"]["late"] = {"time_zone": "Atlantic/Canary", "open": ["daily 18:00-24:00"]}
    night = decide(data, "+34928000000", at=datetime.fromisoformat("2025-03-03T21:48+00:00"))
    assert night.target == "PJSIP/101"


def test_next_open():
    from dialplan.hours import BusinessHours

    office = BusinessHours.parse("office", "Atlantic/Canary", OFFICE["open"], ["2025-03-07"])
    at = lambda text: datetime.fromisoformat(text)  # noqa: E731
    assert office.next_open(at("2025-03-03T10:00+00:00")) == at("2025-03-03T10:00+00:00")  # open: as it is
    assert office.next_open(at("2025-03-03T14:30+00:00")) == at("2025-03-03T16:00+00:00")  # the afternoon
    assert office.next_open(at("2025-03-03T21:48+00:00")) == at("2025-03-04T09:00+00:00")  # the next morning
    assert office.next_open(at("2025-03-06T19:30+00:00")) == at("2025-03-10T09:00+00:00")  # Friday closed, then the weekend
    assert BusinessHours.parse("never", "UTC", [], []).next_open(at("2025-03-03T10:00+00:00")) is None


def test_a_task_from_a_call_missed_out_of_hours_is_due_when_the_office_opens(tmp_path):
    """A call missed at 21:48 with task_due_hours = 4 is called back at 09:00, not at 01:48."""
    from dialplan.outbox import DeliveryWorker
    from dialplan.outcome import outcome_from_channel

    data = hours_config()
    data["outbox"] = {"path": str(tmp_path / "outbox.sqlite")}
    data["outcomes"] = {"timezone": "Atlantic/Canary"}
    missed_at = datetime.fromisoformat("2025-03-03T21:48+00:00").timestamp()
    routed = {"route_status": "UNMAPPED", "owner_id": "u1001", "module": "Leads", "record_id": "L-1001", "dial_status": "NOANSWER"}

    async def scenario():
        app = App.from_config(make_config(data))
        try:
            for call_id, did in (("1741038480.1", SALES), ("1741038480.2", "+34928555999")):
                outcome = outcome_from_channel(call_id=call_id, caller="+34928000000", readings=routed, ended_at=missed_at, region="ES", did=did)
                await app.outbox.record(outcome, missed_at)
            config = app.config
            # The worker works as if at the moment the calls were missed.
            worker = DeliveryWorker(app.outbox, app.writer, app.backend, settings=config.outbox, outcomes=config.outcomes, routing=config.routing, clock=lambda: missed_at)
            await worker.flush()
            return dict(app.backend.inner.connection.execute("SELECT key, due_at FROM tasks").fetchall())
        finally:
            await app.aclose()

    due = run(scenario())
    assert due["1741038480.1"] == "2025-03-04T09:00:00+00:00"  # the sales line keeps office hours
    assert due["1741038480.2"] == "2025-03-04T01:48:00+00:00"  # a line without them: 4 h later
