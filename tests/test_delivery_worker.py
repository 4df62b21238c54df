"""The delivery worker: the call matrix, batching, and every way the CRM can fail."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from conftest import run
from crm_double import CrmDouble
from crmlookup.local_directory import LocalDirectory
from crmlookup.local_directory.writer import LocalDirectoryWriter
from crmlookup.phone import normalise
from crmlookup.records import Owner
from crmlookup.writer import CallEntry, LeadEntry, WriteKind
from dialplan.outbox import Outbox, OutboxSettings, OutcomeSettings, DeliveryWorker
from dialplan.outbox.worker import PAUSE_KEY
from dialplan.outcome import outcome_from_channel
from dialplan.settings import RoutingSettings

NOW = 1_700_000_000.0
USERS = [
    Owner("u1001", "Ana García", "ana.garcia@example.com", ("101",)),
    Owner("u1002", "Ben Okafor", "ben.okafor@example.com", ("102",)),
    Owner("u9", "Sam Senior", "sam@example.com", ("109",)),
]
KNOWN = "+34928000000"  # Leads L-1001, owner Ana (u1001, 101), in the demo directory
UNKNOWN = "+34928999999"


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def routed(caller=KNOWN):
    """The CRM_* values route leaves for a known caller."""
    if caller != KNOWN:
        return {"route_status": "NOMATCH"}
    return {"route_status": "OWNER", "owner_id": "u1001", "module": "Leads", "record_id": "L-1001", "route_extension": "101", "record_name": "Marta Ruiz"}


def outcome(n=1, caller=KNOWN, answered_by="", route=None, ended_at=NOW):
    readings = dict(routed(caller) if route is None else route)
    if answered_by:
        readings.update(dial_status="ANSWER", peer_number=answered_by, answered_s="30")
    else:
        readings.update(dial_status="NOANSWER")
    return outcome_from_channel(call_id=f"1700000000.{n}", caller=caller, readings=readings, ended_at=ended_at, region="ES")


@dataclass
class Rig:
    outbox: Outbox
    worker: DeliveryWorker
    crm: object
    clock: Clock
    directory: LocalDirectory

    def record(self, *outcomes):
        return self.outbox.record_many([(o, self.clock.now) for o in outcomes])

    def flush(self, **kwargs):
        return run(self.worker.flush(**kwargs))

    def round(self):
        return run(self.worker.round())

    def states(self):
        return {row.call_id: row.state for row in self.outbox.list_rows(limit=10_000)}

    def rows(self):
        return {row.call_id: row for row in self.outbox.list_rows(limit=10_000)}


@pytest.fixture
def rig_factory(tmp_path):
    made = []

    def make(crm=None, *, outbox=None, outcomes=None, local_writer=False, directory=None):
        clock = Clock()
        box = Outbox.open(tmp_path / "outbox.sqlite")
        backend = directory or LocalDirectory.open(None)
        writer = LocalDirectoryWriter(backend) if local_writer else (crm or CrmDouble(users_list=USERS))
        settings = OutboxSettings(**{"backoff_initial_s": 10, "backoff_max_s": 80, "auth_retry_s": 60, **(outbox or {})})
        worker = DeliveryWorker(
            box, writer, backend,
            settings=settings,
            outcomes=OutcomeSettings(**{"senior_manager_id": "u9", "timezone": "Europe/Madrid", **(outcomes or {})}),
            routing=RoutingSettings(default_region="ES"),
            clock=clock,
            jitter=lambda: 1.0,
        )
        r = Rig(box, worker, writer, clock, backend)
        made.append(r)
        return r

    yield make
    for r in made:
        r.outbox.close()
        r.directory.close()


# -- the call matrix --------------------------------------------------------------


def test_missed_call_from_a_known_caller(rig_factory):
    rig = rig_factory()
    rig.record(outcome(1))
    summary = rig.flush()
    assert summary.delivered == 1
    [call] = rig.crm.of(WriteKind.CALL)
    entry = call.entry
    assert isinstance(entry, CallEntry)
    assert not entry.answered and entry.duration_seconds == 0
    assert entry.owner_id == "u1001" and (entry.record.module, entry.record.record_id) == ("Leads", "L-1001")
    assert entry.subject == "Missed call from Marta Ruiz (+34928000000)"
    assert entry.start.isoformat() == "2023-11-14T23:13:20+01:00"  # Europe/Madrid, with its offset
    assert "Asterisk call id: 1700000000.1" in entry.description
    [task] = rig.crm.of(WriteKind.TASK)
    assert task.entry.owner_id == "u1001" and task.entry.record == entry.record
    assert task.entry.due.timestamp() == NOW + 4 * 3600
    assert task.entry.subject.startswith("Call back Marta Ruiz")
    assert rig.crm.of(WriteKind.LEAD) == []
    assert rig.states() == {"1700000000.1": "done"}


def test_answered_by_the_owner_logs_the_call_only(rig_factory):
    rig = rig_factory()
    rig.record(outcome(1, answered_by="101"))
    rig.flush()
    [call] = rig.crm.of(WriteKind.CALL)
    assert call.entry.answered and call.entry.duration_seconds == 30 and call.entry.owner_id == "u1001"
    assert call.entry.subject == "Inbound call from Marta Ruiz (+34928000000)"
    assert rig.crm.of(WriteKind.TASK) == []


def test_answered_by_someone_else_gives_the_owner_a_task(rig_factory):
    rig = rig_factory()
    rig.record(outcome(1, answered_by="102"))
    rig.flush()
    [call] = rig.crm.of(WriteKind.CALL)
    assert call.entry.owner_id == "u1002"  # the call belongs to who answered
    [task] = rig.crm.of(WriteKind.TASK)
    assert task.entry.owner_id == "u1001"
    assert "Ben Okafor (extension 102) answered Marta Ruiz" in task.entry.subject


def test_missed_call_from_an_unknown_caller_makes_a_lead_and_a_call_back_task(rig_factory):
    rig = rig_factory()
    rig.record(outcome(1, caller=UNKNOWN))
    rig.flush()
    [lead] = rig.crm.of(WriteKind.LEAD)
    assert isinstance(lead.entry, LeadEntry)
    assert lead.entry.owner_id == "u9" and lead.entry.phone == UNKNOWN
    [call] = rig.crm.of(WriteKind.CALL)
    [task] = rig.crm.of(WriteKind.TASK)
    assert call.entry.record.module == "Leads" and call.entry.record.record_id == lead.record_id
    assert task.entry.record == call.entry.record and task.entry.owner_id == "u9"
    # Leads first, then calls, then tasks.
    assert [module for op, module, _ in rig.crm.requests if op == "create"] == ["Leads", "Calls", "Tasks"]


def test_unknown_caller_answered_makes_a_lead_for_who_answered(rig_factory):
    rig = rig_factory()
    rig.record(outcome(1, caller=UNKNOWN, answered_by="102"))
    rig.flush()
    [lead] = rig.crm.of(WriteKind.LEAD)
    assert lead.entry.owner_id == "u1002"
    [call] = rig.crm.of(WriteKind.CALL)
    assert call.entry.record.record_id == lead.record_id and call.entry.owner_id == "u1002"
    assert rig.crm.of(WriteKind.TASK) == []


@pytest.mark.parametrize("switch, call, expect", [
    ("missed_known_task", outcome(1), {"Calls": 1, "Tasks": 0, "Leads": 0}),
    ("answered_by_other_task", outcome(1, answered_by="102"), {"Calls": 1, "Tasks": 0, "Leads": 0}),
    ("missed_unknown_lead", outcome(1, caller=UNKNOWN), {"Calls": 1, "Tasks": 0, "Leads": 0}),
    ("answered_unknown_lead", outcome(1, caller=UNKNOWN, answered_by="102"), {"Calls": 1, "Tasks": 0, "Leads": 0}),
    ("log_calls", outcome(1), {"Calls": 0, "Tasks": 1, "Leads": 0}),
])
def test_each_row_of_the_matrix_can_be_switched_off(rig_factory, switch, call, expect):
    rig = rig_factory(outcomes={switch: False})
    rig.record(call)
    assert rig.flush().delivered == 1
    assert {kind.value: len(rig.crm.of(kind)) for kind in WriteKind} == expect


def test_withheld_caller_gets_a_call_record_and_no_lead(rig_factory):
    rig = rig_factory()
    rig.record(outcome(1, caller="anonymous", route={}))
    rig.flush()
    [call] = rig.crm.of(WriteKind.CALL)
    assert call.entry.subject == "Missed call from a withheld number"
    assert "Caller: withheld" in call.entry.description
    assert call.entry.record is None
    assert rig.crm.of(WriteKind.LEAD) == []


def test_caller_that_hung_up_during_route_is_looked_up_at_sync_time(rig_factory):
    """No CRM_* on the channel: the worker asks the CRM who owns the caller."""
    rig = rig_factory()
    rig.record(outcome(1, route={}), outcome(2, caller="+34928000002", route={"route_status": "TIMEOUT"}))
    rig.flush()
    calls = {c.entry.key: c.entry for c in rig.crm.of(WriteKind.CALL)}
    assert calls["1700000000.1"].record.record_id == "L-1001" and calls["1700000000.1"].owner_id == "u1001"
    assert calls["1700000000.2"].record.record_id == "D-3001" and calls["1700000000.2"].owner_id == "u1002"


def test_config_owner_extensions_say_who_answered(rig_factory):
    rig = rig_factory()
    rig.worker._routing = RoutingSettings(default_region="ES", owner_extensions={"ben.okafor@example.com": ("222",)})
    rig.record(outcome(1, answered_by="222"))
    rig.flush()
    [call] = rig.crm.of(WriteKind.CALL)
    assert call.entry.owner_id == "u1002"


# -- batching ---------------------------------------------------------------------


def test_records_go_in_batches_of_at_most_100(rig_factory):
    rig = rig_factory()
    rig.record(*(outcome(i) for i in range(250)))
    summary = rig.flush()
    assert summary.delivered == 250
    creates = [(module, n) for op, module, n in rig.crm.requests if op == "create"]
    assert creates == [("Calls", 100), ("Tasks", 100)] * 2 + [("Calls", 50), ("Tasks", 50)]
    assert len(rig.crm.of(WriteKind.CALL)) == 250 and not rig.crm.duplicates()


def test_batch_size_is_configurable_and_capped_by_the_writer(rig_factory):
    crm = CrmDouble(users_list=USERS, max_batch=7)
    rig = rig_factory(crm, outbox={"batch_size": 50})
    rig.record(*(outcome(i) for i in range(20)))
    rig.flush()
    assert max(n for _, _, n in crm.requests) == 7
    assert len(crm.of(WriteKind.CALL)) == 20


# -- reliability ------------------------------------------------------------------


def test_a_rejected_record_goes_dead_with_the_reason_and_blocks_nobody(rig_factory):
    crm = CrmDouble(users_list=USERS, reject=lambda e: "INVALID_DATA: Subject" if e.key == "1700000000.3" and isinstance(e, CallEntry) else None)
    rig = rig_factory(crm, outbox={"max_attempts": 3})
    rig.record(*(outcome(i) for i in range(1, 6)))
    rig.flush()
    states = rig.states()
    assert states.pop("1700000000.3") == "failed"
    assert set(states.values()) == {"done"}
    for _ in range(5):
        rig.clock.now += 1000
        rig.flush()
    row = rig.rows()["1700000000.3"]
    assert row.state == "dead" and row.rejections == 3
    assert row.last_error == "Calls: INVALID_DATA: Subject"
    assert len(crm.of(WriteKind.CALL)) == 4


def test_crm_down_keeps_everything_then_delivers_it_all(rig_factory):
    crm = CrmDouble(users_list=USERS, down=True)
    rig = rig_factory(crm)
    rig.record(*(outcome(i) for i in range(30)))
    for _ in range(12):  # a long outage: many attempts, ever longer back-off
        rig.flush()
        rig.clock.now += 90
    rows = rig.rows()
    assert len(rows) == 30 and {r.state for r in rows.values()} == {"failed"}
    assert min(r.attempts for r in rows.values()) >= 10
    assert all("CrmUnavailable" in r.last_error for r in rows.values())
    crm.down = False
    rig.clock.now += 100
    assert rig.flush().delivered == 30
    assert len(crm.of(WriteKind.CALL)) == 30 and not crm.duplicates()


def test_back_off_doubles_with_jitter_up_to_the_cap(rig_factory):
    crm = CrmDouble(users_list=USERS, down=True)
    rig = rig_factory(crm, outbox={"backoff_initial_s": 10, "backoff_max_s": 80})
    rig.record(outcome(1))
    delays = []
    for _ in range(6):
        rig.round()
        row = rig.rows()["1700000000.1"]
        delays.append(row.next_attempt_at - rig.clock.now)
        rig.clock.now = row.next_attempt_at
    assert delays == [10, 20, 40, 80, 80, 80]  # jitter fixed at its top here
    half = rig_factory(crm)
    half.worker._jitter = lambda: 0.0
    assert half.worker._backoff(2) == 20.0  # the bottom of the jitter: half of 40


def test_revoked_token_pauses_the_queue_and_replays_everything(rig_factory):
    crm = CrmDouble(users_list=USERS)
    rig = rig_factory(crm)
    rig.record(*(outcome(i) for i in range(1, 4)))
    rig.flush()
    crm.revoked = True
    # Old outcomes, new ones: all wait while the token is bad.
    rig.record(*(outcome(i) for i in range(4, 40)))
    summary = rig.flush()
    assert summary.paused.startswith("the CRM refused our credentials")
    assert json.loads(rig.outbox.get_meta(PAUSE_KEY))["reason"] == summary.paused
    rows = rig.rows()
    assert all(rows[f"1700000000.{i}"].attempts == 0 for i in range(4, 40))  # nothing counted
    assert all(rows[f"1700000000.{i}"].state == "pending" for i in range(4, 40))
    # Paused: the running worker does not hammer the CRM.
    requests = len(crm.requests)
    rig.clock.now += 30
    assert run(rig.worker._step()) == pytest.approx(30)
    assert len(crm.requests) == requests
    # Weeks later, a new token: everything goes, however old.
    rig.clock.now += 30 * 86400
    crm.revoked = False
    rig.worker.resume()
    assert rig.flush().delivered == 36
    assert rig.outbox.get_meta(PAUSE_KEY) is None
    assert len(crm.of(WriteKind.CALL)) == 39 and not crm.duplicates()


def test_lost_answers_are_searched_for_never_written_twice(rig_factory):
    crm = CrmDouble(users_list=USERS, lose_answers=2)  # leads and calls made, answers lost
    rig = rig_factory(crm)
    rig.record(*(outcome(i, caller=f"+3492899{i:04d}") for i in range(10)))
    rig.flush()
    assert set(rig.states().values()) == {"failed"}
    rig.clock.now += 100
    rig.flush()
    rig.clock.now += 100
    rig.flush()
    assert set(rig.states().values()) == {"done"}
    assert not crm.duplicates()
    assert len(crm.of(WriteKind.LEAD)) == 10 and len(crm.of(WriteKind.CALL)) == 10 and len(crm.of(WriteKind.TASK)) == 10
    assert ("search", "Leads", 10) in crm.requests
    # Each call is linked to the lead found again, not to a new one.
    leads = {r.entry.key: r.record_id for r in crm.of(WriteKind.LEAD)}
    assert all(c.entry.record.record_id == leads[c.entry.key] for c in crm.of(WriteKind.CALL))


def test_rate_limit_is_honoured(rig_factory):
    crm = CrmDouble(users_list=USERS, rate_limited=1, retry_after=42)
    rig = rig_factory(crm)
    rig.record(outcome(1))
    result = rig.round()
    assert result.retry_after == 42
    row = rig.rows()["1700000000.1"]
    assert row.state == "failed" and row.next_attempt_at == NOW + 42 and "rate limited" in row.last_error
    assert run(rig.worker._step()) == pytest.approx(42)  # the worker holds off
    rig.clock.now += 42
    assert rig.flush().delivered == 1


def test_a_bug_in_a_writer_keeps_the_outcomes_and_the_worker(rig_factory):
    crm = CrmDouble(users_list=USERS)
    rig = rig_factory(crm)

    async def broken(kind, entries):
        raise RuntimeError("boom")

    crm.create = broken
    rig.record(outcome(1))
    rig.round()
    row = rig.rows()["1700000000.1"]
    assert row.state == "failed" and "RuntimeError" in row.last_error


def test_two_missed_calls_from_one_unknown_number_make_one_lead(rig_factory):
    rig = rig_factory(local_writer=True, outcomes={"senior_manager_id": "u1004"})
    rig.record(outcome(1, caller=UNKNOWN), outcome(2, caller=UNKNOWN), outcome(3, caller=UNKNOWN, answered_by="102"))
    for _ in range(3):
        rig.flush()
        rig.clock.now += 10
    assert set(rig.states().values()) == {"done"}
    conn = rig.directory.connection
    leads = conn.execute("SELECT id, owner_id FROM records WHERE module = 'Leads' AND id LIKE 'L-1700%'").fetchall()
    assert leads == [("L-1700000000.1", "u1004")]
    # The later calls found the lead in the directory and were logged on it.
    calls = conn.execute("SELECT key, module, record_id, call_type, owner_id FROM calls ORDER BY key").fetchall()
    assert calls == [
        ("1700000000.1", "Leads", "L-1700000000.1", "Missed", "u1004"),
        ("1700000000.2", "Leads", "L-1700000000.1", "Missed", "u1004"),
        ("1700000000.3", "Leads", "L-1700000000.1", "Inbound", "u1002"),
    ]


def test_one_lead_per_unknown_caller_even_when_the_crm_search_lags(rig_factory):
    """The lookup never sees the new lead (a search index behind, a cached "not found"):
    the outbox remembers the lead it created and logs the later calls on it."""
    rig = rig_factory()
    rig.record(outcome(1, caller=UNKNOWN))
    rig.flush()
    rig.clock.now += 60
    rig.record(outcome(2, caller=UNKNOWN), outcome(3, caller=UNKNOWN, answered_by="102"))
    rig.flush()
    [lead] = rig.crm.of(WriteKind.LEAD)
    calls = {c.entry.key: c.entry for c in rig.crm.of(WriteKind.CALL)}
    assert {c.record.record_id for c in calls.values()} == {lead.record_id}
    assert calls["1700000000.2"].owner_id == "u9"  # the lead's owner
    assert calls["1700000000.3"].owner_id == "u1002"  # who answered
    tasks = rig.crm.of(WriteKind.TASK)
    # Missed twice: two call-back tasks for the lead's owner; answered by Ben, not the owner: a follow-up.
    assert sorted(t.entry.owner_id for t in tasks) == ["u9", "u9", "u9"]


def test_local_directory_keeps_call_history_and_routes_the_new_lead(rig_factory):
    rig = rig_factory(local_writer=True, outcomes={"senior_manager_id": "u1004"})
    rig.record(outcome(1), outcome(2, answered_by="101"), outcome(3, caller=UNKNOWN))
    rig.flush()
    history = rig.crm.calls_for("Leads", "L-1001")
    assert [(c["key"], c["call_type"]) for c in history] == [("1700000000.2", "Inbound"), ("1700000000.1", "Missed")]
    tasks = rig.directory.connection.execute("SELECT owner_id, module, record_id FROM tasks ORDER BY key").fetchall()
    assert tasks == [("u1001", "Leads", "L-1001"), ("u1004", "Leads", "L-1700000000.3")]
    # The unknown caller is now a lead: the next call from them finds its owner.
    found = run(rig.directory.lookup(normalise(UNKNOWN, "ES"), ["Leads"]))
    assert found.best.record_id == "L-1700000000.3" and found.best.owner.id == "u1004"


def test_local_directory_refuses_an_unknown_owner_like_a_crm(rig_factory):
    rig = rig_factory(local_writer=True, outcomes={"senior_manager_id": "nobody"}, outbox={"max_attempts": 1})
    rig.record(outcome(1, caller=UNKNOWN), outcome(2))
    rig.flush()
    rows = rig.rows()
    assert rows["1700000000.1"].state == "dead"
    assert rows["1700000000.1"].last_error == "Leads: owner 'nobody' is not a user of the directory"
    assert rows["1700000000.2"].state == "done"


def test_retry_after_fixing_the_config_replans(rig_factory, tmp_path):
    rig = rig_factory(local_writer=True, outcomes={"senior_manager_id": "nobody"}, outbox={"max_attempts": 1})
    rig.record(outcome(1, caller=UNKNOWN))
    rig.flush()
    assert rig.states() == {"1700000000.1": "dead"}
    fixed = rig_factory(local_writer=True, directory=rig.directory, outcomes={"senior_manager_id": "u1004"})
    assert fixed.outbox.retry(fixed.clock.now) == 1
    fixed.flush()
    assert fixed.states() == {"1700000000.1": "done"}


def test_the_worker_runs_in_the_background_and_stops(rig_factory):
    crm = CrmDouble(users_list=USERS)
    rig = rig_factory(crm, outbox={"flush_interval_s": 30})
    rig.worker._clock = __import__("time").time

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(rig.worker.run(stop))
        await asyncio.sleep(0.05)
        await rig.outbox.record(outcome(1, ended_at=rig.worker._clock()), rig.worker._clock())
        rig.worker.wake()
        for _ in range(100):
            if crm.of(WriteKind.CALL):
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 5)

    run(scenario())
    assert len(crm.of(WriteKind.CALL)) == 1


def test_a_lost_answer_is_looked_for_only_once_the_crm_search_can_show_it(rig_factory):
    crm = CrmDouble(users_list=USERS, lose_answers=1, search_lag_s=30)
    rig = rig_factory(crm)
    rig.record(outcome(1))
    rig.flush()  # the call is created, its answer lost
    rig.clock.now += 10  # the back-off is over, but the search may not show the call yet
    assert rig.round().deferred == 1
    assert not any(op == "search" for op, _, _ in crm.requests)
    row = rig.rows()["1700000000.1"]
    assert row.state == "failed" and row.attempts == 1 and row.next_attempt_at == NOW + 30
    rig.clock.now = NOW + 30
    assert rig.flush().delivered == 1
    assert ("search", "Calls", 1) in crm.requests and not crm.duplicates()
