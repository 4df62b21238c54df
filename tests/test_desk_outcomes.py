"""After the call: the outcome on the Desk ticket that routed it (a call activity), exactly once,
and the CRM's own Call beside it, over real HTTP against both simulators."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import make_config, run, zoho_toml
from dialplan.outbox import Outbox
from dialplan.outcome import CallOutcome, outcome_from_channel
from fastagi_server.app import App
from test_outbox_crash import flush_command, flush_env, flush_killed, flush_until_done, record_now
from zoho_desk_simulator import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoDeskSimulator
from zoho_simulator import ZohoSimulator

KNOWN = "+34928000000"


def setup(zoho: ZohoSimulator, desk: ZohoDeskSimulator) -> dict[str, str]:
    ana = zoho.add_user("Ana García", "ana@example.com", Extension="101")
    lead = zoho.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
    support = desk.add_department("Support")
    agent = desk.add_agent("Dee", "Desk", email="dee@example.com", extn="201")
    ticket = desk.add_ticket(KNOWN, assignee=agent, department=support)
    return {"ana": ana["id"], "lead": lead["id"], "agent": agent, "ticket": ticket, "support": support}


def routed_by_ticket(call_id: str, ids: dict[str, str], **readings: str) -> CallOutcome:
    route = {"route_status": "OWNER", "owner_id": ids["agent"], "module": "Tickets", "record_id": ids["ticket"], "route_extension": "201"}
    return outcome_from_channel(call_id=call_id, caller=KNOWN, readings={**route, **readings}, ended_at=1_767_300_000.0, region="ES")


def config_for(zoho: ZohoSimulator, desk: ZohoDeskSimulator, tmp_path: Path, store: str = "", **desk_keys: Any) -> Any:
    return make_config({
        **({"store": {"url": store}} if store else {}),
        "crm": {"backend": "zoho"},
        "zoho": zoho.zoho_config(user_extension_field="Extension", search_lag_s=0),
        "mirror": {"enabled": False},
        "zoho_desk": desk.desk_config(search_lag_s=0, **desk_keys),
        "routing": {"default_region": "ES", "lookup_order": ["Tickets", "Leads", "Contacts"]},
        "outbox": {"path": str(tmp_path / "outbox.sqlite"), "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "outcomes": {"timezone": "Europe/Madrid"},
    })


def flush(config: Any, outcomes: list[CallOutcome]) -> Any:
    async def scenario() -> Any:
        app = App.from_config(config)
        try:
            for outcome in outcomes:
                await app.record_outcome(outcome, outcome.ended_at)
            await app.delivery_worker.flush(max_seconds=30)
            return app.outbox.counts()
        finally:
            await app.aclose()

    return run(scenario())


def test_a_call_a_ticket_routed_is_logged_on_the_ticket_and_in_the_crm(tmp_path: Path) -> None:
    with ZohoSimulator() as zoho, ZohoDeskSimulator() as desk:
        ids = setup(zoho, desk)
        answered = routed_by_ticket("1767300000.1", ids, dial_status="ANSWER", peer_number="201", answered_s="75")
        missed = routed_by_ticket("1767300000.2", ids, dial_status="NOANSWER")
        counts = flush(config_for(zoho, desk, tmp_path), [answered, missed])
        assert counts["done"] == 2
        calls = {call["subject"].rsplit("[", 1)[1].rstrip("]"): call for call in desk.calls_on(ids["ticket"])}
        assert set(calls) == {"1767300000.1", "1767300000.2"}
        first = calls["1767300000.1"]
        assert first["status"] == "Completed" and first["direction"] == "inbound" and first["duration"] == "75"
        assert first["ownerId"] == ids["agent"] and first["departmentId"] == ids["support"]
        assert first["contactId"] == desk.tickets[ids["ticket"]]["contactId"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["startTime"])
        assert calls["1767300000.2"]["status"] == "Missed"
        # The CRM still gets its Call, on the caller's CRM record (the lead), not on the ticket.
        crm_calls = zoho.records("Calls")
        assert len(crm_calls) == 2 and {c["What_Id"]["id"] for c in crm_calls} == {ids["lead"]}


def test_log_calls_off_writes_only_the_crm(tmp_path: Path) -> None:
    with ZohoSimulator() as zoho, ZohoDeskSimulator() as desk:
        ids = setup(zoho, desk)
        counts = flush(config_for(zoho, desk, tmp_path, log_calls=False), [routed_by_ticket("1767300000.1", ids, dial_status="NOANSWER")])
        assert counts["done"] == 1 and desk.calls == [] and len(zoho.records("Calls")) == 1


def test_desk_down_the_ticket_call_waits_and_is_written_once(tmp_path: Path) -> None:
    with ZohoSimulator() as zoho, ZohoDeskSimulator() as desk:
        ids = setup(zoho, desk)
        desk.fail_next("/api/v1/calls", 503, {"errorCode": "INTERNAL_SERVER_ERROR", "message": "down"}, count=2)
        config = config_for(zoho, desk, tmp_path)
        outcome = routed_by_ticket("1767300000.1", ids, dial_status="NOANSWER")
        flush(config, [outcome])
        flush(config, [])
        flush(config, [])
        assert len(desk.calls_on(ids["ticket"])) == 1
        assert len(zoho.records("Calls")) == 1


def test_a_ticket_call_whose_answer_was_lost_is_found_not_written_twice(tmp_path: Path) -> None:
    """The activity exists in Desk (the answer never came back), the outbox says 'sent': it is found by its call id."""
    with ZohoSimulator() as zoho, ZohoDeskSimulator() as desk:
        ids = setup(zoho, desk)
        config = config_for(zoho, desk, tmp_path)
        outcome = routed_by_ticket("1767300000.1", ids, dial_status="NOANSWER")
        flush(config, [outcome])
        assert len(desk.calls_on(ids["ticket"])) == 1
        box = Outbox.open(tmp_path / "outbox.sqlite")
        try:
            box._conn.execute("UPDATE writes SET state = 'sent', crm_id = '' WHERE step = 'ticket'")
            box._conn.execute("UPDATE outcomes SET state = 'failed', next_attempt_at = 0")
            box._conn.commit()
        finally:
            box.close()
        assert flush(config, [])["done"] == 1
        assert len(desk.calls_on(ids["ticket"])) == 1


CALLS = 60
KILLS = 15


def test_sigkill_during_flush_logs_each_call_on_the_ticket_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    with ZohoSimulator(latency_s=0.01, max_tokens_per_window=1000) as zoho, ZohoDeskSimulator(rate_limit_per_s=None) as desk:
        desk.latency_s = 0.015
        ids = setup(zoho, desk)
        outbox_path = tmp_path / "outbox.sqlite"
        config_path = tmp_path / "crmroute.toml"
        config_path.write_text(zoho_toml(zoho, routing="""
lookup_order = ["Tickets", "Leads", "Contacts"]
""", zoho="""
user_extension_field = "Extension"
search_lag_s = 0
breaker_open_s = 1
""", rest=f"""
[zoho_desk]
accounts_url = "{desk.url}"
api_url = "{desk.url}"
org_id = "{desk.org_id}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
refresh_token = "{REFRESH_TOKEN}"
token_cache_file = "{tmp_path / 'desk-token.json'}"
search_lag_s = 0
breaker_open_s = 1
[outbox]
path = "{outbox_path}"
batch_size = 7
backoff_initial_s = 0.01
backoff_max_s = 0.05
lease_s = 600
"""))
        now = time.time()
        recorded = [
            routed_by_ticket(f"{int(now)}.{i}", ids, **({"dial_status": "ANSWER", "peer_number": "201", "answered_s": "30"} if i % 2 else {"dial_status": "NOANSWER"}))
            for i in range(CALLS)
        ]
        record_now(outbox_path, recorded)

        command = flush_command(config_path)
        env = flush_env()
        killed_mid_write = flush_killed(command, env, outbox_path, KILLS, lambda: rng.uniform(0.5, 1.8))
        flush_until_done(command, env)
        assert killed_mid_write >= 2, f"only {killed_mid_write} kills hit a write in flight"
        box = Outbox.open(outbox_path)
        assert box.counts()["done"] == CALLS
        box.close()
        on_ticket = Counter(call["subject"].rsplit("[", 1)[1].rstrip("]") for call in desk.calls_on(ids["ticket"]))
        assert on_ticket == Counter(o.call_id for o in recorded), "every call on the ticket exactly once"
        in_crm = Counter(re.search(r"\[([^\]]+)\]$", r["Subject"]).group(1) for r in zoho.records("Calls"))  # type: ignore[union-attr]
        assert in_crm == Counter(o.call_id for o in recorded), "and in the CRM exactly once"


def test_the_crm_writer_keeps_its_recording_uploads_beside_desk(tmp_path: Path) -> None:
    from crmlookup.writer import RecordingWriter

    with ZohoSimulator() as zoho, ZohoDeskSimulator() as desk:
        async def scenario() -> tuple[bool, bool, str]:
            app = App.from_config(config_for(zoho, desk, tmp_path))
            try:
                crm = app.writer.crm  # type: ignore[attr-defined]
                return isinstance(crm, RecordingWriter), isinstance(app.writer, RecordingWriter), app.writer.name
            finally:
                await app.aclose()

        crm_records, both_record, name = run(scenario())
        assert crm_records == both_record and name == "zoho+zoho_desk"


def test_on_the_shared_postgresql_store_the_ticket_call_is_written_once_too(tmp_path: Path) -> None:
    """Several routers share one PostgreSQL store: the ticket step is a write like the others there."""
    from postgres_server import fresh_database

    with fresh_database() as database, ZohoSimulator() as zoho, ZohoDeskSimulator() as desk:
        ids = setup(zoho, desk)
        config = config_for(zoho, desk, tmp_path, store=database)
        outcome = routed_by_ticket("1767300000.1", ids, dial_status="ANSWER", peer_number="201", answered_s="12")
        assert flush(config, [outcome])["done"] == 1
        assert flush(config, [outcome])["done"] == 1  # recorded again: still one outcome, nothing written twice
        assert len(desk.calls_on(ids["ticket"])) == 1 and len(zoho.records("Calls")) == 1
