"""retailCRM lookups over real HTTP on loopback, against the simulator.

Most scenarios go through the whole path: an Asterisk-like peer over TCP,
the FastAGI server, the router, the cache and the retailCRM client.
"""

from __future__ import annotations

import asyncio

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import agi_server, decide, decision_of, retailcrm_config, routed_variables, run
from crmlookup.factory import live_backend
from crmlookup.phone import normalise
from crmlookup.retailcrm.backend import phone_forms
from fastagi_server.app import App
from retailcrm_simulator import KEY

CALLER = "+79161234567"
TEAM = {"teams": {"desk": {"extensions": ["200"]}}, "team": "desk", "on_unavailable": ["next_owner", "team"]}


def route(simulator, caller=CALLER, *, statuses=False, **config):
    """Route one call over TCP; the CRM_* variables. ``statuses``: the managers' statuses are read first (as the server does)."""

    async def read_statuses(app: App) -> None:
        await live_backend(app.backend).read_statuses()

    return routed_variables(retailcrm_config(simulator, **config), caller, prepare=read_statuses if statuses else None)


def decision(simulator, caller=CALLER, **config):
    return decision_of(retailcrm_config(simulator, **config), caller)


@pytest.fixture
def managers(retailcrm):
    retailcrm.add_user(7, "Olga", "Petrova", code="101")
    retailcrm.add_user(8, "Ivan", "Sidorov", code="102")
    return retailcrm


@pytest.mark.parametrize("stored", ["+7 (916) 123-45-67", "79161234567", "9161234567", "8 916 123-45-67", "007-916-123-45-67"])
@pytest.mark.parametrize("caller", ["+79161234567", "89161234567", "9161234567"])
def test_callers_in_every_stored_format_route_to_the_responsible_managers_code(managers, stored, caller):
    managers.add_customer(501, "Anna", [stored], manager_id=7, last="Smirnova")
    variables = route(managers, caller)
    assert variables["CRM_ROUTE_STATUS"] == "OWNER"
    assert variables["CRM_TARGET"] == "PJSIP/101"
    assert variables["CRM_OWNER_ID"] == "7"
    assert variables["CRM_OWNER_NAME"] == "Olga Petrova"
    assert variables["CRM_MODULE"] == "Customers"
    assert variables["CRM_RECORD_ID"] == "501"
    assert variables["CRM_CALLER_NAME"] == "Anna Smirnova"


def test_the_stored_forms_are_asked_at_once_and_each_digit_string_once(managers):
    managers.add_customer(501, "Anna", ["89161234567"], manager_id=7)
    result = decision(managers)
    asked = [r.query["phone"][0] for r in managers.requests_to("/api/v5/telephony/manager")]
    assert sorted(asked) == sorted(phone_forms(normalise(CALLER, "RU")))
    assert asked and len({form.lstrip("+") for form in asked}) == len(asked)
    assert all(r.query["ignoreStatus"] == ["1"] and r.query["details"] == ["1"] for r in managers.requests_to("/api/v5/telephony/manager"))
    assert result.status.value == "OWNER"


def test_an_unknown_caller_is_nomatch(managers):
    assert route(managers)["CRM_ROUTE_STATUS"] == "NOMATCH"


def test_a_customer_without_a_manager_is_unmapped(managers):
    managers.add_customer(501, "Anna", [CALLER])
    variables = route(managers, routing={"on_unmapped": []})
    assert variables["CRM_ROUTE_STATUS"] == "UNMAPPED" and variables["CRM_RECORD_ID"] == "501"


@pytest.mark.parametrize("status", ["busy", "break", "dinner"])
def test_a_manager_who_is_not_free_is_passed_over_for_the_team(managers, status):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    managers.set_status(7, status)
    variables = route(managers, statuses=True, routing=TEAM)
    assert variables["CRM_ROUTE_STATUS"] == "SHARED"
    assert variables["CRM_TARGET"] == "PJSIP/200"
    assert f"status {status}" in variables["CRM_ROUTE_REASON"]


def test_a_free_manager_rings_and_skip_statuses_is_configurable(managers):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    managers.set_status(7, "dinner")
    assert route(managers, statuses=True, routing=TEAM)["CRM_TARGET"] == "PJSIP/200"
    # An admin whose managers answer during dinner says so.
    assert route(managers, statuses=True, routing=TEAM, retailcrm={"skip_statuses": ["busy", "break"]})["CRM_TARGET"] == "PJSIP/101"
    managers.set_status(7, "free")
    assert route(managers, statuses=True, routing=TEAM)["CRM_TARGET"] == "PJSIP/101"


def test_a_deactivated_manager_never_rings(managers):
    managers.add_user(9, "Gone", "Away", code="109", active=False)
    managers.add_customer(501, "Anna", [CALLER], manager_id=9)
    variables = route(managers, statuses=True, routing={**TEAM, "on_unmapped": ["team"]})
    assert variables["CRM_TARGET"] == "PJSIP/200"
    assert "not an active CRM user" in variables["CRM_ROUTE_REASON"]


@pytest.mark.parametrize("code", ["101&PJSIP/666", "101,tT", "${SHELL(id)}", "101\nHANGUP", "IAX2/evil", " ", "1" * 40])
def test_hostile_manager_codes_never_reach_a_dial_string(managers, code):
    managers.add_user(10, "Eve", code=code)
    managers.add_customer(501, "Anna", [CALLER], manager_id=10)
    variables = route(managers, routing={"on_unmapped": ["team"], **TEAM})
    assert variables["CRM_TARGET"] in ("", "PJSIP/200")
    assert "666" not in variables["CRM_TARGET"] and "SHELL" not in variables["CRM_TARGET"]


def test_hostile_manager_and_customer_names_are_set_as_plain_text(managers):
    managers.add_user(11, 'Olga "the boss"\nSET VARIABLE X 1', "${SHELL(id)}", code="111")
    managers.add_customer(501, "Anna\r\n200 result=1", [CALLER], manager_id=11, last="O'Neil\u2028")
    peer = AsteriskPeer()

    async def scenario():
        async with agi_server(retailcrm_config(managers)) as server:
            return await peer.call(server.port, asterisk_headers(caller=CALLER))

    result = run(scenario())
    assert result.variables["CRM_TARGET"] == "PJSIP/111"
    assert "X" not in result.variables
    assert result.variables["CRM_OWNER_NAME"] == 'Olga "the boss" SET VARIABLE X 1 ${SHELL(id)}'
    assert "\n" not in result.variables["CRM_CALLER_NAME"] and "\r" not in result.variables["CRM_CALLER_NAME"]
    # Text holding "$" goes only through SET VARIABLE, which Asterisk never evaluates.
    assert not any("$" in " ".join(argv) for argv in result.commands if argv[0] == "EXEC")


def test_a_wrong_key_routes_error_and_the_key_is_never_logged(managers, call_log):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    variables = route(managers, retailcrm={"api_key": "not-the-key"})
    assert variables["CRM_ROUTE_STATUS"] == "ERROR"
    assert 'Wrong "apiKey" value.' in variables["CRM_ROUTE_REASON"]
    route(managers)
    logged = "\n".join(record.getMessage() for record in call_log.records)
    assert "not-the-key" not in logged and KEY not in logged
    assert "telephony/manager" in logged  # the log does say what was asked


def test_the_key_travels_in_a_header_never_in_the_url(managers):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    result = decision(managers)
    assert all("apiKey" not in r.query for r in managers.requests)
    assert KEY not in "\n".join(result.steps)


def test_rate_limit_backs_off_and_the_cache_answers_meanwhile(managers):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)

    async def scenario():
        app = App.from_config(retailcrm_config(managers, cache={"ttl_s": 0}))
        try:
            first = await decide(app, CALLER)
            managers.fail_next("/api/v5/telephony/manager", 503, {"success": False, "errorMsg": "Rate limit exceeded"}, count=10, headers={"Retry-After": "30"})
            second = await decide(app, CALLER)  # an expired entry: served stale
            asked = len(managers.requests_to("/api/v5/telephony/manager"))
            third = await decide(app, CALLER)
            return first, second, third, asked, len(managers.requests_to("/api/v5/telephony/manager"))
        finally:
            await app.aclose()

    first, second, third, asked, asked_after = run(scenario())
    assert first.target == second.target == third.target == "PJSIP/101"
    assert second.from_cache  # the expired entry, served while retailCRM asks us to wait
    assert asked_after == asked  # backing off: the third call asked nothing


def test_a_key_over_its_rate_limit_routes_error_not_a_crash(managers):
    managers.rate_limit_per_s = 0  # every request past the limit
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    result = decision(managers)
    assert result.status.value == "ERROR"
    assert "503 Rate limit exceeded" in result.reason


@pytest.mark.parametrize(
    "status, body",
    [
        (200, b"{not json"),
        (200, b"[1, 2]"),
        (500, b"<html>oops</html>"),
        (400, {"success": False, "errorMsg": "Errors in the input parameters", "errors": {"phone": "bad\nline"}}),
        (200, {"success": True, "customer": "nobody", "manager": [1]}),
    ],
)
def test_broken_answers_give_a_safe_route(managers, status, body):
    managers.fail_next("/api/v5/telephony/manager", status, body, count=10)
    variables = route(managers)
    assert variables["CRM_ROUTE_STATUS"] in ("ERROR", "NOMATCH")
    assert "\n" not in variables["CRM_ROUTE_REASON"]


def test_a_slow_retailcrm_times_out_within_the_deadline(managers):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    managers.path_latency_s["/api/v5/telephony/manager"] = 1.0
    result = decision(managers, routing={"deadline_ms": 200})
    assert result.status.value == "TIMEOUT"
    assert result.lookup_ms < 900


def test_statuses_are_read_page_by_page(retailcrm):
    for user_id in range(1, 131):
        retailcrm.add_user(user_id, f"User{user_id}", code=str(1000 + user_id), status="busy" if user_id == 120 else "free")
    retailcrm.rate_limit_per_s = None

    async def scenario():
        app = App.from_config(retailcrm_config(retailcrm))
        try:
            backend = live_backend(app.backend)
            await backend.read_statuses()
            return dict(backend.statuses)
        finally:
            await app.aclose()

    statuses = run(scenario())
    assert len(statuses) == 130 and statuses["120"] == ("busy", True)
    assert [r.query["page"] for r in retailcrm.requests_to("/api/v5/users")] == [["1"], ["2"]]


def test_the_server_keeps_statuses_fresh_in_the_background(managers):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    managers.set_status(7, "break")

    async def scenario():
        app = App.from_config(retailcrm_config(managers, routing=TEAM, retailcrm={"status_refresh_s": 1}), serving=True)
        try:
            app.start_mirror()  # what `crmroute serve` does at start: the statuses are read ahead
            backend = live_backend(app.backend)
            for _ in range(200):
                if backend.statuses:
                    break
                await asyncio.sleep(0.05)
            return (await decide(app, CALLER)).target
        finally:
            await app.aclose()

    assert run(scenario()) == "PJSIP/200"


def test_missing_settings_name_the_key(retailcrm, monkeypatch, tmp_path):
    from crmlookup.errors import CrmError

    monkeypatch.delenv("CRMROUTE_RETAILCRM_API_KEY", raising=False)
    config = retailcrm_config(retailcrm, retailcrm={"api_key": ""})
    with pytest.raises(CrmError, match="retailcrm.api_key is not set"):
        App.from_config(config)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("CRMROUTE_RETAILCRM_API_KEY", "from-the-environment")
    app = App.from_config(retailcrm_config(retailcrm, retailcrm={"api_key": "", "api_key_file": str(key_file)}))
    run(app.aclose())


@pytest.mark.parametrize(
    "section, message",
    [
        ({"url": "mystore.retailcrm.ru"}, "retailcrm: url 'mystore.retailcrm.ru' must be the account's address"),
        ({"skip_statuses": ["lunch"]}, "retailcrm: skip_statuses: 'lunch' is not one of free, busy, dinner, break"),
        ({"apikey": "x"}, "retailcrm.apikey: unknown key"),
        ({"api_key": 12345}, "retailcrm.api_key: expected a string, got an integer (value not shown: a credential)"),
    ],
)
def test_bad_settings_name_the_key(section, message):
    from conftest import make_config
    from fastagi_server.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_config({"crm": {"backend": "retailcrm"}, "retailcrm": section})
    assert message in str(caught.value)
    assert "12345" not in str(caught.value)


def test_lookup_order_defaults_to_retailcrms_record_kinds_and_refuses_zohos(retailcrm):
    from conftest import make_config
    from fastagi_server.config import ConfigError

    config = retailcrm_config(retailcrm)
    assert config.routing.lookup_order == ("Customers",)
    with pytest.raises(ConfigError, match="routing: lookup_order: 'Leads' is not one of Customers, LastAgent"):
        make_config({"crm": {"backend": "retailcrm"}, "routing": {"lookup_order": ["Leads", "Customers"]}})


def test_the_readme_retailcrm_configuration_loads():
    import re
    import tomllib
    from pathlib import Path

    from conftest import make_config

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## retailCRM"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S)[1]
    config = make_config(tomllib.loads(block))
    assert config.crm.backend == "retailcrm" and config.routing.lookup_order == ("Customers",)
    assert config.settings_of(config.plugin).url == "https://mystore.retailcrm.ru"


def test_a_process_that_read_no_statuses_says_so(managers):
    managers.add_customer(501, "Anna", [CALLER], manager_id=7)
    managers.set_status(7, "break")
    result = decision(managers)
    assert result.target == "PJSIP/101"
    assert any("statuses not read in this process" in step for step in result.steps)
