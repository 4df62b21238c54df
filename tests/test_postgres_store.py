"""The outbox in PostgreSQL (``[store] url``), on a real server: what several routers share.

Each store here is what one router opens (its own pool); two of them on one
database are two routers. Concurrency is real: threads started together
behind a barrier.
"""

from __future__ import annotations

import threading
from dataclasses import replace
import time
from pathlib import Path

import pytest

from conftest import make_config, run
from dialplan.outbox import OutboxError, OutboxKeeper, OutboxState, Recording, StoreSettings, open_store
from dialplan.outbox.interface import OutboxStore
from dialplan.outbox.settings import redacted_url
from dialplan.outbox.store import Finish, WriteState
from dialplan.outcome import CallOutcome, outcome_from_channel
from fastagi_server.config import ConfigError
from postgres_server import base_url, fresh_database, stop_server


@pytest.fixture
def database():
    with fresh_database() as url:
        yield url


def store_for(url: str, **settings) -> OutboxStore:
    return open_store(Path("unused.sqlite"), StoreSettings(url=url, **settings))


def outcome(i: int, caller: str = "+34928000000", answered_by: str = "", ended_at: float | None = None) -> CallOutcome:
    readings = {"dial_status": "ANSWER", "peer_number": answered_by, "answered_s": "10"} if answered_by else {"dial_status": "NOANSWER", "route_status": "NOMATCH"}
    return outcome_from_channel(call_id=f"1700000000.{i}", caller=caller, readings=readings, ended_at=ended_at or time.time(), region="ES")


# -- settings ------------------------------------------------------------------------


def test_the_store_section_is_typed_and_its_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^store: url must be a PostgreSQL URL"):
        make_config({"store": {"url": "mysql://secret@db/x"}})
    with pytest.raises(ConfigError, match=r"store.pool_max: expected an integer"):
        make_config({"store": {"pool_max": "4"}})
    with pytest.raises(ConfigError, match=r"pool_max must not be less than pool_min"):
        make_config({"store": {"pool_min": 5, "pool_max": 2}})
    with pytest.raises(ConfigError, match=r"url and url_file are both set"):
        make_config({"store": {"url": "postgresql://db/x", "url_file": str(tmp_path / "url")}})
    config = make_config({"store": {"url": "postgresql://crmroute:hunter2@db.example.com/crmroute"}})
    assert "hunter2" not in repr(config), "the URL may hold a password: never in a repr"
    assert redacted_url(config.store.url) == "postgresql://crmroute:***@db.example.com/crmroute"


def test_the_url_and_the_password_come_from_files_or_the_environment(tmp_path):
    url_file = tmp_path / "store-url"
    url_file.write_text("postgresql://crmroute@db.example.com/crmroute\n")
    password_file = tmp_path / "store-password"
    password_file.write_text("s3cret\n")
    settings = StoreSettings(url_file=str(url_file), password_file=str(password_file))
    assert settings.resolved_url() == "postgresql://crmroute@db.example.com/crmroute"
    assert settings.resolved_password() == "s3cret"
    env = {"CRMROUTE_STORE_URL": "postgresql://other/x", "CRMROUTE_STORE_PASSWORD": "p"}
    assert StoreSettings().resolved_url(env) == "postgresql://other/x" and StoreSettings().resolved_password(env) == "p"
    assert StoreSettings().resolved_url({}) == "", "no URL anywhere: the SQLite outbox"
    with pytest.raises(ValueError, match=r"^url_file: cannot read"):
        StoreSettings(url_file=str(tmp_path / "missing")).resolved_url()
    with pytest.raises(ValueError, match=r"^\$CRMROUTE_STORE_URL must be a PostgreSQL URL"):
        StoreSettings().resolved_url({"CRMROUTE_STORE_URL": "sqlite:///x"})


def test_a_database_that_cannot_be_reached_is_an_outbox_error_naming_it_without_the_password():
    base_url()  # the driver is installed
    with pytest.raises(OutboxError) as caught:
        store_for("postgresql://crmroute:hunter2@127.0.0.1:9/crmroute", connect_timeout_s=1)
    assert "127.0.0.1:9" in str(caught.value) and "hunter2" not in str(caught.value)


# -- one router ----------------------------------------------------------------------


def test_record_claim_finish_and_the_history(database):
    store = store_for(database)
    try:
        now = time.time()
        assert store.record_many([(outcome(1, answered_by="101", ended_at=now - 30), now), (outcome(2), now)]) == [True, True]
        assert store.record_many([(outcome(1), now)]) == [False], "one outcome per call id"
        assert run(store.record(outcome(3), now)) is True
        assert store.counts()["pending"] == 3
        items = store.claim(now, 10, 60)
        assert [i.outcome.call_id for i in items] == ["1700000000.1", "1700000000.2", "1700000000.3"]
        assert store.claim(now, 10, 60) == [], "claimed outcomes are not claimed again while leased"
        store.mark_writes([(items[0].id, "call", WriteState.DONE, "C-1", "")], now)
        assert store.writes_for([items[0].id])[items[0].id]["call"].crm_id == "C-1"
        store.finish([Finish(items[0].id, items[0].lease_token, OutboxState.DONE), Finish(items[1].id, "not-ours", OutboxState.DONE)], now)
        assert store.states_of([i.id for i in items]) == {items[0].id: "done", items[1].id: "in_flight", items[2].id: "in_flight"}
        assert store.last_answered_extension("+34928000000", now - 3600) == "101"
        assert store.claim(now + 61, 10, 60) != [], "an expired lease is taken up again"
        store.set_meta("paused", "x")
        assert store.get_meta("paused") == "x"
        store.set_meta("paused", None)
        assert store.get_meta("paused") is None
        assert store.list_rows(OutboxState.DONE)[0].call_id == "1700000000.1"
    finally:
        store.close()


def test_text_that_would_break_sql_is_kept_as_data(database):
    store = store_for(database)
    try:
        hostile = "'); DROP TABLE outcomes; --\u2028\n\"x\"\x00"[:-1]
        made = replace(outcome(1, answered_by="101"), caller_e164=hostile, answered_extension=hostile)
        assert store.record_many([(made, time.time())]) == [True]
        assert [i.outcome.caller_e164 for i in store.claim(time.time(), 5, 60)] == [hostile]
        assert store.last_answered_extension(hostile, 0) == hostile
    finally:
        store.close()


# -- two routers on one database -------------------------------------------------------


def together(count: int, work) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_two_routers_never_claim_the_same_outcome(database):
    stores = [store_for(database), store_for(database)]
    try:
        now = time.time()
        stores[0].record_many([(outcome(i, caller=f"+3492877{i:04d}"), now) for i in range(300)])

        def drain(i: int) -> list[int]:
            taken = []
            while batch := stores[i].claim(now, 7, 600):
                taken += [item.id for item in batch]
            return taken

        first, second = together(2, drain)
        assert not set(first) & set(second)
        assert len(first) + len(second) == 300
    finally:
        for store in stores:
            store.close()


def test_one_lead_per_unknown_caller_whichever_router_asks(database):
    stores = [store_for(database), store_for(database)]
    try:
        now = time.time()
        ids = []
        for i in range(40):
            stores[0].record_many([(outcome(i * 2, caller=f"+3492877{i:04d}"), now), (outcome(i * 2 + 1, caller=f"+3492877{i:04d}"), now)])
        rows = {row.call_id: row.id for row in stores[0].list_rows(limit=100)}
        ids = [(rows[f"1700000000.{i * 2}"], rows[f"1700000000.{i * 2 + 1}"], f"+3492877{i:04d}") for i in range(40)]

        def claim(i: int) -> set[int]:
            return stores[i].claim_leads([(pair[i], caller) for *pair, caller in ids], now)

        refused_a, refused_b = together(2, claim)
        for first, second, _ in ids:
            assert (first in refused_a) != (second in refused_b), "exactly one of the two outcomes holds the caller's lead"
        # The holder's lead refused by the CRM: the other outcome may try.
        first, second, caller = ids[0]
        holder, other = (second, first) if first in refused_a else (first, second)
        stores[0].mark_writes([(holder, "lead", WriteState.REJECTED, "", "bad data")], now)
        assert stores[1].claim_leads([(other, caller)], now) == set()
        assert stores[0].lead_for_caller(caller, holder) == (WriteState.SENT, "", "")
    finally:
        for store in stores:
            store.close()


def test_last_agent_answers_from_either_router(database):
    stores = [store_for(database), store_for(database)]
    try:
        now = time.time()
        stores[0].record_many([(outcome(1, answered_by="101", ended_at=now - 60), now)])
        stores[1].record_many([(outcome(2, answered_by="102", ended_at=now - 10), now)])
        assert [s.last_answered_extension("+34928000000", now - 3600) for s in stores] == ["102", "102"]
    finally:
        for store in stores:
            store.close()


# -- the database down -------------------------------------------------------------------


def test_the_keeper_spools_while_the_database_is_down_and_commits_when_it_is_back(database):
    async def scenario() -> tuple[list[Recording], list[Recording], int, int]:
        keeper = OutboxKeeper(Path("unused.sqlite"), store=StoreSettings(url=database, connect_timeout_s=1), retry_s=0.2)
        assert await keeper.open() is not None
        first = [await keeper.record(outcome(1), time.time())]
        await __import__("asyncio").to_thread(stop_server)
        down = [await keeper.record(outcome(i), time.time()) for i in range(2, 6)]
        spooled = keeper.spooled
        from postgres_server import start_server

        await __import__("asyncio").to_thread(start_server)
        while not await keeper.commit_spool():
            await __import__("asyncio").sleep(0.2)
        store = keeper.current()
        count = sum((await store.on_thread(store.counts)).values())
        await keeper.aclose()
        return first, down, spooled, count

    first, down, spooled, count = run(scenario())
    assert first == [Recording.RECORDED]
    assert down == [Recording.SPOOLED] * 4 and spooled == 4
    assert count == 5, "every outcome kept in memory reached the database once it was back"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_lead_in_the_crm_stays_the_callers_lead_when_its_outcome_dies(kind, tmp_path, request):
    """An outcome whose lead was written dies later (its recording never came): the lead is
    still in the CRM, so the caller's next outcome is logged on it, not given a second one."""
    if kind == "sqlite":
        store = open_store(tmp_path / "outbox.sqlite", StoreSettings())
    else:
        store = store_for(request.getfixturevalue("database"))
    try:
        now = time.time()
        caller = "+34928770001"
        store.record_many([(outcome(1, caller=caller), now), (outcome(2, caller=caller), now), (outcome(3, caller=caller), now)])
        rows = {row.call_id: row.id for row in store.list_rows(limit=10)}
        first, second, third = rows["1700000000.1"], rows["1700000000.2"], rows["1700000000.3"]
        assert store.claim_leads([(first, caller)], now) == set()
        store.mark_writes([(first, "lead", WriteState.DONE, "L-1", "")], now)
        [item] = [i for i in store.claim(now, 10, 60) if i.id == first]
        store.finish([Finish(item.id, item.lease_token, OutboxState.DEAD, "recording missing")], now)
        assert store.lead_for_caller(caller, second)[:2] == (WriteState.DONE, "L-1")
        assert store.claim_leads([(second, caller)], now) == {second}, "no second lead for that caller"
        # A lead only under way when its outcome died does not hold the caller back.
        store.mark_writes([(first, "lead", WriteState.SENT, "", "")], now)
        assert store.lead_for_caller(caller, third) is None
        assert store.claim_leads([(third, caller)], now) == set()
    finally:
        store.close()


def test_with_the_database_down_the_call_history_fails_once_then_is_not_asked_for_a_while(database):
    from postgres_server import start_server

    store = store_for(database, connect_timeout_s=1, read_wait_ms=200)
    try:
        assert store.last_answered_extension("+34928000000", 0) is None
        stop_server()
        try:
            with pytest.raises(OutboxError, match="couldn't get a connection|connection"):
                store.last_answered_extension("+34928000000", 0)
            with pytest.raises(OutboxError, match="not asked, it failed less than"):
                store.last_answered_extension("+34928000000", 0)
        finally:
            start_server()
    finally:
        store.close()


def test_a_database_server_that_accepts_and_never_speaks_fails_the_open_within_the_timeout():
    """A peer that takes the TCP connection and says nothing (a hung server, a
    wrong port): the open gives up after connect_timeout_s, naming the store."""
    import socket

    base_url()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        with pytest.raises(OutboxError, match=f"127.0.0.1:{port}"):
            store_for(f"postgresql://crmroute@127.0.0.1:{port}/crmroute", connect_timeout_s=1)
    finally:
        listener.close()


def test_the_admin_commands_use_the_shared_store(database, tmp_path):
    from click.testing import CliRunner

    from fastagi_server.cli import cli

    store = store_for(database)
    try:
        store.record_many([(outcome(1), time.time()), (outcome(2), time.time())])
    finally:
        store.close()
    config = tmp_path / "crmroute.toml"
    url_file = tmp_path / "store-url"
    url_file.write_text(database)
    config.write_text(f'[routing]\ndefault_region = "ES"\n[store]\nurl_file = "{url_file}"\n')
    status = CliRunner().invoke(cli, ["outbox", "status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert database.rsplit("/", 1)[1] in status.output and "pending" in status.output
    listed = CliRunner().invoke(cli, ["outbox", "list", "--config", str(config)])
    assert "1700000000.1" in listed.output and "1700000000.2" in listed.output
    checked = CliRunner().invoke(cli, ["check-config", str(config)])
    assert checked.exit_code == 0, checked.output
    assert database.rsplit("/", 1)[1] in checked.output
    config.write_text('[routing]\ndefault_region = "ES"\n[store]\nurl = "postgresql://crmroute:hunter2@127.0.0.1:9/x"\nconnect_timeout_s = 1\n')
    refused = CliRunner().invoke(cli, ["outbox", "status", "--config", str(config)])
    assert refused.exit_code != 0 and "127.0.0.1:9" in refused.output and "hunter2" not in refused.output
