"""``crmroute outbox``: counts and ages an admin can act on, retry, replay, flush."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from dialplan.outbox import Outbox
from dialplan.outbox.store import Finish, OutboxState
from dialplan.outcome import outcome_from_channel
from fastagi_server.cli import cli
from fastagi_server.outbox_cli import age, parse_since


@pytest.fixture
def setup(tmp_path):
    config = tmp_path / "crmroute.toml"
    config.write_text(f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n[outcomes]\nsenior_manager_id = "u1004"\n')
    box = Outbox.open(tmp_path / "outbox.sqlite")
    now = time.time()
    outcomes = [
        outcome_from_channel(call_id=f"1700000000.{i}", caller=caller, readings={"dial_status": "NOANSWER"}, ended_at=now - 3600, region="ES")
        for i, caller in enumerate(["+34928000000", "+34928000002", "+34928999999", "anonymous"])
    ]
    box.record_many([(o, now - 3600) for o in outcomes])
    items = box.claim(now, 2, 60)
    box.finish([
        Finish(items[0].id, items[0].lease_token, OutboxState.DEAD, "Calls: INVALID_DATA: invalid data (Owner)", rejected=True),
        Finish(items[1].id, items[1].lease_token, OutboxState.FAILED, "CrmUnavailable: connection refused", now + 90),
    ], now)
    box.close()
    return config, [item.id for item in items]


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_status_gives_counts_ages_and_what_to_do(setup):
    config, _ = setup
    code, out = invoke("outbox", "status", "--config", str(config))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert lines["pending"].split()[1] == "2" and "oldest waiting 60 min" in lines["pending"]
    assert lines["failed"].split()[1] == "1" and "next attempt in" in lines["failed"] and "connection refused" in lines["failed"]
    assert lines["dead"].split()[1] == "1" and "crmroute outbox retry" in lines["dead"]
    assert "PAUSED" not in out


def test_status_says_when_the_queue_is_paused(setup, tmp_path):
    config, _ = setup
    box = Outbox.open(tmp_path / "outbox.sqlite")
    box.set_meta("paused", json.dumps({"reason": "the CRM refused our credentials: invalid_code", "since": time.time() - 3 * 3600}))
    box.close()
    code, out = invoke("outbox", "status", "--config", str(config))
    assert "PAUSED for 3 h: the CRM refused our credentials: invalid_code" in out
    assert "SIGHUP" in out


def test_list_by_state(setup):
    config, ids = setup
    code, out = invoke("outbox", "list", "--state", "dead", "--config", str(config))
    assert code == 0
    rows = out.splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[0] == str(ids[0])
    assert "dead" in rows[0] and "INVALID_DATA" in rows[0] and "missed" in rows[0]
    code, out = invoke("outbox", "list", "--config", str(config))
    assert len(out.splitlines()) == 5 and "withheld" in out


def test_retry_ids_or_all(setup):
    config, ids = setup
    assert invoke("outbox", "retry", str(ids[0]), "--config", str(config)) == (0, "1 outcome(s) due again\n")
    assert invoke("outbox", "retry", "--all", "--config", str(config)) == (0, "1 outcome(s) due again\n")
    code, out = invoke("outbox", "retry", "--config", str(config))
    assert code == 2 and "give outcome ids or --all" in out
    code, out = invoke("outbox", "retry", "abc", "--config", str(config))
    assert code == 2


def test_replay_since_date_or_age(setup):
    config, _ = setup
    code, out = invoke("outbox", "replay", "--since", "2d", "--config", str(config))
    assert code == 0 and out.startswith("4 outcome(s) recorded since")
    code, out = invoke("outbox", "replay", "--since", "2999-01-01", "--config", str(config))
    assert out.startswith("0 outcome(s)")
    code, out = invoke("outbox", "replay", "--since", "last tuesday", "--config", str(config))
    assert code == 2 and "is not a date" in out


def test_flush_delivers_and_says_what_remains(setup):
    config, ids = setup
    code, out = invoke("outbox", "flush", "--config", str(config))
    # Two were due and delivered to the local directory; one waits for its back-off, one is dead.
    assert "delivered 2" in out
    assert code == 1 and "1 outcome(s) still waiting" in out
    invoke("outbox", "retry", "--all", "--config", str(config))
    code, out = invoke("outbox", "flush", "--config", str(config))
    assert code == 0, out


def test_bad_config_is_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[outbox]\nbatch_size = 1000\n")
    result = CliRunner().invoke(cli, ["outbox", "status", "--config", str(config)])
    assert result.exit_code == 1
    assert "outbox: batch_size must be between 1 and 100" in result.output


def test_age_and_since():
    assert [age(s) for s in (5, 119, 600, 7199, 7200, 200_000)] == ["5 s", "119 s", "10 min", "120 min", "2 h", "2 d"]
    assert parse_since("90m", 10_000.0) == 10_000.0 - 5400
    assert parse_since("2024-05-01T10:00", 0) > 0
