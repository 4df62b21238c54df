"""retailCRM's call history and screen pop, over real HTTP against the simulator.

Outcomes go through the outbox to ``POST /api/v5/telephony/calls/upload``;
the call event goes out after the route answered, in the background.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import agi_server, retailcrm_config, run
from dialplan.outbox import Outbox
from dialplan.outbox.store import OutboxState
from dialplan.outcome import outcome_from_channel
from fastagi_server.app import App
from retailcrm_simulator import KEY, RetailCrmSimulator
from test_outbox_crash import flush_command, flush_env, flush_killed, flush_until_done, record_now

CALLER = "+79161234567"
ROUTED = {"route_status": "OWNER", "owner_id": "7", "module": "Customers", "record_id": "501", "route_extension": "101"}


@pytest.fixture
def account(retailcrm):
    retailcrm.add_user(7, "Olga", "Petrova", code="101")
    retailcrm.add_user(8, "Ivan", "Sidorov", code="102")
    retailcrm.add_customer(501, "Anna", [CALLER], manager_id=7)
    return retailcrm


def config_for(sim, tmp_path, outbox=None, **sections):
    outbox = {"path": str(tmp_path / "outbox.sqlite"), "backoff_initial_s": 0.01, "backoff_max_s": 0.05, **(outbox or {})}
    return retailcrm_config(sim, outbox=outbox, outcomes={"timezone": "Europe/Moscow"}, **sections)


def flush(config, outcomes):
    async def scenario():
        app = App.from_config(config)
        try:
            for outcome in outcomes:
                await app.record_outcome(outcome, outcome.ended_at)
            summary = await app.delivery_worker.flush(max_seconds=30)
            return summary, app.outbox.counts()
        finally:
            await app.aclose()

    return run(scenario())


def outcome(call_id, caller=CALLER, **readings):
    return outcome_from_channel(call_id=call_id, caller=caller, readings=readings, ended_at=1_760_000_000.0, region="RU")


def test_outcomes_are_uploaded_once_each_in_retailcrms_own_terms(account, tmp_path):
    made = [
        outcome("1760000000.1", **ROUTED, dial_status="ANSWER", peer_number="102", answered_s="61", cdr_start="1759999900",
                recording_url="https://pbx.example.com/rec/1760000000.1.wav"),
        outcome("1760000000.2", **ROUTED, dial_status="NOANSWER"),
        outcome("1760000000.3", **ROUTED, dial_status="BUSY"),
        outcome("1760000000.4", **ROUTED, dial_status="CHANUNAVAIL"),
        outcome("1760000000.5", **ROUTED, dial_status="CANCEL"),
        outcome("1760000000.6", caller="+79160000000", route_status="NOMATCH"),  # an unknown caller left in a queue
    ]
    summary, counts = flush(config_for(account, tmp_path), made)
    assert summary.delivered == 6 and counts["done"] == 6
    by_id = {call["externalId"]: call for call in account.calls}
    assert Counter(account.stored_external_ids()) == Counter(o.call_id for o in made)
    assert {key: call["result"] for key, call in by_id.items()} == {
        "1760000000.1": "answered",
        "1760000000.2": "no answer",
        "1760000000.3": "busy",
        "1760000000.4": "failed",
        "1760000000.5": "no answer",
        "1760000000.6": "no answer",
    }
    answered = by_id["1760000000.1"]
    assert answered["code"] == "102"  # who answered, not who owns the customer
    assert answered["duration"] == 61 and answered["type"] == "in" and answered["phone"] == CALLER
    assert answered["date"] == "2025-10-09 11:51:40"  # the call's start in [outcomes] timezone (Moscow, UTC+3)
    assert answered["site"] == "main"
    assert answered["recordUrl"] == "https://pbx.example.com/rec/1760000000.1.wav"  # CRM_RECORDING_URL, when the dialplan sets it
    assert "recordUrl" not in by_id["1760000000.2"]
    assert by_id["1760000000.2"]["code"] == "101" and by_id["1760000000.2"]["duration"] == 0
    assert "code" not in by_id["1760000000.6"]
    # Calls only: retailCRM's own triggers make the tasks; no lead or task was asked for.
    assert {r.path for r in account.requests if r.method == "POST"} == {"/api/v5/telephony/calls/upload"}


def test_a_recorded_call_carries_its_recordings_address_from_the_url_template(account, tmp_path):
    made = [
        outcome("1760000000.1", **ROUTED, dial_status="ANSWER", peer_number="101", answered_s="30", recording="1760000000.1.wav"),
        outcome("1760000000.2", **ROUTED, dial_status="NOANSWER", recording="1760000000.2.wav"),  # nobody spoke: no recording
        outcome("1760000000.3", **ROUTED, dial_status="ANSWER", peer_number="101", answered_s="30", recording="../../etc/passwd.wav"),
    ]
    recordings = {"directory": str(tmp_path), "url_template": "https://pbx.example.com/rec/{file}"}
    summary, counts = flush(config_for(account, tmp_path, recordings=recordings), made)
    assert counts["done"] == 3, "retailCRM fetches the file itself: nothing waits for it here"
    by_id = {call["externalId"]: call for call in account.calls}
    assert by_id["1760000000.1"]["recordUrl"] == "https://pbx.example.com/rec/1760000000.1.wav"
    assert "recordUrl" not in by_id["1760000000.2"] and "recordUrl" not in by_id["1760000000.3"]


def test_a_call_retailcrm_already_has_counts_as_written_not_twice(account, tmp_path):
    first = outcome("1760000000.1", **ROUTED, dial_status="NOANSWER")
    account.calls.append({"externalId": first.call_id, "result": "no answer"})  # an upload whose answer was lost
    summary, counts = flush(config_for(account, tmp_path), [first, outcome("1760000000.2", **ROUTED, dial_status="BUSY")])
    assert counts["done"] == 2
    assert Counter(account.stored_external_ids()) == Counter({"1760000000.1": 1, "1760000000.2": 1})


def test_a_call_refused_for_its_data_keeps_back_only_itself(account, tmp_path):
    withheld = outcome("1760000000.9", caller="anonymous", dial_status="NOANSWER")  # no phone: retailCRM refuses it
    good = outcome("1760000000.2", **ROUTED, dial_status="NOANSWER")
    summary, counts = flush(config_for(account, tmp_path, outbox={"max_attempts": 1}), [withheld, good])
    assert account.stored_external_ids() == ["1760000000.2"]
    assert counts["done"] == 1 and counts["dead"] == 1
    box = Outbox.open(tmp_path / "outbox.sqlite")
    try:
        dead = box.list_rows(OutboxState.DEAD)
    finally:
        box.close()
    assert "calls[0][phone]" in dead[0].last_error and "This value should not be blank." in dead[0].last_error


def test_a_refused_key_pauses_the_outbox_and_is_never_logged(account, tmp_path, caplog):
    config = config_for(account, tmp_path, retailcrm={"api_key": "revoked-key"})
    summary, counts = flush(config, [outcome("1760000000.1", **ROUTED, dial_status="NOANSWER")])
    assert 'Wrong "apiKey" value.' in summary.paused
    assert counts["done"] == 0 and account.calls == []
    assert "revoked-key" not in caplog.text and KEY not in caplog.text


def test_a_rate_limited_upload_waits_and_is_delivered(account, tmp_path):
    account.fail_next("/api/v5/telephony/calls/upload", 503, {"success": False, "errorMsg": "Rate limit exceeded"}, headers={"Retry-After": "0.2"})
    summary, counts = flush(config_for(account, tmp_path, retailcrm={"backoff_initial_ms": 50}), [outcome("1760000000.1", **ROUTED, dial_status="NOANSWER")])
    assert counts["done"] == 1 and account.stored_external_ids() == ["1760000000.1"]
    assert len(account.requests_to("/api/v5/telephony/calls/upload")) == 2


# -- the screen pop -----------------------------------------------------------


def routed_then_hung_up(sim, config, *, uniqueid="1760000000.42", routes_twice=False):
    """Route a call over TCP (twice when asked, as a dialplan that runs the script again), then its hangup handler."""

    async def scenario():
        async with agi_server(config) as server:
            first = await AsteriskPeer().call(server.port, asterisk_headers(caller=CALLER, uniqueid=uniqueid))
            answered_at = time.time()
            if routes_twice:
                await AsteriskPeer().call(server.port, asterisk_headers(caller=CALLER, uniqueid=uniqueid))
            events_then = len(sim.events)
            hangup = AsteriskPeer(channel_variables={
                "DIALSTATUS": "ANSWER", "DIALEDPEERNUMBER": "101", "ANSWEREDTIME": "30",
                **{name: first.variables[name] for name in ("CRM_ROUTE_STATUS", "CRM_OWNER_ID", "CRM_MODULE", "CRM_RECORD_ID", "CRM_EXTENSION")},
            })
            await hangup.call(server.port, asterisk_headers(script="outcome", caller=CALLER, uniqueid=uniqueid, extension="h"))
            # Both events are sent before the server stops (it cancels what is still in flight).
            await __import__("asyncio").to_thread(sim.wait_for_events, 2, 20.0)
            return first, answered_at, events_then

    return run(scenario())


def test_the_screen_pop_goes_after_the_answer_and_the_hangup_closes_it(account, tmp_path):
    account.path_latency_s["/api/v5/telephony/call/event"] = 0.5  # a slow retailCRM: the call must not wait for it
    first, answered_at, events_then = routed_then_hung_up(account, config_for(account, tmp_path))
    assert first.variables["CRM_TARGET"] == "PJSIP/101"
    assert events_then == 0  # the route had answered before retailCRM even had the event
    ringing, ended = account.events
    assert ringing["type"] == "in" and ringing["codes"] == ["101"] and ringing["phone"] == CALLER
    assert ringing["callExternalId"] == "1760000000.42" and ringing["site"] == "main"
    assert ringing["received_at"] >= answered_at
    assert ended["type"] == "hangup" and ended["hangupStatus"] == "answered" and ended["codes"] == ["101"]
    assert [r.form for r in account.requests_to("/api/v5/telephony/call/event")][0]["event"]  # a JSON form field, as the clients send it


def test_a_call_routed_twice_pops_once(account, tmp_path):
    routed_then_hung_up(account, config_for(account, tmp_path), routes_twice=True)
    assert Counter(event["type"] for event in account.wait_for_events(2)) == Counter({"in": 1, "hangup": 1})


def test_a_failing_event_is_only_logged(account, tmp_path, caplog):
    account.fail_next("/api/v5/telephony/call/event", 500, {"success": False, "errorMsg": "Internal error"})

    async def scenario():
        async with agi_server(config_for(account, tmp_path)) as server:
            result = await AsteriskPeer().call(server.port, asterisk_headers(caller=CALLER))
            await __import__("asyncio").to_thread(lambda: [time.sleep(0.05) for _ in range(100) if not account.requests_to("/api/v5/telephony/call/event")])
            for _ in range(100):
                if "call event ringing" in caplog.text:
                    break
                await __import__("asyncio").sleep(0.05)
            return result

    result = run(scenario())
    assert result.variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert "call event ringing for 1700000000.1 not sent: POST /api/v5/telephony/call/event: 500 Internal error" in caplog.text


def test_no_event_for_a_call_that_rings_nobody_or_when_switched_off(account, tmp_path):
    async def scenario(config, caller):
        async with agi_server(config) as server:
            return await AsteriskPeer().call(server.port, asterisk_headers(caller=caller))

    run(scenario(config_for(account, tmp_path), "+79169999999"))  # NOMATCH
    run(scenario(config_for(account, tmp_path, retailcrm={"call_events": False}), CALLER))
    assert account.requests_to("/api/v5/telephony/call/event") == []


# -- nothing lost, nothing twice, across SIGKILL --------------------------------

CALLS = 100
KILLS = 12


def test_sigkill_during_flush_uploads_every_call_exactly_once(tmp_path):
    rng = random.Random(20251009)
    with RetailCrmSimulator(rate_limit_per_s=None) as sim:
        sim.latency_s = 0.1  # each upload takes a while: the kills land in the middle of the work
        sim.add_user(7, "Olga", code="101")
        sim.add_customer(501, "Anna", [CALLER], manager_id=7)
        outbox_path = tmp_path / "outbox.sqlite"
        config_path = tmp_path / "crmroute.toml"
        config_path.write_text(
            f'[crm]\nbackend = "retailcrm"\n[routing]\ndefault_region = "RU"\n'
            f'[retailcrm]\nurl = "{sim.url}"\napi_key = "{KEY}"\nbreaker_open_s = 1\n'
            f'[outbox]\npath = "{outbox_path}"\nbatch_size = 5\nbackoff_initial_s = 0.01\nbackoff_max_s = 0.05\nlease_s = 600\n'
        )
        now = time.time()
        statuses = ["ANSWER", "NOANSWER", "BUSY", "CANCEL"]
        recorded = [
            outcome_from_channel(call_id=f"{int(now)}.{i}", caller=CALLER, readings={**ROUTED, "dial_status": statuses[i % 4], "answered_s": "9"}, ended_at=now - 60, region="RU")
            for i in range(CALLS)
        ]
        record_now(outbox_path, recorded)

        command = flush_command(config_path)
        env = flush_env()
        killed_mid_write = flush_killed(command, env, outbox_path, KILLS, lambda: rng.choice((0.0, rng.uniform(0.0, 0.6))))
        flush_until_done(command, env, attempts=1)

        assert killed_mid_write >= 2, f"only {killed_mid_write} kills hit an upload in flight"
        box = Outbox.open(outbox_path)
        assert box.counts()["done"] == CALLS
        box.close()
        assert Counter(sim.stored_external_ids()) == Counter(o.call_id for o in recorded), "every call exactly once"
        sent = Counter(call["externalId"] for upload in sim.uploads for call in upload)
        # A call is sent again only when a kill left its upload uncertain: a few batches at most.
        assert sum(sent.values()) - CALLS <= 5 * KILLS


def test_the_simulator_refuses_a_record_url_that_is_no_address(account):
    import httpx

    calls = [{"date": "2025-10-09 11:51:40", "type": "in", "phone": CALLER, "result": "answered", "recordUrl": "javascript:alert(1)"}]
    answer = httpx.post(f"{account.url}/api/v5/telephony/calls/upload", headers={"X-API-KEY": KEY}, data={"calls": json.dumps(calls)})
    assert answer.status_code == 400
    assert answer.json()["errors"] == {"calls[0][recordUrl]": "This value is not a valid URL."}
