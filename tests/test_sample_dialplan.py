"""``extensions.conf.sample`` and the README's dialplan, run through the Asterisk model against a real server."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from asterisk_dialplan import Channel, Dialplan, Pbx
from conftest import agi_server, run
from dialplan.outbox import Outbox
from fastagi_server.config import load_config

ROOT = Path(__file__).parent.parent
SAMPLE = (ROOT / "extensions.conf.sample").read_text()
QUEUES = (ROOT / "queues.conf.sample").read_text()
SALES_DID = "34928555100"
SUPPORT_DID = "34928555200"
SCRIPT = "/opt/crmroute/venv/bin/crmroute-agi"


def queue_names(text: str) -> set[str]:
    """The queues a queues.conf defines: its sections, less [general] and templates ``(!)``."""
    names = set()
    for line in text.splitlines():
        found = re.match(r"^\[([^\]]+)\](\(!\))?", line.split(";", 1)[0].strip())
        if found and found.group(1) != "general" and not found.group(2):
            names.add(found.group(1))
    return names


def readme_dialplan() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Wiring Asterisk"):]
    start = section.index("```\n") + 4
    return section[start : section.index("```", start)]


def config_file(tmp_path) -> tuple[Path, Path]:
    outbox = tmp_path / "outbox.sqlite"
    path = tmp_path / "crmroute.toml"
    path.write_text(
        f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{outbox}"\n'
        f'[routing.policies.sales]\ndids = ["+{SALES_DID}"]\n'
        f'[routing.policies.support]\ndids = ["+{SUPPORT_DID}"]\non_unavailable = []\n'
    )
    return path, outbox


def recorded(outbox: Path) -> list:
    if not outbox.exists():
        return []
    box = Outbox.open(outbox, create=False)
    try:
        return [item.outcome for item in box.claim(time.time() + 3600, 100, 60)]
    finally:
        box.close()


def answered_by(extension: str):
    def dial(target: str, channel: Channel) -> dict[str, str]:
        return {"DIALSTATUS": "ANSWER", "DIALEDPEERNUMBER": extension, "ANSWEREDTIME": "30", "ANSWEREDTIME_MS": "30000"}

    return dial


async def call_through(plan_text: str, tmp_path, *, did: str, caller: str = "+34928000000", server_up: bool = True, **pbx_options):
    config_path, outbox = config_file(tmp_path)
    config = load_config(config_path)
    plan = Dialplan.parse(plan_text)
    channel = Channel(caller=caller, dnid=did)
    hang_up_after = pbx_options.pop("hang_up_after", None)
    scripts = {SCRIPT: [sys.executable, "-m", "fastagi_server.stdio"]}
    env = {**os.environ, "CRMROUTE_CONFIG": str(config_path)}
    if server_up:
        async with agi_server(config) as server:
            pbx = Pbx(plan, globals={"CRM_AGI": f"agi://127.0.0.1:{server.port}"}, scripts=scripts, script_env=env, **pbx_options)
            await pbx.call("from-trunk", did, channel, hang_up_after=hang_up_after)
    else:
        pbx = Pbx(plan, globals={"CRM_AGI": "agi://127.0.0.1:9"}, scripts=scripts, script_env=env, **pbx_options)
        await pbx.call("from-trunk", did, channel, hang_up_after=hang_up_after)
    return channel, recorded(outbox)


# -- the sample as Asterisk reads it ----------------------------------------------------


def test_the_sample_parses_and_names_only_queues_that_queues_conf_defines():
    plan = Dialplan.parse(SAMPLE)
    assert {"globals", "from-trunk", "crm-route", "crm-outcome"} <= set(plan.contexts)
    assert plan.globals["CRM_AGI"].startswith("agi://") and plan.globals["CRM_AGI_SCRIPT"].startswith("/")
    used = set(re.findall(r"Gosub\(crm-route,s,1\(\$\{EXTEN\},(\w+)\)\)", SAMPLE))
    assert used == {"sales", "support"}
    assert used <= queue_names(QUEUES)
    assert "setinterfacevar = yes" in QUEUES


def test_the_hangup_handler_records_the_calls_own_did(tmp_path):
    channel, outcomes = run(call_through(SAMPLE, tmp_path, did=SALES_DID, dial=answered_by("101"), queues=queue_names(QUEUES)))
    assert channel.variables["CRM_TARGET"] == "PJSIP/101" and ("Dial", "PJSIP/101,20") in channel.ran
    assert [o.did for o in outcomes] == [SALES_DID]
    assert outcomes[0].answered and outcomes[0].answered_extension == "101"
    assert any(app == "AGI" and data.endswith(f"/route,{SALES_DID}") for app, data in channel.ran)


def test_an_answered_call_is_recorded_and_the_outcome_keeps_the_recordings_name(tmp_path):
    channel, outcomes = run(call_through(SAMPLE, tmp_path, did=SALES_DID, dial=answered_by("101"), queues=queue_names(QUEUES)))
    assert ("MixMonitor", f"/var/spool/asterisk/monitor/{channel.uniqueid}.wav,b") in channel.ran
    assert [(o.recording, o.recording_problem) for o in outcomes] == [(f"{channel.uniqueid}.wav", "")]


def test_with_crm_record_no_nothing_is_recorded(tmp_path):
    plan = SAMPLE.replace("CRM_RECORD=yes", "CRM_RECORD=no")
    channel, outcomes = run(call_through(plan, tmp_path, did=SALES_DID, dial=answered_by("101"), queues=queue_names(QUEUES)))
    assert not [app for app, _ in channel.ran if app == "MixMonitor"]
    assert [o.recording for o in outcomes] == [""]


def test_a_caller_gone_at_once_still_leaves_an_outcome(tmp_path):
    # The caller hangs up after the Gosub and the first application of [crm-route].
    channel, outcomes = run(call_through(SAMPLE, tmp_path, did=SUPPORT_DID, hang_up_after=2, queues=queue_names(QUEUES)))
    assert [app for app, _ in channel.ran][:2] == ["Gosub", "Set"]
    assert [(o.did, o.answered) for o in outcomes] == [(SUPPORT_DID, False)]


def test_with_the_router_down_the_call_goes_to_the_queue_and_the_classic_agi_records_it(tmp_path):
    channel, outcomes = run(call_through(SAMPLE, tmp_path, did=SALES_DID, server_up=False, queues=queue_names(QUEUES)))
    assert channel.queues_joined == ["sales"] and not channel.declined
    assert [app for app, data in channel.ran if app == "AGI"] == ["AGI", "AGI", "AGI"]
    assert channel.ran[-2] == ("AGI", f"{SCRIPT},outcome,{SALES_DID}")
    assert [o.did for o in outcomes] == [SALES_DID]


def test_a_queue_queues_conf_lacks_declines_the_call():
    async def scenario():
        pbx = Pbx(Dialplan.parse(SAMPLE), globals={"CRM_AGI": "agi://127.0.0.1:9"}, queues=set())
        channel = Channel(caller="+34928999999", dnid=SALES_DID)
        return await pbx.call("from-trunk", SALES_DID, channel)

    channel = run(scenario())
    assert channel.declined == "Unable to join queue 'sales'"


# -- the README's snippet is a working dialplan too ---------------------------------------


def test_the_readme_snippet_defines_what_it_uses_and_records_the_did(tmp_path):
    text = readme_dialplan()
    plan = Dialplan.parse(text)
    assert "CRM_AGI" in plan.globals, "the snippet defines ${CRM_AGI}"
    used = {name for name in re.findall(r"\$\{(CRM_AGI\w*)\}", text)}
    assert used <= set(plan.globals)
    assert "crm-outcome" in plan.contexts
    channel, outcomes = run(call_through(text, tmp_path, did=SALES_DID, dial=answered_by("101"), queues={"sales", "support"}))
    assert [o.did for o in outcomes] == [SALES_DID]


@pytest.mark.parametrize("snippet", ["classic"])
def test_the_readme_classic_agi_lines_pass_the_did(snippet):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Classic AGI"):]
    block = section[section.index("```\n") + 4 : section.index("```", section.index("```\n") + 4)]
    lines = [line for line in block.splitlines() if "AGI(" in line]
    assert lines and all(line.rstrip().endswith("${ARG1})") for line in lines), lines
    assert "${EXTEN}" not in block


def test_the_readme_recording_lines_are_the_samples():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Call recordings"):]
    start = section.index("```\n") + 4
    block = section[start : section.index("```", start)]
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    assert lines and all(line in {part.strip() for part in SAMPLE.splitlines()} for line in lines), lines


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Run the tests:"):]
    command = section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh\n"))]
    assert command.strip() in (ROOT / ".ci" / "run").read_text()
