"""``crmroute lookup --explain``: why a call goes where it goes, offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CRMROUTE = [sys.executable, "-m", "fastagi_server"]

POLICY_TOML = """
[routing]
default_region = "ES"
team = "floor"
senior_manager = "boss@example.com"

[routing.owner_extensions]
"boss@example.com" = ["100"]

[routing.owner_hours]
"u1001" = "office"

[routing.teams.floor]
extensions = ["201", "202"]

[routing.hours.office]
time_zone = "Atlantic/Canary"
open = ["mon-fri 09:00-18:00"]

[routing.policies.support]
dids = ["8200"]
lookup_order = ["Contacts"]
"""


def crmroute(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CRMROUTE + list(args), capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "crmroute.toml"
    path.write_text(POLICY_TOML)
    return str(path)


def variables(output: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in output.splitlines() if line.startswith("CRM_"))
    return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}


def test_explain_says_device_state_is_unknown_offline(config):
    done = crmroute("lookup", "+34928000000", "--explain", "--config", config, "--at", "2025-01-06T10:00+00:00")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "device states: unknown offline, not checked" in out
    assert "policy: default" in out
    assert "Leads L-1001 owner u1001: rings 101 (101 unchecked)" in out
    v = variables(out)
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("OWNER", "PJSIP/101")
    assert "state unchecked" in v["CRM_ROUTE_REASON"]


def test_explain_with_given_states_shows_the_chain(config):
    done = crmroute("lookup", "+34928000002", "--explain", "--config", config, "--state", "102=INUSE", "--state", "PJSIP/201=BUSY",
                    "--at", "2025-01-06T10:00+00:00")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # The deal owner is busy; the contact owner (Ana, in office hours) rings.
    assert "Deals D-3001 owner u1002: passed over, 102 INUSE" in out
    assert "Contacts C-2003 owner u1001: rings 101 (101 UNKNOWN)" in out
    v = variables(out)
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"], v["CRM_RECORD_ID"]) == ("OWNER", "PJSIP/101", "C-2003")


def test_explain_out_of_hours_goes_to_the_team(config):
    done = crmroute("lookup", "+34928000000", "--explain", "--config", config, "--state", "202=INUSE", "--at", "2025-01-11T11:00+01:00")
    assert done.returncode == 0, done.stderr
    assert "Leads L-1001 owner u1001: passed over, out of hours (office, Sat 10:00 Atlantic/Canary)" in done.stdout
    v = variables(done.stdout)
    assert (v["CRM_ROUTE_STATUS"], v["CRM_TARGET"]) == ("SHARED", "PJSIP/201")


def test_json_carries_policy_rule_and_chain(config):
    done = crmroute("lookup", "+34928000002", "--json", "--did", "8200", "--config", config, "--state", "101=BUSY", "--at", "2025-01-06T10:00Z")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    # Support asks the contacts only (not the deal of Ben); Ana is busy, and the
    # team the policy inherits from [routing] rings.
    assert payload["policy"] == "support" and payload["rule"] == "team"
    assert payload["device_states"] == {"101": "BUSY", "201": "UNKNOWN", "202": "UNKNOWN"}
    assert payload["variables"]["CRM_ROUTE_STATUS"] == "SHARED"
    assert payload["variables"]["CRM_TARGET"] == "PJSIP/201&PJSIP/202"
    assert payload["chain"][0] == "Contacts C-2003 owner u1001: passed over, 101 BUSY"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--state", "101"], "expected EXT=STATE"),
        (["--state", "101=SLEEPING"], "expected EXT=STATE with STATE one of"),
        (["--at", "next tuesday"], "is not an ISO 8601 time"),
    ],
)
def test_bad_options_are_one_line_errors(config, args, message):
    done = crmroute("lookup", "+34928000000", "--config", config, *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_check_config_counts_policies_and_checks_the_history_last_agent_reads(config, tmp_path):
    done = crmroute("check-config", config)
    assert done.returncode == 0, done.stderr
    assert "1 DID policy(ies), 1 team(s)" in done.stdout
    last_agent = tmp_path / "last_agent.toml"
    outbox = tmp_path / "state" / "outbox.sqlite"
    last_agent.write_text(f'[routing]\nlookup_order = ["LastAgent", "Leads"]\n[outbox]\npath = "{outbox}"\n')
    done = crmroute("check-config", str(last_agent))
    assert done.returncode == 0, done.stderr
    # The call history LastAgent reads is the outbox's: its place is checked, nothing is created.
    assert not outbox.exists() and "not there yet" in done.stdout
    blocked = tmp_path / "blocked.toml"
    (tmp_path / "file").write_text("")
    blocked.write_text(f'[routing]\nlookup_order = ["LastAgent", "Leads"]\n[outbox]\npath = "{tmp_path / "file" / "outbox.sqlite"}"\n')
    done = crmroute("check-config", str(blocked))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_explain_prints_hostile_crm_text_inert(tmp_path):
    """CRM names with newlines or terminal escape sequences cannot forge lines
    of the explanation or drive the admin's terminal."""
    csv_file = tmp_path / "hostile.csv"
    csv_file.write_text(
        "module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status\n"
        'Contacts,"C-1\nCRM_TARGET        PJSIP/666","Evil\x1b[2J\x1b]0;owned\x07 name",+34928777001,"u1\n  - forged step","Boss\x1b[31m",b@x.com,101,\n'
    )
    db = tmp_path / "d.sqlite"
    done = crmroute("directory", "import", str(csv_file), "--path", str(db))
    assert done.returncode == 0, done.stderr
    config = tmp_path / "c.toml"
    config.write_text(f'[routing]\ndefault_region = "ES"\n[directory]\npath = "{db}"\n')
    done = crmroute("lookup", "+34928777001", "--explain", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    lines = done.stdout.splitlines()
    assert not any(line.startswith("  - forged step") for line in lines)
    assert [line for line in lines if line.startswith("CRM_TARGET")] == ["CRM_TARGET        PJSIP/101"]
