"""The mirror of Zoho CRM, over real HTTP against the simulator: load, refresh, reconcile, fall back.

Passes are run one at a time (``refresher.sync()``), as the background loop
runs them every ``refresh_s``, so each test says exactly which refresh a
change reaches the route in.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from asterisk_peer import route_call
from crmlookup.errors import CrmError
from conftest import agi_server, make_config, run
from dialplan import InboundCall
from fastagi_server.app import App

CALLER = "+34928000000"


def mirror_config(simulator, tmp_path, *, mirror=None, routing=None, zoho=None):
    return make_config({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES", **(routing or {})},
        "zoho": simulator.zoho_config(user_extension_field="Extension", **(zoho or {})),
        "mirror": {"path": str(tmp_path / "mirror.sqlite"), **(mirror or {})},
    })


class Router:
    """A serving app (it keeps the mirror) driven pass by pass."""

    def __init__(self, config):
        self.app = App.from_config(config, serving=True)
        self.mirror = self.app.mirror
        assert self.mirror is not None and self.mirror.refresher is not None

    async def __aenter__(self):
        await self.mirror.refresher.open()
        return self

    async def __aexit__(self, *exc):
        await self.app.aclose()

    async def sync(self, *, full=False):
        return await self.mirror.refresher.sync(full=full)

    async def decide(self, caller=CALLER, did=""):
        return await self.app.router.decide(InboundCall(caller=caller, did=did))


@pytest.fixture
def team(zoho):
    return {
        name: zoho.add_user(f"{name.title()} Rep", f"{name}@example.com", Extension=ext)
        for name, ext in (("ana", "101"), ("ben", "102"), ("carla", "103"), ("dolores", "104"))
    }


def api_calls(simulator, kind):
    """Requests of one kind since the log was reset: searches, COQL or listings."""
    requests = simulator.api_requests()
    if kind == "lookup":
        return [r for r in requests if r.path.endswith("/search") or r.path.endswith("/coql")]
    return requests


# -- the first load ----------------------------------------------------------------

def test_a_first_load_of_thousands_of_records_answers_every_caller_with_no_request(zoho, team, tmp_path):
    numbers = {}
    for i in range(2500):
        number = f"+3492810{i:04d}"
        zoho.add_record("Contacts", team["carla"], Full_Name=f"Contact {i}", Last_Name="C", Phone=number)
        numbers[number] = ("Contacts", "103")
    for i in range(700):
        number = f"+3492820{i:04d}"
        zoho.add_record("Leads", team["ana"], Full_Name=f"Lead {i}", Last_Name="L", Mobile=number, Lead_Status="Contacted")
        numbers[number] = ("Leads", "101")
    for i in range(300):
        number = f"+3492830{i:04d}"
        account = zoho.add_record("Accounts", team["dolores"], Account_Name=f"Account {i}", Phone=number)
        zoho.add_record("Deals", team["ben"], Deal_Name=f"Deal {i}", Stage="Qualification", Account_Name={"id": account["id"]})
        numbers[number] = ("Deals", "102")

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path)) as router:
            summary = await router.sync()
            pages = [r for r in zoho.requests("/crm/v8/Contacts") if r.path == "/crm/v8/Contacts"]
            assert summary.credits == zoho.credits_used, "the credits counted are the credits Zoho charged"
            zoho.reset_log()
            decisions = {number: await router.decide(number) for number in list(numbers)[::50]}
            return summary, pages, decisions

    summary, pages, decisions = run(scenario())

    assert summary.kind == "first load"
    assert summary.written == {"Contacts": 2500, "Leads": 700, "Accounts": 300, "Deals": 300}
    assert len(pages) == 13, "200 records a page"
    for number, decision in decisions.items():
        assert (decision.match.module, decision.extensions) == (numbers[number][0], [numbers[number][1]]), number
        assert decision.source == "mirror"
    assert zoho.api_requests() == [], "no call asked Zoho"


def test_an_interrupted_first_load_resumes_where_it_stopped(zoho, team, tmp_path):
    for i in range(1000):
        zoho.add_record("Contacts", team["carla"], Full_Name=f"C {i}", Last_Name="C", Phone=f"+3492810{i:04d}")
    fault = zoho.add_fault(r"^/crm/v8/Contacts$", 500, times=1)
    fault.skip = 3  # the fourth page fails (see the simulator's Fault)

    async def scenario():
        config = mirror_config(zoho, tmp_path)
        async with Router(config) as router:
            with pytest.raises(CrmError):
                await router.sync()
            before = await router.decide("+34928100001")
        zoho.reset_log()
        async with Router(config) as router:  # a restart
            assert not router.mirror.status.ready
            await router.sync()
            after = await router.decide("+34928100999")
        return before, after

    before, after = run(scenario())

    assert before.source == "live", "a partial load never answers"
    assert any("first load is not done" in step for step in before.steps)
    contact_pages = [r for r in zoho.requests("/crm/v8/Contacts") if r.path == "/crm/v8/Contacts"]
    assert "page_token" in contact_pages[0].query, "the restart goes on with the stored page token"
    assert len(contact_pages) == 2
    assert after.source == "mirror" and after.extensions == ["103"]


def test_an_expired_page_token_goes_on_from_the_last_record_read(zoho, team, tmp_path):
    for i in range(600):
        zoho.add_record("Contacts", team["carla"], Full_Name=f"C {i}", Last_Name="C", Phone=f"+3492810{i:04d}")
    zoho.add_fault(r"^/crm/v8/Contacts$", 500, times=1).skip = 1

    async def scenario():
        config = mirror_config(zoho, tmp_path)
        async with Router(config) as router:
            with pytest.raises(CrmError):
                await router.sync()
            zoho.expire_page_tokens()
            await router.sync()
            return await router.decide("+34928100599")

    decision = run(scenario())

    assert decision.source == "mirror" and decision.extensions == ["103"]


# -- changes reach the route within one refresh --------------------------------------

def test_every_kind_of_change_routes_right_after_one_refresh(zoho, team, tmp_path):
    moved = zoho.add_record("Contacts", team["carla"], Full_Name="Moved", Last_Name="M", Phone="+34928000001")
    won = zoho.add_record("Contacts", team["carla"], Full_Name="Buyer", Last_Name="B", Phone="+34928000002")
    won_deal = zoho.add_record("Deals", team["ben"], Deal_Name="Renewal", Stage="Qualification", Contact_Name={"id": won["id"]})
    gone = zoho.add_record("Accounts", team["dolores"], Account_Name="Gone", Phone="+34928000003")
    renumbered = zoho.add_record("Contacts", team["carla"], Full_Name="New phone", Last_Name="N", Phone="+34928000004")
    lead = zoho.add_record("Leads", team["ana"], Full_Name="Prospect", Last_Name="P", Phone="+34928000005", Lead_Status="Contacted")
    zoho.add_record("Contacts", team["dolores"], Full_Name="Prospect", Last_Name="P", Phone="+34928000005")
    zoho.add_record("Contacts", team["ben"], Full_Name="Of a leaver", Last_Name="L", Phone="+34928000006")

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path)) as router:
            await router.sync()
            before = {n: await router.decide(f"+3492800000{n}") for n in range(1, 7)}
            zoho.update_record("Contacts", moved["id"], Owner={"name": "Ana Rep", "id": team["ana"]["id"], "email": "ana@example.com"})
            zoho.update_record("Deals", won_deal["id"], Stage="Closed Won")
            zoho.delete_record("Accounts", gone["id"])
            zoho.update_record("Contacts", renumbered["id"], Phone="+34928000009")
            zoho.convert_lead(lead["id"])
            zoho.update_user(team["ben"]["id"], status="disabled")
            summary = await router.sync()
            after = {n: await router.decide(f"+3492800000{n}") for n in (1, 2, 3, 4, 5, 6, 9)}
            return before, summary, after

    before, summary, after = run(scenario())

    assert summary.kind == "refresh"
    assert before[1].extensions == ["103"] and after[1].extensions == ["101"], "new owner"
    assert before[2].match.module == "Deals" and after[2].match.module == "Contacts", "deal won"
    assert before[3].status.value == "UNMAPPED" or before[3].match.module == "Accounts"
    assert after[3].status.value == "NOMATCH", "deleted record"
    assert after[4].status.value == "NOMATCH" and after[9].match.record_id == renumbered["id"], "new phone"
    assert before[5].match.module == "Leads" and after[5].match.module == "Contacts", "lead converted"
    assert before[6].extensions == ["102"] and after[6].status.value == "UNMAPPED", "user deactivated"
    assert all(d.source == "mirror" for d in after.values() if d.status.value != "NOMATCH")


def test_a_number_in_a_custom_phone_field_routes(zoho, team, tmp_path):
    zoho.add_phone_field("Contacts", "WhatsApp_Number")
    zoho.add_record("Contacts", team["carla"], Full_Name="Custom", Last_Name="C", WhatsApp_Number="+34 928 00 00 07")

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path)) as router:
            await router.sync()
            return await router.decide("+34928000007")

    decision = run(scenario())

    assert (decision.match.module, decision.extensions, decision.source) == ("Contacts", ["103"], "mirror")


def test_a_reconcile_removes_what_the_crm_no_longer_has_and_keeps_what_it_has(zoho, team, tmp_path):
    kept = zoho.add_record("Contacts", team["carla"], Full_Name="Kept", Last_Name="K", Phone="+34928000001")
    purged = zoho.add_record("Contacts", team["carla"], Full_Name="Purged", Last_Name="P", Phone="+34928000002")

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path)) as router:
            await router.sync()
            # Deleted without a trace in the deleted list (past its 60 days, or hidden by a permission change).
            zoho.delete_record("Contacts", purged["id"], permanent=True)
            zoho.clear_deleted()
            refreshed = await router.decide("+34928000002")
            summary = await router.sync(full=True)
            return refreshed, summary, await router.decide("+34928000001"), await router.decide("+34928000002")

    refreshed, summary, kept_after, purged_after = run(scenario())

    assert refreshed.match.record_id == purged["id"], "a refresh cannot know"
    assert summary.kind == "reconcile" and summary.deleted["Contacts"] == 1
    assert kept_after.match.record_id == kept["id"]
    assert purged_after.status.value == "NOMATCH"


# -- the live path when the mirror does not know a number -----------------------------

def test_numbers_the_mirror_does_not_know_bring_one_early_refresh_however_many_call(zoho, team, tmp_path):
    async def scenario():
        async with Router(mirror_config(zoho, tmp_path, mirror={"miss_refresh_s": 1})) as router:
            await router.sync()
            zoho.add_record("Leads", team["ana"], Full_Name="Brand new", Last_Name="N", Phone="+34928000008", Lead_Status="New")
            zoho.reset_log()
            first = await router.decide("+34928000008")
            others = [await router.decide(f"+3492899{n:04d}") for n in range(20)]  # unknown callers meanwhile
            refresher = router.mirror.refresher
            for _ in range(500):  # the early refresh runs about a second after the last one
                if refresher._quick is not None and refresher._quick.done():
                    break
                await asyncio.sleep(0.01)
            requests = sorted(r.path for r in zoho.api_requests())
            second = await router.decide("+34928000008")
            return first, others, requests, second

    first, others, requests, second = run(scenario())

    assert first.status.value == "NOMATCH" and first.source == "mirror", "the call is answered at once"
    assert any("changes since the last refresh are asked for in" in step for step in first.steps)
    assert all(d.source == "mirror" for d in others)
    assert requests == ["/crm/v8/Accounts", "/crm/v8/Contacts", "/crm/v8/Deals", "/crm/v8/Leads"], "one listing per module, for all 21 callers"
    assert (second.match.module, second.extensions, second.source) == ("Leads", ["101"], "mirror")


async def _known(router, caller):
    from crmlookup.phone import normalise

    result = await router.mirror._index.lookup(normalise(caller, "ES"), ("Leads",))
    return result.known


def test_with_miss_wait_the_call_waits_for_zoho_within_the_wait(zoho, team, tmp_path):
    async def scenario():
        async with Router(mirror_config(zoho, tmp_path, mirror={"miss_wait_ms": 5000})) as router:
            await router.sync()
            zoho.add_record("Contacts", team["carla"], Full_Name="New", Last_Name="N", Phone="+34928000008")
            return await router.decide("+34928000008")

    decision = run(scenario())

    assert (decision.match.module, decision.extensions, decision.source) == ("Contacts", ["103"], "live")


# -- Zoho down, credentials refused ----------------------------------------------------

def test_zoho_down_after_a_load_calls_still_route_with_the_mirrors_age_in_the_reason(zoho, team, tmp_path):
    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path, mirror={"stale_after_s": 10})) as router:
            await router.sync()
            zoho.stop()
            with pytest.raises(CrmError):
                await router.sync()
            router.mirror.status.refreshed_at -= 2 * 3600  # two hours without a good refresh
            return await router.decide()

    decision = run(scenario())

    assert (decision.status.value, decision.extensions) == ("OWNER", ["103"])
    assert "mirror 2 h old" in decision.reason
    assert any("refreshing fails" in step for step in decision.steps)


def test_a_token_without_a_scope_the_mirror_needs_leaves_routing_live_with_one_warning(zoho, team, tmp_path, caplog):
    zoho.granted_scopes = "ZohoCRM.modules.ALL ZohoCRM.users.READ ZohoSearch.securesearch.READ ZohoCRM.coql.READ"
    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    caplog.set_level(logging.WARNING, logger="crmroute.mirror")

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path, mirror={"refresh_s": 5, "retry_max_s": 5})) as router:
            stop = asyncio.Event()
            loop = asyncio.ensure_future(router.mirror.refresher.run(stop))
            for _ in range(500):
                if router.mirror.status.last_error:
                    break
                await asyncio.sleep(0.01)
            router.mirror.refresher.wake()
            await asyncio.sleep(0.2)
            stop.set()
            await loop
            return await router.decide()

    decision = run(scenario())

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "ZohoCRM.settings" in warnings[0]
    assert (decision.source, decision.extensions) == ("live", ["103"])


# -- the live path itself: one round trip ----------------------------------------------

def test_without_the_mirror_every_search_goes_at_once(zoho, team, tmp_path):
    contact = zoho.add_record("Contacts", team["carla"], Full_Name="Lucía", Last_Name="R", Phone="928 00 00 00")
    zoho.add_record("Deals", team["ben"], Deal_Name="Ampliación", Stage="Qualification", Contact_Name={"id": contact["id"]})
    zoho.latency_s = 0.3

    async def scenario():
        app = App.from_config(mirror_config(zoho, tmp_path, mirror={"enabled": False}))
        try:
            await app.router.backend.inner.warm()
            zoho.reset_log()
            return await app.router.decide(InboundCall(caller=CALLER))
        finally:
            await app.aclose()

    decision = run(scenario())

    assert (decision.match.module, decision.extensions) == ("Deals", ["102"])
    assert decision.lookup_ms < 600, "one round trip (300 ms), not two"
    paths = sorted(r.path for r in zoho.api_requests())
    assert paths == ["/crm/v8/Accounts/search", "/crm/v8/Contacts/search", "/crm/v8/Leads/search", "/crm/v8/coql"]


def test_without_the_coql_scope_deals_come_from_the_related_lists(zoho, team, tmp_path, caplog):
    zoho.granted_scopes = "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.users.READ ZohoSearch.securesearch.READ"
    contact = zoho.add_record("Contacts", team["carla"], Full_Name="Lucía", Last_Name="R", Phone=CALLER)
    zoho.add_record("Deals", team["ben"], Deal_Name="Ampliación", Stage="Qualification", Contact_Name={"id": contact["id"]})
    caplog.set_level(logging.WARNING, logger="crmroute.zoho")

    async def scenario():
        app = App.from_config(mirror_config(zoho, tmp_path, mirror={"enabled": False}))
        try:
            return [await app.router.decide(InboundCall(caller=CALLER)) for _ in range(2)]
        finally:
            await app.aclose()

    first, second = run(scenario())

    assert first.match.module == second.match.module == "Deals"
    assert any(r.path == f"/crm/v8/Contacts/{contact['id']}/Deals" for r in zoho.api_requests())
    assert len([r for r in caplog.records if "ZohoCRM.coql.READ" in r.getMessage()]) == 1


# -- operating it -----------------------------------------------------------------------

def test_a_reload_keeps_the_mirror_answering(zoho, team, tmp_path):
    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    config_file = tmp_path / "crmroute.toml"
    config_file.write_text(
        '[crm]\nbackend = "zoho"\n[routing]\ndefault_region = "ES"\n'
        f'[mirror]\npath = "{tmp_path / "mirror.sqlite"}"\nrefresh_s = 3600\n'
        "[zoho]\n" + "".join(f'{k} = "{v}"\n' for k, v in zoho.zoho_config(user_extension_field="Extension").items())
    )
    from fastagi_server.config import load_config
    from fastagi_server.server import FastAgiServer

    async def scenario():
        server = FastAgiServer(App.from_config(load_config(config_file), serving=True))
        await server.start("127.0.0.1", 0)
        try:
            for _ in range(500):
                if server.app.mirror.status.ready:
                    break
                await asyncio.sleep(0.01)
            zoho.stop()  # Zoho down: only the mirror can answer now
            assert await server.reload(str(config_file))
            assert server.app.mirror.status.ready, "the reloaded app finds the mirror ready"
            return await route_call(server.port, caller=CALLER)
        finally:
            await server.shutdown(grace_ms=1000)

    result = run(scenario())

    assert result.variables["CRM_TARGET"] == "PJSIP/103"


# -- the command line -------------------------------------------------------------------

def _config_file(zoho, tmp_path, **mirror):
    lines = ['[crm]\nbackend = "zoho"\n[routing]\ndefault_region = "ES"\n', f'[mirror]\npath = "{tmp_path / "mirror.sqlite"}"\n']
    lines += [f"{key} = {value}\n" for key, value in mirror.items()]
    lines.append("[zoho]\n" + "".join(f'{k} = "{v}"\n' for k, v in zoho.zoho_config(user_extension_field="Extension").items()))
    path = tmp_path / "crmroute.toml"
    path.write_text("".join(lines))
    return str(path)


def test_mirror_sync_status_and_lookup_read_the_servers_file(zoho, team, tmp_path):
    from click.testing import CliRunner

    from fastagi_server.cli import cli

    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    zoho.add_record("Leads", team["ana"], Full_Name="Marta", Last_Name="Ruiz", Phone="+34928000002", Lead_Status="Junk Lead")
    config = _config_file(zoho, tmp_path)
    runner = CliRunner()

    before = runner.invoke(cli, ["mirror", "status", "--config", config])
    synced = runner.invoke(cli, ["mirror", "sync", "--config", config])
    zoho.reset_log()
    status = runner.invoke(cli, ["mirror", "status", "--config", config])
    as_json = runner.invoke(cli, ["mirror", "status", "--json", "--config", config])
    explained = runner.invoke(cli, ["lookup", CALLER, "--explain", "--config", config])

    assert before.exit_code == 1 and "no mirror file" in before.output
    assert synced.exit_code == 0 and "first load: wrote" in synced.output, synced.output
    assert status.exit_code == 0, status.output
    assert "ready: calls are answered from it" in status.output
    assert "Contacts           1         1         1" in status.output
    assert "Leads              1         0         1" in status.output
    assert "users        4 (4 active)" in status.output
    assert "estimate:" in status.output and "mirror" in status.output
    figures = json.loads(as_json.output)
    assert figures["ready"] is True and figures["credits_today"]["mirror"] > 0
    assert explained.exit_code == 0, explained.output
    assert "answered from the mirror" in explained.output
    assert "PJSIP/103" in explained.output
    assert zoho.api_requests() == [], "lookup and status read the file, they load nothing"


def test_mirror_commands_say_when_there_is_no_mirror(tmp_path):
    from click.testing import CliRunner

    from fastagi_server.cli import cli

    local = tmp_path / "local.toml"
    local.write_text('[crm]\nbackend = "local"\n')
    off = tmp_path / "off.toml"
    off.write_text('[crm]\nbackend = "zoho"\n[mirror]\nenabled = false\n')

    assert "has no mirror" in CliRunner().invoke(cli, ["mirror", "status", "--config", str(local)]).output
    assert "mirror is off" in CliRunner().invoke(cli, ["mirror", "sync", "--config", str(off)]).output


def test_the_call_log_line_says_the_answer_came_from_the_mirror_and_how_old_it_is(zoho, team, tmp_path, caplog):
    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    caplog.set_level(logging.INFO, logger="crmroute.call")

    async def scenario():
        app = App.from_config(mirror_config(zoho, tmp_path), serving=True)
        await app.mirror.refresher.open()
        await app.mirror.refresher.sync()
        async with agi_server(app=app) as server:
            return await route_call(server.port, caller=CALLER)

    result = run(scenario())

    assert result.variables["CRM_TARGET"] == "PJSIP/103"
    line = next(r.getMessage() for r in caplog.records if r.name == "crmroute.call")
    assert "source=mirror" in line and "mirror_age=" in line


# -- hostile and broken answers -----------------------------------------------------------

@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not JSON"),
        (b'{"data": {"id": "1"}}', "'data' is not a list"),
        (b'{"data": [{"id": "../../etc", "Full_Name": "x"}]}', "is not an id"),
        (b'{"data": [{"id": "1", "Modified_Time": "yesterday"}]}', "not an ISO 8601 time"),
        (b'{"data": [{"id": "1"}], "info": {"more_records": true}}', "no next_page_token"),
    ],
)
def test_a_broken_listing_fails_the_pass_and_the_mirror_keeps_what_it_had(zoho, team, tmp_path, body, reason):
    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)

    async def scenario():
        async with Router(mirror_config(zoho, tmp_path)) as router:
            await router.sync()
            zoho.add_fault(r"^/crm/v8/Contacts$", 200, body=body)
            with pytest.raises(CrmError) as failure:
                await router.sync()
            return failure.value, await router.decide()

    failure, decision = run(scenario())

    assert reason in str(failure)
    assert (decision.source, decision.extensions) == ("mirror", ["103"])


def test_crm_text_from_the_mirror_never_reaches_a_dial_string(zoho, tmp_path):
    rogue = zoho.add_user('Eve "x"\nSET VARIABLE X 1', "eve@example.com\r\n", Extension="101&Local/666@evil, 102")
    zoho.add_record("Contacts", rogue, Full_Name='Robert"); \u2028DROP\n"&PJSIP/999', Last_Name="R", Phone=CALLER)

    async def scenario():
        app = App.from_config(mirror_config(zoho, tmp_path, routing={"extension_pattern": "[0-9]{3}"}), serving=True)
        await app.mirror.refresher.open()
        await app.mirror.refresher.sync()
        async with agi_server(app=app) as server:
            return await route_call(server.port, caller=CALLER)

    result = run(scenario())

    # An extension field that is not a clean list of extensions gives that user none at all.
    assert (result.variables["CRM_ROUTE_STATUS"], result.variables["CRM_TARGET"]) == ("UNMAPPED", "")
    assert all("\n" not in value and "\r" not in value for value in result.variables.values())


def test_failed_refreshes_back_off_and_a_rate_limit_is_waited_out(zoho, team, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="crmroute.mirror")
    sleeps = []
    now = [1000.0]

    async def scenario():
        config = mirror_config(zoho, tmp_path, mirror={"refresh_s": 10, "retry_max_s": 25}, zoho={"backoff_initial_ms": 30_000})
        async with Router(config) as router:
            await router.sync()
            refresher = router.mirror.refresher
            router.app.backend.live.inner.api._breaker._clock = lambda: now[0]  # the breaker's time is the test's
            zoho.add_fault(r"^/crm/v8/Leads$", 500)
            stop = asyncio.Event()

            async def sleep(_stop, delay):
                sleeps.append(delay)
                now[0] += delay
                if len(sleeps) == 3:
                    zoho.clear_faults()
                    zoho.add_fault(r"^/crm/v8/Leads$", 429, times=1)
                if len(sleeps) == 6:
                    stop.set()

            refresher._sleep = sleep
            await refresher.run(stop)

    run(scenario())

    assert sleeps[:3] == [10, 20, 25], "doubling from refresh_s up to retry_max_s"
    assert sleeps[3] == 30, "a 429's back-off is waited out, even past retry_max_s"
    assert sleeps[4:] == [10, 10], "back to refresh_s once it works"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("refresh failed" in m for m in messages) == 1, messages
    assert sum("works again" in m for m in messages) == 1


@pytest.mark.parametrize("spoil, mirror, logged", [
    ("state", {"path": "{tmp}/state/mirror.sqlite"}, "calls are looked up live"),  # a file where its folder should be
    ("mirror.sqlite", {}, "cannot open the mirror"),  # not a database
])
def test_a_mirror_file_serve_cannot_open_leaves_routing_live(zoho, team, tmp_path, caplog, spoil, mirror, logged):
    zoho.add_record("Contacts", team["carla"], Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    (tmp_path / spoil).write_bytes(b"this is not a database, " * 200)
    mirror = {key: value.format(tmp=tmp_path) for key, value in mirror.items()}

    async def scenario():
        app = App.from_config(mirror_config(zoho, tmp_path, mirror=mirror), serving=True)
        try:
            return await app.router.decide(InboundCall(caller=CALLER))
        finally:
            await app.aclose()

    caplog.set_level(logging.ERROR, logger="crmroute.mirror")
    decision = run(scenario())

    assert (decision.source, decision.extensions) == ("live", ["103"])
    assert any(logged in r.getMessage() for r in caplog.records)
