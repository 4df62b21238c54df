"""Call outcomes into Zoho CRM over real HTTP on loopback, against the simulator."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import agi_server, make_config, run
from crmlookup.zoho.writer import criteria_value, duration
from dialplan.outbox import Outbox
from dialplan.outcome import outcome_from_channel
from fastagi_server.app import App

KNOWN = "+34928000000"
CONTACT = "+34928000003"
UNKNOWN = "+34928999999"


@pytest.fixture
def org(zoho):
    """Two reps with extensions, a senior manager, a lead and a contact."""
    ana = zoho.add_user("Ana García", "ana@example.com", Extension="101")
    ben = zoho.add_user("Ben Okafor", "ben@example.com", Extension="102")
    boss = zoho.add_user("Sam Senior", "sam@example.com")
    lead = zoho.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
    contact = zoho.add_record("Contacts", ben, Full_Name="Pedro Gil", Last_Name="Gil", Phone=CONTACT)
    return {"ana": ana, "ben": ben, "boss": boss, "lead": lead, "contact": contact, "sim": zoho}


def config(zoho, tmp_path, *, outcomes=None, outbox=None, **zoho_overrides):
    return make_config({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES"},
        "zoho": zoho.zoho_config(user_extension_field="Extension", search_lag_s=0, breaker_open_s=1, **zoho_overrides),
        "outbox": {"path": str(tmp_path / "outbox.sqlite"), "backoff_initial_s": 0.01, "backoff_max_s": 0.05, **(outbox or {})},
        "outcomes": {"timezone": "Europe/Madrid", **(outcomes or {})},
    })


def channel(caller=KNOWN, answered_by="", org=None, **extra):
    """The channel variables at hangup; routed to the record's owner when the caller is known."""
    variables = {"DIALSTATUS": "ANSWER" if answered_by else "NOANSWER", "CDR(start,u)": f"{time.time() - 90:.6f}"}
    if answered_by:
        variables.update(DIALEDPEERNUMBER=answered_by, ANSWEREDTIME_MS="42500")
    if org and caller == KNOWN:
        variables.update(CRM_ROUTE_STATUS="OWNER", CRM_OWNER_ID=org["ana"]["id"], CRM_MODULE="Leads", CRM_RECORD_ID=org["lead"]["id"], CRM_EXTENSION="101", CRM_CALLER_NAME="Marta Ruiz")
    variables.update(extra)
    return variables


def record_over_tcp(cfg, calls):
    """Each (uniqueid, caller, channel variables) through ``outcome`` over TCP."""

    async def scenario():
        async with agi_server(cfg) as server:
            for uniqueid, caller, variables in calls:
                headers = asterisk_headers(script="outcome", uniqueid=uniqueid, caller=caller, extension="s", arguments=("900",))
                await AsteriskPeer(channel_variables=variables).call(server.port, headers)

    run(scenario())


def flush(cfg, **kwargs):
    async def scenario():
        app = App.from_config(cfg)
        try:
            return await app.delivery_worker.flush(**kwargs)
        finally:
            await app.aclose()

    return run(scenario())


def posts(sim, module):
    return [r for r in sim.api_requests() if r.method == "POST" and r.path.endswith(f"/{module}")]


def keys_of(sim, module):
    """The call ids the records of ``module`` carry (in their subject)."""
    return Counter(re.search(r"\[([^\]]+)\]$", r["Subject"]).group(1) for r in sim.records(module))


def test_recording_costs_no_crm_request_then_the_worker_logs_the_call(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path)
    record_over_tcp(cfg, [("1700000000.1", KNOWN, channel(org=org))])
    assert sim.log == []  # not a token, not a search, nothing: the CRM learns later
    assert flush(cfg).delivered == 1
    [call] = sim.records("Calls")
    assert call["Call_Type"] == "Missed" and call["Call_Duration"] == "00:00"
    assert call["What_Id"] == {"id": org["lead"]["id"]} and call["$se_module"] == "Leads"
    assert call["Owner"]["id"] == org["ana"]["id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", call["Call_Start_Time"])
    assert call["Subject"] == "Missed call from Marta Ruiz (+34928000000) [1700000000.1]"
    [task] = sim.records("Tasks")
    assert task["Owner"]["id"] == org["ana"]["id"] and task["What_Id"] == {"id": org["lead"]["id"]}
    assert task["Status"] == "Not Started" and re.fullmatch(r"\d{4}-\d\d-\d\d", task["Due_Date"])
    assert task["Remind_At"]["ALARM"].startswith("FREQ=NONE;ACTION=POPUP;TRIGGER=DATE-TIME:")


def test_answered_by_a_colleague_from_a_contact(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path)
    # route never set CRM_*: the caller is looked up at sync time (a contact of Ben's).
    record_over_tcp(cfg, [("1700000000.2", CONTACT, channel(CONTACT, answered_by="101"))])
    flush(cfg)
    [call] = sim.records("Calls")
    assert call["Call_Type"] == "Inbound" and call["Call_Duration"] == "00:43"
    assert call["Who_Id"] == {"id": org["contact"]["id"]} and "What_Id" not in call
    assert call["Owner"]["id"] == org["ana"]["id"]  # who answered
    [task] = sim.records("Tasks")
    assert task["Owner"]["id"] == org["ben"]["id"] and task["Who_Id"] == {"id": org["contact"]["id"]}


def test_unknown_caller_missed_gets_a_lead_for_the_senior_manager(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path, outcomes={"senior_manager_id": org["boss"]["id"]})
    record_over_tcp(cfg, [("1700000000.3", UNKNOWN, channel(UNKNOWN, CRM_ROUTE_STATUS="NOMATCH"))])
    flush(cfg)
    [lead] = [r for r in sim.records("Leads") if r.get("Phone") == UNKNOWN]
    assert lead["Owner"]["id"] == org["boss"]["id"] and lead["Last_Name"] == "Caller +34928999999"
    [call] = sim.records("Calls")
    [task] = sim.records("Tasks")
    assert call["What_Id"] == {"id": lead["id"]} == task["What_Id"] and call["$se_module"] == "Leads"
    assert task["Owner"]["id"] == org["boss"]["id"]


def test_calls_go_in_batches_of_at_most_100(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path, outcomes={"missed_known_task": False})
    box = Outbox.open(tmp_path / "outbox.sqlite")
    now = time.time()
    missed = {"dial_status": "NOANSWER", "route_status": "OWNER", "owner_id": org["ana"]["id"], "module": "Leads", "record_id": org["lead"]["id"]}
    box.record_many([
        (outcome_from_channel(call_id=f"{int(now)}.{i}", caller=KNOWN, readings=missed, ended_at=now, region="ES"), now)
        for i in range(250)
    ])
    box.close()
    assert flush(cfg).delivered == 250
    assert len(posts(sim, "Calls")) == 3
    assert sum(keys_of(sim, "Calls").values()) == 250 and set(keys_of(sim, "Calls").values()) == {1}


def test_a_refused_record_goes_dead_with_zohos_words_and_the_rest_go_through(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path, outbox={"max_attempts": 2})
    good = channel(org=org)
    bad = channel(org=org, CRM_RECORD_ID="4000000000000000999")  # a lead deleted since the call
    record_over_tcp(cfg, [("1700000000.1", KNOWN, good), ("1700000000.2", KNOWN, bad), ("1700000000.3", KNOWN, good)])
    flush(cfg)
    flush(cfg)
    box = Outbox.open(tmp_path / "outbox.sqlite")
    rows = {r.call_id: r for r in box.list_rows()}
    box.close()
    assert rows["1700000000.2"].state == "dead"
    assert rows["1700000000.2"].last_error == "Calls: INVALID_DATA: invalid data (What_Id)"
    assert rows["1700000000.1"].state == rows["1700000000.3"].state == "done"
    assert sorted(keys_of(sim, "Calls")) == ["1700000000.1", "1700000000.3"]


def test_crm_down_for_the_whole_run_then_back(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path)
    record_over_tcp(cfg, [(f"1700000000.{i}", KNOWN, channel(org=org)) for i in range(20)])
    sim.add_fault(r"^/crm/v8/", 503)
    for _ in range(3):
        summary = flush(cfg)
        assert summary.delivered == 0
        time.sleep(0.06)
    box = Outbox.open(tmp_path / "outbox.sqlite")
    assert box.counts()["failed"] == 20
    box.close()
    sim.clear_faults()
    time.sleep(1.1)  # the client's circuit breaker stays open for breaker_open_s
    assert flush(cfg).delivered == 20
    assert set(keys_of(sim, "Calls").values()) == {1} and len(keys_of(sim, "Calls")) == 20


def test_revoked_token_pauses_then_a_new_token_replays_everything(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path)
    record_over_tcp(cfg, [("1700000000.1", KNOWN, channel(org=org))])
    assert flush(cfg).delivered == 1
    sim.revoke_refresh_token()
    record_over_tcp(cfg, [(f"1700000000.{i}", KNOWN, channel(org=org)) for i in range(2, 30)])
    summary = flush(cfg)
    assert summary.paused and "refused" in summary.paused and summary.delivered == 0
    box = Outbox.open(tmp_path / "outbox.sqlite")
    assert box.counts()["pending"] == 28 and box.get_meta("paused")
    box.close()
    # The admin issues a new refresh token and puts it in the config.
    sim.refresh_token, sim.refresh_token_revoked = "1000.new-refresh-token.xyz", False
    fixed = config(sim, tmp_path, refresh_token=sim.refresh_token)
    assert flush(fixed).delivered == 28
    assert len(keys_of(sim, "Calls")) == 29 and set(keys_of(sim, "Calls").values()) == {1}


@pytest.mark.parametrize("id_field", ["", "Asterisk_Call_ID"])
def test_a_lost_answer_is_found_again_not_written_twice(org, tmp_path, id_field):
    sim = org["sim"]
    cfg = config(sim, tmp_path, call_id_field=id_field, outcomes={"senior_manager_id": org["boss"]["id"]})
    hostile = channel(org=org, CRM_CALLER_NAME="Evil (Corp), Inc: \\ [x] ]")
    record_over_tcp(cfg, [
        ("1700000000.1", KNOWN, hostile),
        ("1700000000.2", UNKNOWN, channel(UNKNOWN)),
        ("1700000000.3", CONTACT, channel(CONTACT, answered_by="101")),
    ])
    # Every insert is stored, and its answer lost on the way back.
    for module in ("Leads", "Calls", "Tasks"):
        sim.add_fault(rf"^/crm/v8/{module}$", method="POST", close=True, after=True, times=1)
    delivered = []
    for _ in range(5):  # each lost answer fails that round; the next one looks before writing
        delivered.append(flush(cfg).delivered)
        time.sleep(0.06)
    assert delivered[0] == 0 and sum(delivered) == 3
    calls = sim.records("Calls")
    assert len(calls) == 3 and len(sim.records("Tasks")) == 3
    assert len([r for r in sim.records("Leads") if r.get("Phone") == UNKNOWN]) == 1
    if id_field:
        assert sorted(c[id_field] for c in calls) == ["1700000000.1", "1700000000.2", "1700000000.3"]
        assert not any("[" in c["Subject"] and c["Subject"].endswith("]") and "1700000000" in c["Subject"] for c in calls)
    searches = [r for r in sim.api_requests() if r.path.endswith("/search") and "criteria" in r.query]
    assert searches


def test_rate_limit_then_delivered(org, tmp_path):
    sim = org["sim"]
    cfg = config(sim, tmp_path, backoff_initial_ms=10, backoff_max_ms=20)
    record_over_tcp(cfg, [("1700000000.1", KNOWN, channel(org=org))])
    sim.add_fault(r"^/crm/v8/Calls$", 429, method="POST", times=1)
    summary = flush(cfg)
    # The 429 failed one attempt; flush waited as asked and went on.
    assert (summary.failed, summary.delivered) == (1, 1)
    assert [r.status for r in posts(sim, "Calls")] == [429, 201]
    assert len(sim.records("Calls")) == 1


def test_zoho_formats():
    assert duration(0) == "00:00" and duration(43) == "00:43" and duration(3725) == "62:05"
    assert duration(10**9) == "999:59"
    assert criteria_value("a(b),c\\d:e") == "a\\(b\\)\\,c\\\\d:e"


# -- deactivated owners ------------------------------------------------------------------


def test_a_missed_call_of_a_deactivated_owners_contact_is_logged_with_the_fallback_owner(org, tmp_path):
    """Zoho refuses a deactivated user as a record's Owner: the call and the task go to
    outcomes.senior_manager_id instead, not to a dead outcome after five refusals."""
    sim = org["sim"]
    gone = sim.add_user("Gone Rep", "gone@example.com", status="disabled", Extension="199")
    contact = sim.add_record("Contacts", gone, Full_Name="Lola Paz", Last_Name="Paz", Phone="+34928000044")
    cfg = config(sim, tmp_path, outcomes={"senior_manager_id": org["boss"]["id"]}, outbox={"max_attempts": 1})
    routed = {"CRM_ROUTE_STATUS": "UNMAPPED", "CRM_OWNER_ID": gone["id"], "CRM_MODULE": "Contacts", "CRM_RECORD_ID": contact["id"], "CRM_CALLER_NAME": "Lola Paz"}
    record_over_tcp(cfg, [("1700000000.44", "+34928000044", channel("+34928000044", **routed))])
    summary = flush(cfg)
    assert (summary.delivered, summary.dead) == (1, 0)
    [call] = sim.records("Calls")
    [task] = sim.records("Tasks")
    assert call["Owner"]["id"] == org["boss"]["id"] and task["Owner"]["id"] == org["boss"]["id"]
    assert call["Who_Id"] == {"id": contact["id"]}
    assert f"Record owner {gone['id']} is not an active CRM user" in call["Description"]


def test_without_a_fallback_the_crm_default_owner_takes_the_records_of_a_deactivated_owner(org, tmp_path):
    sim = org["sim"]
    gone = sim.add_user("Gone Rep", "gone@example.com", status="disabled")
    contact = sim.add_record("Contacts", gone, Full_Name="Lola Paz", Last_Name="Paz", Phone="+34928000045")
    cfg = config(sim, tmp_path, outbox={"max_attempts": 1})
    # route could not finish: the worker looks the caller up itself and finds the deactivated owner.
    record_over_tcp(cfg, [("1700000000.45", "+34928000045", channel("+34928000045"))])
    assert flush(cfg).delivered == 1
    [call] = sim.records("Calls")
    assert call["Owner"]["id"] != gone["id"] and call["Who_Id"] == {"id": contact["id"]}


def test_a_deactivated_owner_never_rings_even_when_owner_extensions_maps_them(org, tmp_path):
    from conftest import decide

    sim = org["sim"]
    gone = sim.add_user("Gone Rep", "gone@example.com", status="disabled", Extension="199")
    sim.add_record("Contacts", gone, Full_Name="Lola Paz", Last_Name="Paz", Phone="+34928000046")
    cfg = make_config({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES", "owner_extensions": {"gone@example.com": ["199"], "sam@example.com": ["100"]}, "senior_manager": "sam@example.com"},
        "zoho": sim.zoho_config(user_extension_field="Extension"),
    })

    async def scenario():
        app = App.from_config(cfg)
        try:
            return await decide(app, "+34928000046")
        finally:
            await app.aclose()

    decision = run(scenario())
    assert (decision.status.value, decision.target) == ("UNMAPPED", "PJSIP/100")  # the senior manager, not 199
    assert "is not an active CRM user" in decision.reason


# -- a 429 creates nothing; a pause ends when the credentials work --------------------------


def test_a_rate_limited_insert_is_not_an_uncertain_write(org, tmp_path):
    """Zoho's 429 means nothing was created: the next attempt creates the call at once,
    with no search_lag_s wait and no search for what the refused request made."""
    sim = org["sim"]
    cfg = make_config({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES"},
        "zoho": sim.zoho_config(user_extension_field="Extension", search_lag_s=60, backoff_initial_ms=10, backoff_max_ms=20),
        "outbox": {"path": str(tmp_path / "outbox.sqlite"), "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "outcomes": {"missed_known_task": False},
    })
    record_over_tcp(cfg, [("1700000000.1", KNOWN, channel(org=org))])
    sim.add_fault(r"^/crm/v8/Calls$", 429, method="POST", times=1)
    summary = flush(cfg, max_seconds=10)
    assert (summary.failed, summary.delivered) == (1, 1)
    assert [r.status for r in posts(sim, "Calls")] == [429, 201]
    assert not [r for r in sim.api_requests() if r.path.endswith("/Calls/search")]
    assert len(sim.records("Calls")) == 1


def test_status_stops_saying_paused_once_the_credentials_work_even_with_nothing_to_write(org, tmp_path):
    from click.testing import CliRunner

    from fastagi_server.cli import cli

    sim = org["sim"]
    cfg = config(sim, tmp_path)
    record_over_tcp(cfg, [("1700000000.1", KNOWN, channel(org=org))])
    sim.revoke_refresh_token()
    assert flush(cfg).paused
    config_file = tmp_path / "crmroute.toml"
    config_file.write_text(f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n')
    status = lambda: CliRunner().invoke(cli, ["outbox", "status", "--config", str(config_file)]).output  # noqa: E731
    assert "PAUSED" in status()
    sim.refresh_token_revoked = False
    assert flush(cfg).delivered == 1
    assert "PAUSED" not in status()
    # Paused (by another process, say), with nothing left to write: a round with
    # nothing due still asks whether the credentials work, and ends the pause.
    box = Outbox.open(tmp_path / "outbox.sqlite")
    box.set_meta("paused", '{"reason": "the CRM refused our credentials: invalid_code", "since": 0}')
    box.close()
    assert flush(cfg).rounds == 1
    assert "PAUSED" not in status()
    assert [r.query.get("type") for r in sim.api_requests() if r.path.endswith("/users")][-1] == ["CurrentUser"]


# -- a deal's call is the contact's too ---------------------------------------------------------


def test_a_call_routed_by_a_deal_is_linked_to_the_deal_and_its_contact_and_named_by_the_contact(org, tmp_path):
    sim = org["sim"]
    contact = sim.add_record("Contacts", org["ben"], Full_Name="Lucía Romero", Last_Name="Romero", Phone="+34928000055")
    deal = sim.add_record("Deals", org["ana"], Deal_Name="Ampliación", Stage="Negotiation/Review", Contact_Name={"name": "Lucía Romero", "id": contact["id"]})
    cfg = config(sim, tmp_path)

    async def scenario():
        async with agi_server(cfg) as server:
            routed = await AsteriskPeer().call(server.port, asterisk_headers(caller="+34928000055", uniqueid="1700000000.55"))
            variables = {k: v for k, v in routed.variables.items() if k.startswith("CRM_")}
            hangup = asterisk_headers(script="outcome", uniqueid="1700000000.55", caller="+34928000055", extension="s", arguments=("900",))
            await AsteriskPeer(channel_variables={**variables, "DIALSTATUS": "NOANSWER"}).call(server.port, hangup)
            summary = await server.app.delivery_worker.flush()
            return routed.variables, summary

    variables, summary = run(scenario())
    assert (variables["CRM_MODULE"], variables["CRM_RECORD_ID"]) == ("Deals", deal["id"])
    assert variables["CRM_CALLER_NAME"] == "Lucía Romero"  # the caller, not "Ampliación"
    assert summary.delivered == 1
    [call] = sim.records("Calls")
    assert call["What_Id"] == {"id": deal["id"]} and call["$se_module"] == "Deals"
    assert call["Who_Id"] == {"id": contact["id"]}
    assert call["Subject"] == "Missed call from Lucía Romero (+34928000055) [1700000000.55]"
    assert "Deal: Ampliación" in call["Description"]
    [task] = sim.records("Tasks")
    assert task["Who_Id"] == {"id": contact["id"]} and task["What_Id"] == {"id": deal["id"]}
    # The org's users were read once, for the lookup and the writer alike.
    assert len([r for r in sim.api_requests() if r.path.endswith("/users")]) == 1


def test_retry_after_header_holds_the_worker_and_the_breaker(org, tmp_path):
    """Zoho's Retry-After reaches the worker as the rate-limit error's own field:
    the outcome waits as long as the breaker does, not the worker's own back-off."""
    sim = org["sim"]
    cfg = config(sim, tmp_path, backoff_initial_ms=10, backoff_max_ms=120_000)
    record_over_tcp(cfg, [("1700000000.1", KNOWN, channel(org=org))])
    sim.add_fault(r"^/crm/v8/Calls$", 429, method="POST", times=1, headers={"Retry-After": "42"})

    async def scenario():
        app = App.from_config(cfg)
        try:
            started = time.time()
            result = await app.delivery_worker.round()
            row = app.outbox.list_rows()[0]
            return started, result, row
        finally:
            await app.aclose()

    started, result, row = run(scenario())
    assert result.retry_after == pytest.approx(42, abs=1)
    assert row.state == "failed" and row.next_attempt_at - started == pytest.approx(42, abs=5)
    assert [r.status for r in posts(sim, "Calls")] == [429]


def test_rate_limit_error_carries_the_breaker_wait():
    """While the breaker is open after a 429, each refused request says how long is left."""
    from crmlookup.circuit import CircuitBreaker
    from crmlookup.errors import CrmRateLimited
    from crmlookup.zoho.api import ZohoApi

    breaker = CircuitBreaker(failure_threshold=5, open_s=30, backoff_initial_s=1, backoff_max_s=120)
    breaker.record_rate_limited(42)
    api = ZohoApi(None, None, breaker, max_concurrency=1)  # type: ignore[arg-type]
    with pytest.raises(CrmRateLimited) as raised:
        api._check_breaker(None)
    assert raised.value.retry_after == pytest.approx(42, abs=1)
