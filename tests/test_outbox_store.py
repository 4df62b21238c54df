"""The outbox file: durable, idempotent on the call id, explicit states."""

import asyncio
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import run
from dialplan.outbox import Outbox, OutboxCallHistory, OutboxError, OutboxState
from dialplan.outbox.store import Finish, WriteState
from dialplan.outcome import outcome_from_channel

NOW = 1_700_000_000.0


def outcome(n=1, caller="+34928000000", answered=False, extension="", ended_at=NOW):
    readings = {"dial_status": "ANSWER" if answered else "NOANSWER", "answered_by": extension}
    return outcome_from_channel(call_id=f"{int(ended_at)}.{n}", caller=caller, readings=readings, ended_at=ended_at, region="ES")


@pytest.fixture
def box(tmp_path):
    b = Outbox.open(tmp_path / "outbox.sqlite")
    yield b
    b.close()


def test_record_is_idempotent_on_the_call_id(box):
    assert box.record_many([(outcome(1), NOW)]) == [True]
    assert box.record_many([(outcome(1), NOW + 5), (outcome(2), NOW)]) == [False, True]
    assert box.counts() == {"pending": 2, "in_flight": 0, "done": 0, "failed": 0, "dead": 0}


def test_file_is_wal_and_full_sync(box, tmp_path):
    conn = sqlite3.connect(tmp_path / "outbox.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_concurrent_records_share_commits_and_each_is_kept(tmp_path):
    async def scenario():
        b = Outbox.open(tmp_path / "o.sqlite")
        try:
            results = await asyncio.gather(*(b.record(outcome(i), NOW) for i in range(300)))
            again = await asyncio.gather(*(b.record(outcome(i), NOW) for i in range(0, 300, 7)))
            return results, again
        finally:
            await b.aclose()

    results, again = run(scenario())
    assert results == [True] * 300 and not any(again)
    reopened = Outbox.open(tmp_path / "o.sqlite")
    assert reopened.counts()["pending"] == 300
    reopened.close()


def test_a_failed_commit_is_reported_and_the_next_one_works(tmp_path):
    async def scenario():
        b = Outbox.open(tmp_path / "o.sqlite")
        good = b.record_many
        calls = []

        def flaky(batch):
            calls.append(len(batch))
            if len(calls) == 1:
                raise sqlite3.OperationalError("disk I/O error")
            return good(batch)

        b.record_many = flaky
        try:
            with pytest.raises(OutboxError, match="disk I/O error"):
                await b.record(outcome(1), NOW)
            return await b.record(outcome(1), NOW), b.counts()["pending"]
        finally:
            await b.aclose()

    assert run(scenario()) == (True, 1)


def test_record_survives_sigkill_right_after_it_returns(tmp_path):
    """Committed means on disk: a process killed just after recording keeps it."""
    path = tmp_path / "o.sqlite"
    script = f"""
import asyncio, os, signal, sys
sys.path.insert(0, {os.getcwd()!r})
from dialplan.outbox import Outbox
from dialplan.outcome import outcome_from_channel
async def main():
    box = Outbox.open({str(path)!r})
    o = outcome_from_channel(call_id="1700000000.9", caller="+34928000000", readings={{}}, ended_at=1.7e9, region="ES")
    await box.record(o, 1.7e9)
    os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    box = Outbox.open(path)
    assert box.counts()["pending"] == 1
    box.close()


def test_claim_leases_and_finish_needs_the_lease(box):
    box.record_many([(outcome(i), NOW) for i in range(5)])
    first = box.claim(NOW, 3, lease_s=60)
    assert len(first) == 3
    assert box.claim(NOW, 10, 60).__len__() == 2  # the rest
    assert box.claim(NOW + 30, 10, 60) == []  # all leased
    # A finish with a stale lease token changes nothing.
    box.finish([Finish(first[0].id, "someone-else", OutboxState.DONE)], NOW)
    assert box.counts()["in_flight"] == 5
    box.finish([Finish(first[0].id, first[0].lease_token, OutboxState.DONE)], NOW)
    assert box.counts()["done"] == 1
    # Leases run out: the rest is claimable again.
    again = box.claim(NOW + 61, 10, 60)
    assert len(again) == 4


def test_failed_waits_for_its_next_attempt(box):
    box.record_many([(outcome(1), NOW)])
    [item] = box.claim(NOW, 10, 60)
    box.finish([Finish(item.id, item.lease_token, OutboxState.FAILED, "CRM down", NOW + 100)], NOW)
    assert box.claim(NOW + 99, 10, 60) == []
    [again] = box.claim(NOW + 100, 10, 60)
    assert again.attempts == 1 and again.rejections == 0
    [row] = box.list_rows()
    assert row.state == "in_flight" and row.last_error == "CRM down"


def test_orphaned_claims_of_a_dead_process_are_released(box, tmp_path):
    box.record_many([(outcome(1), NOW)])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    token = f"{os.uname().nodename}:{dead.pid}:abc"
    box._conn.execute("UPDATE outcomes SET state = 'in_flight', lease_until = ?, lease_token = ?", (NOW + 3600, token))
    assert box.claim(NOW, 10, 60) == []
    assert box.release_orphans(NOW) == 1
    assert len(box.claim(NOW, 10, 60)) == 1
    # Our own claims and other machines' are never touched.
    box._conn.execute("UPDATE outcomes SET state = 'in_flight', lease_until = ?, lease_token = ?", (NOW + 3600, f"otherhost:{dead.pid}:x"))
    assert box.release_orphans(NOW) == 0


def test_writes_are_tracked_per_step(box):
    box.record_many([(outcome(1), NOW)])
    [item] = box.claim(NOW, 10, 60)
    box.mark_writes([(item.id, "lead", WriteState.SENT, "", "")], NOW)
    box.mark_writes([(item.id, "lead", WriteState.DONE, "L-9", ""), (item.id, "call", WriteState.REJECTED, "", "INVALID_DATA")], NOW)
    writes = box.writes_for([item.id])[item.id]
    assert writes["lead"].state is WriteState.DONE and writes["lead"].crm_id == "L-9"
    assert writes["call"].error == "INVALID_DATA"


def test_retry_and_replay(box):
    box.record_many([(outcome(i), NOW) for i in range(3)])
    items = box.claim(NOW, 10, 60)
    box.save_contexts([(items[0].id, {"module": "Leads"}), (items[1].id, {"module": "Leads"})])
    box.mark_writes([(items[1].id, "call", WriteState.DONE, "C-1", "")], NOW)
    box.finish([
        Finish(items[0].id, items[0].lease_token, OutboxState.DEAD, "bad owner", rejected=True),
        Finish(items[1].id, items[1].lease_token, OutboxState.DONE),
        Finish(items[2].id, items[2].lease_token, OutboxState.FAILED, "down", NOW + 500),
    ], NOW)
    assert box.retry(NOW + 1, [items[0].id, 999]) == 1
    rows = {r.id: r for r in box.list_rows()}
    assert rows[items[0].id].state == "pending" and rows[items[0].id].rejections == 0
    # Nothing was written for it: the CRM will be asked about the caller again.
    assert box.claim(NOW + 1, 1, 60)[0].context is None
    assert box.retry(NOW + 2) == 1  # --all: the failed one
    # Replay makes done outcomes due again, their records uncertain (looked for, not re-created).
    assert box.replay(NOW - 10, NOW + 3) == 2  # the one in flight is left alone
    writes = box.writes_for([items[1].id])[items[1].id]
    assert writes["call"].state is WriteState.SENT and writes["call"].crm_id == "C-1"
    assert box.replay(NOW + 10, NOW + 3) == 0


def test_purge_keeps_what_is_not_delivered(box):
    box.record_many([(outcome(1, ended_at=NOW), NOW), (outcome(2, ended_at=NOW), NOW)])
    [a, b] = box.claim(NOW, 10, 60)
    box.finish([Finish(a.id, a.lease_token, OutboxState.DONE), Finish(b.id, b.lease_token, OutboxState.FAILED, "x", NOW)], NOW)
    assert box.purge_done(NOW + 1) == 1
    assert box.counts()["failed"] == 1


def test_history_gives_the_last_extension_that_answered(box):
    box.record_many([
        (outcome(1, answered=True, extension="101", ended_at=NOW - 7200), NOW),
        (outcome(2, answered=True, extension="102", ended_at=NOW - 60), NOW),
        (outcome(3, answered=False, ended_at=NOW - 10), NOW),  # missed: not an answer
        (outcome(4, caller="+34928000009", answered=True, extension="109", ended_at=NOW), NOW),
    ])
    history = OutboxCallHistory(box, clock=lambda: NOW)

    async def ask():
        return (
            await history.last_answered_extension("+34928000000", 3600),
            await history.last_answered_extension("+34928000000", 30),
            await history.last_answered_extension("+34928000000", 86400),
            await history.last_answered_extension("+34600000000", 86400),
            await history.last_answered_extension("", 86400),
        )

    assert run(ask()) == ("102", None, "102", None, None)


def test_not_an_outbox(tmp_path):
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)")
    with pytest.raises(OutboxError, match="not a crmroute outbox"):
        Outbox.open(other)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError):
        Outbox.open(garbage)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutboxError):
        Outbox.open(tmp_path / "a-file" / "x.sqlite")  # its directory is a file
