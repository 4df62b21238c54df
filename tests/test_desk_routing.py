"""The Tickets rule over real HTTP: a caller with an open Zoho Desk ticket rings the agent who owns it.

The calls go through the whole path: an Asterisk-like peer over TCP, the
FastAGI server, the router, the cache and the Desk client, against the Desk
simulator (and the local directory or the Zoho CRM simulator beside it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from asterisk_peer import route_call
from conftest import agi_server, decide, decision_of, make_config, run
from fastagi_server.app import App
from fastagi_server.config import Config, ConfigError
from zoho_desk_simulator import ZohoDeskSimulator

CALLER = "+34928000000"
SUPPORT = {"teams": {"support": {"extensions": ["300", "301"], "departments": ["Support"]}}}


@pytest.fixture
def desk() -> Iterator[ZohoDeskSimulator]:
    with ZohoDeskSimulator() as simulator:
        simulator.support = simulator.add_department("Support")  # type: ignore[attr-defined]
        simulator.ann = simulator.add_agent("Ann", "Lee", email="ann@example.com", extn="201")  # type: ignore[attr-defined]
        simulator.bob = simulator.add_agent("Bob", "Ray", email="bob@example.com", extn="202")  # type: ignore[attr-defined]
        yield simulator


def desk_config(desk: ZohoDeskSimulator, *, routing: dict[str, Any] | None = None, zoho_desk: dict[str, Any] | None = None,
                **sections: Any) -> Config:
    """The local directory as the CRM, Desk beside it; the lookup order is Tickets, LastAgent-free, then the CRM's Contacts."""
    return make_config({
        "routing": {"default_region": "ES", "lookup_order": ["Tickets", "Contacts"], "check_availability": False,
                    **SUPPORT, **(routing or {})},
        "zoho_desk": desk.desk_config(**(zoho_desk or {})),
        **sections,
    })


def route(config: Config, caller: str = CALLER) -> dict[str, str]:
    async def scenario() -> dict[str, str]:
        async with agi_server(app=App.from_config(config)) as server:
            return (await route_call(server.port, caller=caller)).variables

    return run(scenario())


def decision(config: Config, caller: str = CALLER) -> Any:
    return decision_of(config, caller)


def test_an_open_ticket_rings_its_agent(desk: ZohoDeskSimulator) -> None:
    ticket = desk.add_ticket("+34 928 00 00 00", assignee=desk.ann, department=desk.support)  # type: ignore[attr-defined]
    variables = route(desk_config(desk))
    assert variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert variables["CRM_TARGET"] == "PJSIP/201"
    assert variables["CRM_MODULE"] == "Tickets" and variables["CRM_RECORD_ID"] == ticket
    assert variables["CRM_OWNER_ID"] == desk.ann and variables["CRM_OWNER_EMAIL"] == "ann@example.com"  # type: ignore[attr-defined]
    [search] = desk.requests_to("/api/v1/tickets/search")
    assert search.query["sortBy"] == ["-modifiedTime"] and "+34928000000" in search.query["phone"][0].split(",")


def test_owner_extensions_by_agent_email_win_over_extn(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    result = decision(desk_config(desk, routing={"owner_extensions": {"ANN@example.com": ["250"]}}))
    assert result.target == "PJSIP/250"


def test_of_two_open_tickets_the_most_recently_modified_decides(desk: ZohoDeskSimulator) -> None:
    first = desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    second = desk.add_ticket(CALLER, assignee=desk.bob)  # type: ignore[attr-defined]
    assert decision(desk_config(desk)).target == "PJSIP/202"
    desk.update_ticket(first, subject="customer wrote again")  # now the most recently modified
    result = decision(desk_config(desk))
    assert (result.target, result.match.record_id) == ("PJSIP/201", first)
    assert second != first


def test_on_hold_counts_unless_configured_not_to(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.bob, status_type="Open", modified_s_ago=3000)  # type: ignore[attr-defined]
    desk.add_ticket(CALLER, assignee=desk.ann, status_type="On Hold")  # type: ignore[attr-defined]
    assert decision(desk_config(desk)).target == "PJSIP/201"
    assert decision(desk_config(desk, zoho_desk={"include_on_hold": False})).target == "PJSIP/202"


def test_a_closed_ticket_does_not_route(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann, status_type="Closed")  # type: ignore[attr-defined]
    result = decision(desk_config(desk))
    assert result.status.value == "NOMATCH" and not result.target
    assert "is closed" in result.reason


def test_an_unassigned_ticket_rings_its_departments_team(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=None, department=desk.support)  # type: ignore[attr-defined]
    variables = route(desk_config(desk))
    assert variables["CRM_ROUTE_STATUS"] == "SHARED"
    assert variables["CRM_TARGET"] == "PJSIP/300&PJSIP/301"
    assert variables["CRM_MODULE"] == "Tickets"


def test_an_unassigned_ticket_of_a_department_without_a_team_is_unmapped(desk: ZohoDeskSimulator) -> None:
    billing = desk.add_department("Billing")
    desk.add_ticket(CALLER, assignee=None, department=billing)
    assert decision(desk_config(desk)).status.value == "UNMAPPED"


def test_an_agent_desk_lists_offline_is_passed_over(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann, department=desk.support)  # type: ignore[attr-defined]
    desk.set_online(desk.ann, False)  # type: ignore[attr-defined]
    result = decision(desk_config(desk, routing={"team": "support", "on_unavailable": ["team"]}))
    assert result.target == "PJSIP/300&PJSIP/301" and "offline in Zoho Desk" in result.reason


def test_a_disabled_agent_never_rings(desk: ZohoDeskSimulator) -> None:
    gone = desk.add_agent("Cy", extn="203", status="DISABLED")
    desk.add_ticket(CALLER, assignee=gone)
    assert decision(desk_config(desk)).target != "PJSIP/203"


def beside_zoho(desk: ZohoDeskSimulator, zoho: Any, **routing: Any) -> Config:
    """Zoho CRM answers the Contacts rule (a contact of Sales Sam, on 109), Desk the Tickets rule."""
    user = zoho.add_user("Sales Sam", "sam@example.com")
    zoho.add_record("Contacts", owner=user, Last_Name="Ana", Phone=CALLER)
    return make_config({
        "crm": {"backend": "zoho"},
        "zoho": zoho.zoho_config(),
        "mirror": {"enabled": False},
        "zoho_desk": desk.desk_config(),
        "routing": {"default_region": "ES", "lookup_order": ["Tickets", "Contacts"], "check_availability": False,
                    "owner_extensions": {"sam@example.com": ["109"]}, **routing},
    })


def test_desk_down_the_next_rule_decides_within_the_deadline(desk: ZohoDeskSimulator, zoho: Any) -> None:
    """Desk refuses connections: the CRM's Contacts rule decides, before the deadline."""
    config = beside_zoho(desk, zoho)
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    desk.go_down()
    result = decision(config)
    assert (result.status.value, result.target, result.match.module) == ("OWNER", "PJSIP/109", "Contacts")
    assert result.lookup_ms < config.routing.deadline_ms
    assert any("Zoho Desk lookup failed" in step for step in result.steps)


def test_desk_slow_the_crm_still_decides_within_the_one_deadline(desk: ZohoDeskSimulator, zoho: Any) -> None:
    config = beside_zoho(desk, zoho, deadline_ms=800)
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    desk.path_latency_s["/api/v1/tickets/search"] = 5.0
    result = decision(config)
    assert (result.status.value, result.target) == ("OWNER", "PJSIP/109")
    assert result.lookup_ms < 5000  # the one deadline (800 ms), not Desk's 5 s
    assert any("did not answer within 800 ms" in step for step in result.steps)


def test_desk_slow_the_next_rule_decides_within_the_deadline(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    desk.path_latency_s["/api/v1/tickets/search"] = 5.0
    config = desk_config(desk, routing={"deadline_ms": 300, "lookup_order": ["Tickets"], "team": "support", "on_unmapped": ["team"]})
    result = decision(config)
    assert result.status.value == "TIMEOUT"
    assert result.lookup_ms < 5000


def test_broken_json_from_desk_is_an_error_not_a_crash(desk: ZohoDeskSimulator) -> None:
    desk.fail_next("/api/v1/tickets/search", 200, b"{broken")
    result = decision(desk_config(desk, routing={"lookup_order": ["Tickets"]}))
    assert result.status.value == "ERROR" and "not JSON" in result.reason


def test_an_expired_token_is_renewed_once(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]

    async def scenario() -> tuple[str, str]:
        app = App.from_config(desk_config(desk, cache={"ttl_s": 0, "negative_ttl_s": 0}))
        try:
            first = await decide(app, CALLER)
            desk.expire_tokens()
            second = await decide(app, "+34 928 000 000")
            return first.target, second.target
        finally:
            await app.aclose()

    assert run(scenario()) == ("PJSIP/201", "PJSIP/201")
    assert len(desk.tokens_issued) == 2


def test_the_ticket_search_and_the_agents_go_at_once(desk: ZohoDeskSimulator) -> None:
    """One round trip: the ticket and contact searches, the agents, the departments and the
    availability are all being answered at the same moment (each is held by the latency)."""
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    desk.latency_s = 0.4
    result = decision(desk_config(desk, routing={"deadline_ms": 10_000}))
    assert result.target == "PJSIP/201"
    assert desk.max_in_flight == 5


def test_tickets_without_zoho_desk_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="zoho_desk.org_id"):
        make_config({"routing": {"lookup_order": ["Tickets", "Contacts"]}})


def test_a_department_taken_by_two_teams_is_refused() -> None:
    teams = {"a": {"extensions": ["1"], "departments": ["Support"]}, "b": {"extensions": ["2"], "departments": ["support"]}}
    with pytest.raises(ConfigError, match="departments"):
        make_config({"routing": {"teams": teams}})


def test_hostile_desk_text_never_reaches_the_dial_string(desk: ZohoDeskSimulator) -> None:
    evil = desk.add_agent("Eve\nHANGUP", "x\"y", extn="201&PJSIP/999,,tT")
    desk.add_ticket(CALLER, assignee=evil, subject="a\u2028b\r\nSET VARIABLE X 1")
    variables = route(desk_config(desk))
    assert variables["CRM_TARGET"] == ""
    assert variables["CRM_ROUTE_STATUS"] == "UNMAPPED"
    assert "\n" not in variables["CRM_OWNER_NAME"]


def test_beside_zoho_crm_a_ticket_comes_first(desk: ZohoDeskSimulator, zoho: Any) -> None:
    config = beside_zoho(desk, zoho)
    assert decision(config).target == "PJSIP/109"  # no ticket: the CRM's contact
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    assert decision(config).target == "PJSIP/201"


def test_concurrent_calls_from_one_number_search_desk_once(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    desk.latency_s = 0.2

    async def scenario() -> list[str]:
        app = App.from_config(desk_config(desk, routing={"deadline_ms": 5000}))
        try:
            results = await asyncio.gather(*(decide(app, CALLER) for _ in range(10)))
            return [r.target for r in results]
        finally:
            await app.aclose()

    assert run(scenario()) == ["PJSIP/201"] * 10
    assert len(desk.requests_to("/api/v1/tickets/search")) == 1


def readme_policies() -> dict[str, Any]:
    """The README's per-DID policies (the sales and the support line), as TOML."""
    import tomllib
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Per-DID policies"):]
    start = section.index("```toml\n") + len("```toml\n")
    return tomllib.loads(section[start:section.index("```", start)])


def test_the_readmes_support_policy_loads_and_uses_the_desk_rule() -> None:
    config = make_config(readme_policies())
    support = config.routing.policies["support"]
    assert support.lookup_order is not None and support.lookup_order[0] == "Tickets"
    assert config.zoho_desk.org_id and config.routing.teams["support_desk"].departments == ("Support",)


def test_the_sample_dialplans_support_line_rings_the_agent_of_the_open_ticket(desk: ZohoDeskSimulator, tmp_path: Any) -> None:
    """extensions.conf.sample, run by the Asterisk model, with the README's policies pointed at the Desk simulator."""
    from asterisk_dialplan import Channel, Dialplan, Pbx
    from test_sample_dialplan import QUEUES, SAMPLE, SUPPORT_DID, answered_by, queue_names

    data = readme_policies()
    data["zoho_desk"] = desk.desk_config()
    data["outbox"] = {"path": str(tmp_path / "outbox.sqlite")}
    ticket = desk.add_ticket(CALLER, assignee=desk.ann, department=desk.support)  # type: ignore[attr-defined]

    async def scenario() -> Channel:
        async with agi_server(make_config(data)) as server:
            pbx = Pbx(Dialplan.parse(SAMPLE), globals={"CRM_AGI": f"agi://127.0.0.1:{server.port}"}, dial=answered_by("201"),
                      queues=queue_names(QUEUES))
            channel = Channel(caller=CALLER, dnid=SUPPORT_DID)
            await pbx.call("from-trunk", SUPPORT_DID, channel)
            return channel

    channel = run(scenario())
    assert channel.variables["CRM_MODULE"] == "Tickets" and channel.variables["CRM_RECORD_ID"] == ticket
    assert channel.variables["CRM_TARGET"] == "PJSIP/201"
    assert any(app == "Dial" and data.startswith("PJSIP/201") for app, data in channel.ran)


def test_a_ticket_raised_by_mail_is_found_through_the_callers_contact(desk: ZohoDeskSimulator) -> None:
    """The ticket has no phone; the contact who raised it has the caller's mobile: a second request finds it."""
    contact = desk.add_contact("Ana", "Díaz", mobile="+34 928 00 00 00")
    ticket = desk.add_ticket("", assignee=desk.bob, contact_id=contact)  # type: ignore[attr-defined]
    variables = route(desk_config(desk))
    assert (variables["CRM_TARGET"], variables["CRM_RECORD_ID"]) == ("PJSIP/202", ticket)
    assert variables["CRM_CALLER_NAME"] == "Ana Díaz"
    [by_contact] = [r for r in desk.requests_to("/api/v1/tickets/search") if "contactId" in r.query]
    assert by_contact.query["contactId"] == [contact]


def test_a_contact_whose_tickets_carry_the_phone_costs_no_second_request(desk: ZohoDeskSimulator) -> None:
    contact = desk.add_contact("Ana", "Díaz", phone=CALLER)
    desk.add_ticket(CALLER, assignee=desk.ann, contact_id=contact)  # type: ignore[attr-defined]
    assert decision(desk_config(desk)).target == "PJSIP/201"
    assert len(desk.requests_to("/api/v1/tickets/search")) == 1
    assert len(desk.requests_to("/api/v1/contacts/search")) == 1


def test_contacts_search_failing_still_routes_by_the_tickets_phone(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    desk.fail_next("/api/v1/contacts/search", 403, {"errorCode": "SCOPE_MISMATCH", "message": "OAuth scope mismatch"})
    result = decision(desk_config(desk))
    assert result.target == "PJSIP/201" and any("contacts not searched" in step for step in result.steps)


def test_desks_requests_are_in_the_servers_metrics(desk: ZohoDeskSimulator) -> None:
    import dataclasses

    from fastagi_server.config import MetricsSettings
    from metrics_scrape import scrape, total

    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]
    config = dataclasses.replace(desk_config(desk), metrics=MetricsSettings(listen="127.0.0.1:0"))

    async def scenario() -> Any:
        async with agi_server(config) as server:
            await route_call(server.port, caller=CALLER)
            return await asyncio.to_thread(scrape, server.monitor.url)

    samples = run(scenario())
    assert total(samples, "crmroute_crm_requests_total", backend="zoho_desk", operation="lookup", result="ok") >= 2
    assert total(samples, "crmroute_token_mints_total", backend="zoho_desk") == 1


def test_a_tickets_only_policy_says_where_its_answer_came_from(desk: ZohoDeskSimulator) -> None:
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]

    async def scenario() -> tuple[str, str]:
        app = App.from_config(desk_config(desk, routing={"lookup_order": ["Tickets"]}))
        try:
            first, second = await decide(app, CALLER), await decide(app, CALLER)
            return first.source, second.source
        finally:
            await app.aclose()

    assert run(scenario()) == ("live", "cache")


def test_desk_down_a_caller_seen_before_still_rings_the_tickets_agent_from_the_cache(desk: ZohoDeskSimulator) -> None:
    """The cache entry has expired (ttl 0); Desk refuses connections: the stale entry beats no answer."""
    desk.add_ticket(CALLER, assignee=desk.ann)  # type: ignore[attr-defined]

    async def scenario() -> tuple[str, str, str]:
        app = App.from_config(desk_config(desk, routing={"lookup_order": ["Tickets"]}, cache={"ttl_s": 0, "negative_ttl_s": 0}))
        try:
            first = await decide(app, CALLER)
            desk.go_down()
            second = await decide(app, CALLER)
            served = next((step for step in second.steps if "serving the entry that expired" in step), "")
            return first.target, second.target, served
        finally:
            await app.aclose()

    first, second, served = run(scenario())
    assert (first, second) == ("PJSIP/201", "PJSIP/201")
    assert "zoho_desk failed" in served


def test_lookup_explain_shows_the_ticket_and_its_agent(desk: ZohoDeskSimulator, tmp_path: Any) -> None:
    """``crmroute lookup --explain`` asks Desk as a call would, and says which ticket decided."""
    import subprocess
    import sys

    ticket = desk.add_ticket(CALLER, assignee=desk.ann, subject="Printer on fire")  # type: ignore[attr-defined]
    settings = desk.desk_config(token_cache_file=str(tmp_path / "desk-token.json"))
    lines = "\n".join(f'{key} = "{value}"' for key, value in settings.items())
    path = tmp_path / "crmroute.toml"
    path.write_text(f'[routing]\ndefault_region = "ES"\nlookup_order = ["Tickets"]\ncheck_availability = false\n[zoho_desk]\n{lines}\n')
    done = subprocess.run([sys.executable, "-m", "fastagi_server", "lookup", CALLER, "--explain", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"matched Tickets {ticket}" in done.stdout and "PJSIP/201" in done.stdout
