"""What an admin's commands read and say: one configuration for all, honest exit codes, nothing created by looking."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from dialplan.outbox import Outbox
from dialplan.outcome import outcome_from_channel
from fastagi_server.cli import cli


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env={"CRMROUTE_CONFIG": "", **(env or {})})


def spanish_config(path, outbox) -> None:
    path.write_text(f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{outbox}"\n')


def record_one(outbox) -> int:
    box = Outbox.open(outbox)
    outcome = outcome_from_channel(call_id="1700000000.7", caller="+34928000000", readings={"dial_status": "NOANSWER"}, ended_at=time.time(), region="ES")
    box.record_many([(outcome, time.time())])
    (row,) = box.list_rows()
    box.close()
    return row.id


# -- one configuration, every command alike -------------------------------------


def test_the_default_config_file_is_read_by_every_command(no_system_config, tmp_path):
    outbox = tmp_path / "outbox.sqlite"
    spanish_config(no_system_config, outbox)
    record_one(outbox)
    # A Spanish number without its country code: only region ES (from the file) makes it one.
    result = invoke("lookup", "928000000", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["variables"]["CRM_TARGET"] == "PJSIP/101"
    assert "DEMO MODE" not in result.stderr  # a file was found
    status = invoke("outbox", "status")
    assert status.exit_code == 0 and f"outbox {outbox}" in status.output
    assert status.output.split("pending")[1].split()[0] == "1"
    checked = invoke("check-config")
    assert checked.exit_code == 0 and f"{no_system_config}: ok" in checked.stdout


def test_config_option_beats_the_variable_which_beats_the_default_file(no_system_config, tmp_path):
    spanish_config(no_system_config, tmp_path / "a.sqlite")
    from_env = tmp_path / "env.toml"
    from_env.write_text('[routing]\ndefault_region = "GB"\n')
    given = tmp_path / "given.toml"
    given.write_text('[routing]\ndefault_region = "FR"\n')
    assert "region GB" in invoke("lookup", "1", "--explain", env={"CRMROUTE_CONFIG": str(from_env)}).stdout
    assert "region FR" in invoke("lookup", "1", "--explain", "--config", str(given), env={"CRMROUTE_CONFIG": str(from_env)}).stdout
    assert "region ES" in invoke("lookup", "1", "--explain").stdout


def test_no_configuration_at_all_is_demo_mode_and_says_so():
    result = invoke("lookup", "+34928000000")
    assert result.exit_code == 0
    assert "DEMO MODE: no configuration file found (--config, $CRMROUTE_CONFIG, " in result.stderr
    assert "DEMO MODE" not in result.stdout


# -- looking creates nothing -------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["outbox", "status"], ["outbox", "list"], ["outbox", "retry", "--all"], ["outbox", "replay", "--since", "1d"], ["outbox", "flush"]],
)
def test_outbox_commands_never_create_an_empty_outbox(args, tmp_path):
    outbox = tmp_path / "state" / "outbox.sqlite"
    config = tmp_path / "c.toml"
    spanish_config(config, outbox)
    result = invoke(*args, "--config", str(config))
    assert result.exit_code == 1
    assert f"no outbox at {outbox}" in result.output and "--config" in result.output
    assert not outbox.exists() and not outbox.parent.exists()


def test_check_config_creates_no_outbox(tmp_path):
    outbox = tmp_path / "outbox.sqlite"
    config = tmp_path / "c.toml"
    spanish_config(config, outbox)
    result = invoke("check-config", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert not outbox.exists() and "not there yet" in result.stdout


# -- check-config says everything at once ---------------------------------------------


def test_check_config_lists_every_problem_not_just_the_first(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[server]\nport = "x"\nlog_level = "LOUD"\n'
        '[routing]\ndeadline_ms = 5\nlookup_order = ["Leads", "Gadgets"]\n'
        '[cache]\nttl_s = -1\n[colour]\nx = 1\n'
    )
    result = invoke("check-config", str(config))
    assert result.exit_code == 1
    err = result.stderr
    assert "server.port: expected an integer" in err
    assert "server: log_level must be DEBUG, INFO, WARNING or ERROR" in err
    assert "routing: deadline_ms must be between 10 and 60000" in err
    assert "cache: ttl_s must be between 0 and 604800" in err
    assert "colour: unknown key" in err
    assert "Error: " in err and "problems" in err


def test_check_config_reads_the_variable_and_the_option(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[routing]\ndeadline_ms = 5\n")
    assert invoke("check-config", env={"CRMROUTE_CONFIG": str(bad)}).exit_code == 1
    assert invoke("check-config", "--config", str(bad)).exit_code == 1
    assert invoke("check-config").exit_code == 0  # built-in defaults


def test_check_config_warns_about_owners_no_crm_user_has(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[routing]\ndefault_region = "ES"\n[routing.owner_extensions]\n'
        '"u1001" = ["101"]\n"ANA.GARCIA@example.com" = ["111"]\n"u9999" = ["199"]\n"nobody@example.com" = ["198"]\n'
    )
    result = invoke("check-config", str(config))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line and "no CRM user" in line]
    assert len(warnings) == 2
    assert "'u9999'" in warnings[0] and "'nobody@example.com'" in warnings[1]


# -- exit codes follow what happened ------------------------------------------------------


def test_retry_of_an_outcome_that_is_not_there_is_an_error(tmp_path):
    outbox = tmp_path / "outbox.sqlite"
    config = tmp_path / "c.toml"
    spanish_config(config, outbox)
    pending = record_one(outbox)
    result = invoke("outbox", "retry", "999", "--config", str(config))
    assert result.exit_code == 1 and f"no outcome 999 in {outbox}" in result.output
    result = invoke("outbox", "retry", str(pending), "--config", str(config))
    assert result.exit_code == 1 and f"{pending} is pending" in result.output


@pytest.mark.parametrize(
    "number, plain, per_status",
    [
        ("+34928000000", 0, 0),  # OWNER
        ("+34928000005", 0, 0),  # OWNER on two phones
        ("+34928000004", 0, 3),  # UNMAPPED
        ("+12025550199", 0, 4),  # NOMATCH
        ("anonymous", 0, 4),  # withheld: NOMATCH
        ("12ab", 2, 2),  # not a phone number
    ],
)
def test_lookup_exit_codes(number, plain, per_status):
    assert invoke("lookup", number).exit_code == plain
    assert invoke("lookup", number, "--exit-status").exit_code == per_status


def test_lookup_exit_code_when_the_crm_fails(tmp_path):
    config = tmp_path / "c.toml"
    (tmp_path / "dir.sqlite").write_text("not a directory")
    config.write_text('[crm]\nbackend = "zoho"\n[zoho]\naccounts_url = "http://127.0.0.1:9"\nclient_id = "a"\nclient_secret = "b"\nrefresh_token = "c"\nconnect_timeout_ms = 200\n')
    plain = invoke("lookup", "+34928000000", "--config", str(config))
    assert "ERROR" in plain.output and plain.exit_code == 1
    assert invoke("lookup", "+34928000000", "--config", str(config), "--exit-status").exit_code == 6
