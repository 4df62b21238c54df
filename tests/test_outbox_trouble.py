"""An outbox that cannot be opened, or that stops taking commits, never stops
routing: ``serve`` starts, routes, says at ERROR what is wrong and tries again;
an outcome that cannot be committed waits in memory until it can, and the
dialplan is told (``CRM_OUTCOME=recorded|failed``). Real ``crmroute serve``
processes, real files; a full disk is a file size limit (RLIMIT_FSIZE)."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3

import pytest

from asterisk_peer import AsteriskPeer, answered_call_channel, asterisk_headers
from conftest import run
from dialplan.outbox import Outbox
from serve_process import ServeProcess


def write_config(tmp_path, outbox_path):
    path = tmp_path / "crmroute.toml"
    path.write_text(f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{outbox_path}"\n')
    return path


def route(serve: ServeProcess) -> str:
    return run(AsteriskPeer().call(serve.port, asterisk_headers())).variables.get("CRM_ROUTE_STATUS", "")


def outcome(serve: ServeProcess, uniqueid: str) -> str:
    headers = asterisk_headers(script="outcome", uniqueid=uniqueid, extension="s", arguments=("900",))
    return run(AsteriskPeer(channel_variables=answered_call_channel(0.0)).call(serve.port, headers)).variables.get("CRM_OUTCOME", "")


def stored_call_ids(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT call_id FROM outcomes ORDER BY call_id")]
    finally:
        conn.close()


def not_a_database(tmp_path):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not an SQLite file at all\n" * 200)
    return path, "file is not a database"


def truncated(tmp_path):
    path = tmp_path / "outbox.sqlite"
    Outbox.open(path).close()
    with open(path, "r+b") as handle:
        handle.truncate(1000)  # cut inside the first page
    return path, "cannot open outbox"


def under_a_file(tmp_path):
    (tmp_path / "state").write_text("a file where the outbox's folder should be")
    return tmp_path / "state" / "outbox.sqlite", "cannot open outbox"


def in_a_read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder all the same")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder / "outbox.sqlite", "cannot open outbox"


@pytest.mark.parametrize("broken", [not_a_database, truncated, under_a_file, in_a_read_only_folder], ids=lambda f: f.__name__)
def test_serve_routes_without_a_usable_outbox(tmp_path, broken):
    path, problem = broken(tmp_path)
    with ServeProcess(write_config(tmp_path, path)) as serve:
        error = serve.wait_for(r" ERROR crmroute.outbox: .*routing goes on")
        assert problem in error.string and str(path) in error.string
        assert route(serve) == "OWNER"
        assert outcome(serve, "1700000000.1") == "failed"  # not on disk: kept in memory
        assert route(serve) == "OWNER"
        assert serve.stop() == 0
        log = serve.log
    assert "NOT recorded" in log and '"call_id": "1700000000.1"' in log  # stopped while still unusable: told whole


def test_an_outbox_fixed_later_is_opened_and_takes_what_waited(tmp_path):
    path, _ = not_a_database(tmp_path)
    with ServeProcess(write_config(tmp_path, path)) as serve:
        serve.wait_for(" ERROR crmroute.outbox: ")
        assert outcome(serve, "1700000000.1") == "failed"
        path.unlink()  # the admin moves the broken file away
        serve.wait_for("1 outcome\\(s\\) kept in memory are committed", timeout=30)
        serve.wait_for("delivery worker started")
        assert outcome(serve, "1700000000.2") == "recorded"
        assert serve.stop() == 0
        assert "NOT recorded" not in serve.log
    assert stored_call_ids(path) == ["1700000000.1", "1700000000.2"]


def test_a_full_disk_keeps_outcomes_in_memory_until_there_is_room(tmp_path):
    """Writes past 33 KB fail as on a full disk (EFBIG); the outbox itself opens."""
    path = tmp_path / "outbox.sqlite"
    Outbox.open(path).close()

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (33_000, resource.RLIM_INFINITY))

    with ServeProcess(write_config(tmp_path, path), preexec_fn=small_disk) as serve:
        serve.wait_for("delivery worker started")
        told = [outcome(serve, f"1700000000.{i}") for i in range(40)]
        assert told[0] == "recorded" and "failed" in told, told
        first_failed = told.index("failed")
        assert route(serve) == "OWNER"
        resource.prlimit(serve.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again
        serve.wait_for("kept in memory are committed", timeout=30)
        assert outcome(serve, "1700000000.99") == "recorded"
        assert serve.stop() == 0
        log = serve.log
    assert "NOT recorded" not in log
    assert "cannot commit" in log
    expected = sorted([f"1700000000.{i}" for i in range(40)] + ["1700000000.99"])
    assert stored_call_ids(path) == expected
    assert first_failed >= 1


def test_an_outcome_that_comes_while_the_outbox_is_being_opened_waits_for_it(tmp_path):
    """Right after start-up the server may still be opening its outbox: an outcome then
    is committed once it is open, and the dialplan hears "recorded", not "failed"."""
    import asyncio
    import time

    from dialplan.outbox import OutboxKeeper, Recording
    from dialplan.outcome import outcome_from_channel

    path = tmp_path / "outbox.sqlite"
    Outbox.open(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the open waits for this lock, as for a slow disk

    async def scenario():
        keeper = OutboxKeeper(path)
        opening = asyncio.ensure_future(keeper.open())  # what serve's keeper starts with
        await asyncio.sleep(0)
        outcome = outcome_from_channel(call_id="1700000000.9", caller="+34928000000", readings={"dial_status": "ANSWER"}, ended_at=time.time(), region="ES")
        recording = asyncio.ensure_future(keeper.record(outcome, time.time()))
        await asyncio.sleep(0.2)
        assert not recording.done(), "it waits for the open under way"
        blocker.execute("ROLLBACK")
        result = await recording
        await opening
        await keeper.aclose()
        return result

    assert run(scenario()) is Recording.RECORDED
    blocker.close()
    assert stored_call_ids(path) == ["1700000000.9"]
