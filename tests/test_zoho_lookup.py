"""The Zoho CRM lookup over real HTTP on loopback, against the simulator.

Most scenarios go through the whole path: an Asterisk-like peer over TCP,
the FastAGI server, the router, the cache and the Zoho client.
"""

import json

import pytest

from asterisk_peer import route_call
from conftest import agi_server, decide, decision_of, routed_variables, run, zoho_config
from crmlookup.phone import normalise
from dialplan import CONTRACT_VARIABLES
from fastagi_server.app import App

CALLER = "+34928000000"


def route(simulator, caller=CALLER, **config):
    """Route one call over TCP; the CRM_* variables."""
    return routed_variables(zoho_config(simulator, **config), caller)


def decision(simulator, caller=CALLER, **config):
    """The router's decision (with its steps) for one call."""
    return decision_of(zoho_config(simulator, **config), caller)


def search_requests(simulator, module=""):
    return [r for r in simulator.api_requests() if r.path.endswith("/search") and module in r.path]


@pytest.fixture
def team(zoho):
    """Four salespeople with extensions in a Users custom field."""
    return {
        name: zoho.add_user(f"{name.title()} Rep", f"{name}@example.com", Extension=ext)
        for name, ext in (("lead", "101"), ("deal", "102"), ("contact", "103"), ("account", "104"))
    }


def add_contact_with_deal(zoho, owner, deal_owner, phone, stage="Negotiation/Review"):
    contact = zoho.add_record("Contacts", owner, Full_Name="Lucía Romero", Last_Name="Romero", Phone=phone)
    zoho.add_record("Deals", deal_owner, Deal_Name="Ampliación", Stage=stage, Contact_Name={"name": "Lucía Romero", "id": contact["id"]})
    return contact


# -- which record decides -------------------------------------------------

@pytest.mark.parametrize(
    "stored_in, expected",
    [
        (("Leads", "Deals", "Contacts", "Accounts"), ("Leads", "101")),
        (("Deals", "Contacts", "Accounts"), ("Deals", "102")),
        (("Contacts", "Accounts"), ("Contacts", "103")),
        (("Accounts",), ("Accounts", "104")),
    ],
)
def test_open_lead_beats_open_deal_beats_contact_beats_account(zoho, team, stored_in, expected):
    if "Leads" in stored_in:
        zoho.add_record("Leads", team["lead"], Full_Name="Marta Ruiz", Last_Name="Ruiz", Mobile=CALLER, Lead_Status="Contacted")
    if "Deals" in stored_in:
        add_contact_with_deal(zoho, team["contact"], team["deal"], CALLER)
    elif "Contacts" in stored_in:
        zoho.add_record("Contacts", team["contact"], Full_Name="Pedro Gil", Last_Name="Gil", Phone=CALLER)
    if "Accounts" in stored_in:
        zoho.add_record("Accounts", team["account"], Account_Name="Hotel Las Palmas", Phone=CALLER)

    v = route(zoho, zoho={"user_extension_field": "Extension"})

    assert (v["CRM_ROUTE_STATUS"], v["CRM_MODULE"], v["CRM_EXTENSION"]) == ("OWNER", *expected)
    assert v["CRM_TARGET"] == f"PJSIP/{expected[1]}"


def test_lookup_order_comes_from_the_routing_config(zoho, team):
    zoho.add_record("Leads", team["lead"], Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=CALLER, Lead_Status="Contacted")
    zoho.add_record("Accounts", team["account"], Account_Name="Hotel Las Palmas", Phone=CALLER)

    v = route(zoho, routing={"lookup_order": ["Accounts", "Leads"]}, zoho={"user_extension_field": "Extension"})

    assert (v["CRM_MODULE"], v["CRM_EXTENSION"]) == ("Accounts", "104"), "the order decides, though every module was asked at once"
    assert search_requests(zoho, "Leads") and search_requests(zoho, "Accounts")


def test_converted_and_junk_leads_and_closed_deals_are_skipped(zoho, team):
    zoho.add_record("Leads", team["lead"], Full_Name="Converted", Last_Name="C", Phone=CALLER, Lead_Status="Contacted", **{"$converted": True})
    zoho.add_record("Leads", team["lead"], Full_Name="Junk", Last_Name="J", Phone=CALLER, Lead_Status="Junk Lead")
    zoho.add_record("Leads", team["lead"], Full_Name="Lost", Last_Name="L", Mobile=CALLER, Lead_Status="lost lead")
    add_contact_with_deal(zoho, team["contact"], team["deal"], CALLER, stage="Closed Won")

    d = decision(zoho, zoho={"user_extension_field": "Extension"})

    assert d.status.value == "OWNER"
    assert (d.match.module, d.extensions) == ("Contacts", ["103"])
    explained = "\n".join(d.steps)
    assert "Lead_Status 'Junk Lead' counts as closed" in explained
    assert "Lead_Status 'lost lead' counts as closed" in explained  # statuses compare without case
    assert "stage 'Closed Won' is closed won" in explained
    assert "Leads 'Converted'" not in explained and "converted" not in d.match.name.lower(), "converted leads never come back from the search"


def test_a_caller_with_only_a_closed_lead_is_not_called_unknown(zoho, team):
    zoho.add_record("Leads", team["lead"], Full_Name="Junk", Last_Name="J", Phone=CALLER, Lead_Status="Junk Lead")
    contact = zoho.add_record("Contacts", None, Full_Name="Lucía", Last_Name="Romero", Phone="+34928000077")
    zoho.add_record("Deals", team["deal"], Deal_Name="Won", Stage="Closed Won", Contact_Name={"id": contact["id"]})

    junk = decision(zoho, routing={"lookup_order": ["Leads", "Deals"]})
    won = decision(zoho, caller="+34928000077", routing={"lookup_order": ["Deals"]})

    assert junk.status.value == "NOMATCH" and won.status.value == "NOMATCH"
    assert junk.reason.startswith("no open record of the caller: Leads ") and "is closed (Lead_Status 'Junk Lead')" in junk.reason
    assert won.reason.startswith("no open record of the caller: Deals ") and "is closed (stage 'Closed Won')" in won.reason


def test_deal_openness_comes_from_the_pipeline_not_the_stage_name(zoho, team):
    zoho.add_layout("Ventas", [("Ventas", [("Cerrando", "Open"), ("Ganado", "Closed Won"), ("Perdido", "Closed Lost")])])
    contact = zoho.add_record("Contacts", team["contact"], Full_Name="Lucía", Last_Name="Romero", Phone=CALLER)
    for stage, owner in (("Perdido", team["lead"]), ("Ganado", team["account"]), ("Cerrando", team["deal"])):
        zoho.add_record("Deals", owner, Deal_Name=stage, Stage=stage, Pipeline={"name": "Ventas", "id": "1"}, Contact_Name={"id": contact["id"]})

    d = decision(zoho, zoho={"user_extension_field": "Extension"})

    assert (d.match.module, d.match.name, d.extensions) == ("Deals", "Cerrando", ["102"])
    assert sum(1 for r in zoho.api_requests() if r.path.endswith("/settings/pipeline")) == 2  # both layouts, read once


def test_stage_table_is_cached_and_layout_ids_can_be_configured(zoho, team):
    layout_id = zoho.add_layout("Ventas", [("Ventas", [("Cerrando", "Open")])])
    for number in ("928000001", "928000002"):
        add_contact_with_deal(zoho, team["contact"], team["deal"], "+34" + number, stage="Cerrando")

    async def scenario():
        app = App.from_config(zoho_config(zoho, zoho={"deal_layout_ids": [layout_id]}))
        try:
            return [await decide(app, caller) for caller in ("928000001", "928000002")]
        finally:
            await app.aclose()

    first, second = run(scenario())
    assert first.match.module == second.match.module == "Deals"
    assert not zoho.requests("/crm/v8/settings/layouts"), "configured layouts are not asked for"
    assert len(zoho.requests("/crm/v8/settings/pipeline")) == 1


def test_a_stage_no_pipeline_knows_counts_as_open_and_says_so(zoho, team):
    add_contact_with_deal(zoho, team["contact"], team["deal"], CALLER, stage="Brand New Stage")

    d = decision(zoho, zoho={"user_extension_field": "Extension"})

    assert d.match.module == "Deals"
    assert any("'Brand New Stage' is in no pipeline's settings; counted as open" in step for step in d.steps)


def test_deals_are_reached_through_the_account_when_no_contact_matches(zoho, team):
    account = zoho.add_record("Accounts", team["account"], Account_Name="Hotel", Phone=CALLER)
    zoho.add_record("Deals", team["deal"], Deal_Name="Hotel renewal", Stage="Qualification", Account_Name={"name": "Hotel", "id": account["id"]})

    d = decision(zoho, zoho={"user_extension_field": "Extension"})

    assert (d.match.module, d.match.name) == ("Deals", "Hotel renewal")
    assert zoho.requests("/crm/v8/coql"), "found by COQL, in the round trip of the searches"
    assert not any(r.path == f"/crm/v8/Accounts/{account['id']}/Deals" for r in zoho.api_requests())


def test_coql_is_asked_for_the_forms_people_type_and_its_answer_is_one_round_trip(zoho, team):
    add_contact_with_deal(zoho, team["contact"], team["deal"], "928 00 00 00")

    d = decision(zoho, zoho={"user_extension_field": "Extension"})

    assert d.match.module == "Deals"
    query = json.loads(zoho.requests("/crm/v8/coql")[0].body)["select_query"]
    assert "'928 00 00 00'" in query and "'+34 928 000 000'" in query and "'+34928000000'" in query
    assert query.startswith("select Deal_Name, Owner, Stage, Pipeline, Contact_Name, Account_Name, Modified_Time from Deals where ")
    assert not any(r.path.endswith("/Deals") for r in zoho.api_requests()), "no related-list request"
    lookups = [r.path for r in zoho.api_requests() if not r.path.startswith(("/crm/v8/settings/", "/crm/v8/users"))]
    assert len(lookups) == 4, lookups  # three searches and COQL; the rest is metadata, read once


def test_a_contact_without_deals_needs_no_second_request(zoho, team):
    zoho.add_record("Contacts", team["contact"], Full_Name="No deals", Last_Name="N", Phone="928000000")

    d = decision(zoho, zoho={"user_extension_field": "Extension"})

    assert d.match.module == "Contacts"
    assert not any(r.path.endswith("/Deals") for r in zoho.api_requests()), "COQL's answer covers it"


# -- number formats ---------------------------------------------------------

@pytest.mark.parametrize("stored", ["928 00 00 00", "+34-928-000-000", "0034928000000"])
@pytest.mark.parametrize("caller", ["+34928000000", "928000000"])
def test_a_number_stored_as_people_type_it_is_found(zoho, team, stored, caller):
    zoho.add_record("Contacts", team["contact"], Full_Name="Pedro Gil", Last_Name="Gil", Phone=stored)

    v = route(zoho, caller=caller, zoho={"user_extension_field": "Extension"})

    assert (v["CRM_ROUTE_STATUS"], v["CRM_MODULE"], v["CRM_TARGET"]) == ("OWNER", "Contacts", "PJSIP/103")


@pytest.mark.parametrize("stored", ["928 00 00 00", "+34-928-000-000", "0034928000000", "+34 928 000 000"])
@pytest.mark.parametrize("caller", ["+34928000000", "928000000"])
def test_typed_formats_find_numbers_when_the_search_compares_text_exactly(zoho, team, stored, caller):
    zoho.phone_match = "exact"
    zoho.add_record("Leads", team["lead"], Full_Name="Marta", Last_Name="Ruiz", Phone=stored, Lead_Status="New")

    without = decision(zoho, caller=caller)
    with_typed = decision(zoho, caller=caller, zoho={"search_typed_formats": True})

    if stored != "0034928000000":
        assert without.status.value == "NOMATCH", "the compact forms alone miss a formatted number on an exact search"
    assert (with_typed.match.module, with_typed.match.name) == ("Leads", "Marta")


def test_every_form_of_the_number_goes_in_one_search_per_module(zoho, team):
    zoho.add_record("Leads", team["lead"], Full_Name="Marta", Last_Name="Ruiz", Phone="+34928000000", Lead_Status="New")

    decision(zoho)

    searches = search_requests(zoho, "Leads")
    assert len(searches) == 1, [r.raw_query for r in searches]
    criteria = searches[0].query["criteria"][0]
    assert criteria == "((Phone:in:+34928000000,928000000,0034928000000,34928000000)or(Mobile:in:+34928000000,928000000,0034928000000,34928000000))"
    # "+" travels as %2B: a bare "+" in a query string reads as a space.
    assert "%2B34928000000" in searches[0].raw_query


def test_search_asks_only_the_fields_it_needs(zoho, team):
    zoho.add_record("Leads", team["lead"], Full_Name="Marta", Last_Name="Ruiz", Phone=CALLER, Lead_Status="New", Description="x" * 10_000)

    decision(zoho)

    fields = search_requests(zoho, "Leads")[0].query["fields"][0].split(",")
    # What deciding needs, and what the mirror keeps of a record found live.
    assert set(fields) == {"Full_Name", "Lead_Status", "Owner", "Converted__s", "Modified_Time", "Phone", "Mobile"}
    assert "Description" not in search_requests(zoho, "Leads")[0].raw_query


def test_an_unknown_caller_is_nomatch_after_one_request_per_module(zoho, team):
    d = decision(zoho)

    assert d.status.value == "NOMATCH"
    assert sorted(r.path for r in zoho.api_requests()) == [
        "/crm/v8/Accounts/search", "/crm/v8/Contacts/search", "/crm/v8/Leads/search", "/crm/v8/coql",
    ]
    assert all(form in search_requests(zoho, "Contacts")[0].query["criteria"][0] for form in normalise(CALLER, "ES").variants())


# -- owners and extensions ----------------------------------------------------

def test_config_map_beats_the_users_field_and_inactive_owners_have_no_extension(zoho, team):
    gone = zoho.add_user("Gone Rep", "gone@example.com", status="disabled", Extension="199")
    zoho.add_record("Contacts", gone, Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    zoho.add_record("Contacts", team["lead"], Full_Name="Ana", Last_Name="Gil", Phone="+34928000009")

    orphan = decision(zoho, zoho={"user_extension_field": "Extension"})
    mapped = decision(zoho, caller="+34928000009", zoho={"user_extension_field": "Extension"}, routing={"owner_extensions": {"LEAD@example.com": ["201"]}})

    assert orphan.status.value == "UNMAPPED"
    assert any("is not an active user" in step for step in orphan.steps)
    assert mapped.extensions == ["201"]


def test_without_a_users_field_the_users_api_is_not_called(zoho, team):
    zoho.add_record("Leads", team["lead"], Full_Name="Marta", Last_Name="Ruiz", Phone=CALLER, Lead_Status="New")

    d = decision(zoho, routing={"owner_extensions": {team["lead"]["id"]: ["101"]}})

    assert d.target == "PJSIP/101"
    assert not zoho.requests("/crm/v8/users")


@pytest.mark.parametrize("value", ["PJSIP/105", "Local/999@default", "101&Local/666@evil, 102", "105 (desk)"])
def test_a_users_field_that_is_not_a_clean_list_of_extensions_gives_that_user_none(zoho, team, value, caplog):
    """``PJSIP/105`` split on ``/`` would ring ``PJSIP/PJSIP&PJSIP/105``: the value is refused
    as a whole, for that user only, with one warning naming them."""
    odd = zoho.add_user("Odd Rep", "odd@example.com", Extension=value)
    zoho.add_record("Contacts", odd, Full_Name="Pedro", Last_Name="Gil", Phone=CALLER)
    zoho.add_record("Contacts", team["lead"], Full_Name="Ana", Last_Name="Gil", Phone="+34928000009")
    caplog.set_level("WARNING", logger="crmroute.zoho")

    async def scenario():
        app = App.from_config(zoho_config(zoho, zoho={"user_extension_field": "Extension", "users_ttl_s": 0}))
        try:
            return [await decide(app, caller) for caller in (CALLER, "+34928000009", CALLER)]
        finally:
            await app.aclose()

    refused, fine, again = run(scenario())
    assert (refused.status.value, refused.target) == ("UNMAPPED", "")
    assert any("Extension refused" in step for step in refused.steps)
    assert fine.target == "PJSIP/101"  # the other users keep theirs
    assert again.target == ""
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # once, however often the users are read again
    assert odd["id"] in warnings[0] and "Odd Rep" in warnings[0]


def test_parse_extensions_accepts_clean_lists_only():
    from crmlookup.zoho.metadata import NotAnExtensionList, parse_extensions

    assert parse_extensions("101") == ("101",)
    assert parse_extensions(" 101, 102;103\t104 101 ") == ("101", "102", "103", "104")
    assert parse_extensions("") == () and parse_extensions(" , ") == ()
    for value in ("PJSIP/105", "Local/999@default", "101&102", "101|102", "x" * 65):
        with pytest.raises(NotAnExtensionList):
            parse_extensions(value)


# -- hostile CRM data --------------------------------------------------------

def test_crm_text_cannot_escape_into_the_dialplan(zoho):
    rogue = zoho.add_user('Eve "Quote"\nSET VARIABLE X 1', "eve@example.com\r\nHANGUP", Extension="102,tT 103")
    zoho.add_record("Leads", rogue, Full_Name='Robert"); DROP\n"&PJSIP/999', Last_Name="R", Phone=CALLER, Lead_Status="New")

    async def scenario():
        config = zoho_config(zoho, zoho={"user_extension_field": "Extension"}, routing={"extension_pattern": "[0-9]{3}"})
        async with agi_server(config) as server:
            return await route_call(server.port, caller=CALLER)

    result = run(scenario())
    v = result.variables
    assert v["CRM_ROUTE_STATUS"] == "OWNER"
    assert v["CRM_TARGET"] == "PJSIP/102&PJSIP/103", "only the extensions matching the pattern are dialled"
    assert all("\n" not in value and "\r" not in value for value in v.values())
    # Only device-state questions about the validated phones, then the contract.
    states = [argv for argv in result.commands if argv[:3] == ["GET", "FULL", "VARIABLE"]]
    assert [argv[3] for argv in states] == ["${DEVICE_STATE(PJSIP/102)}", "${DEVICE_STATE(PJSIP/103)}"]
    assert [argv[:2] for argv in result.commands[len(states):]] == [["EXEC", "MSet"]]
    assert [name for name, _ in result.assignments] == list(CONTRACT_VARIABLES)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"data": {"id": "1"}}', "'data' is not a list"),
        (b'{"data": [{"id": "../../settings", "Owner": {"id": "1"}}]}', "is not an id"),
        (b'{"data": [{"id": "1", "Owner": "Ana"}]}', "Owner is a str"),
        (b'{"data": [{"id": "1", "Full_Name": {"x": 1}}]}', "expected text"),
    ],
)
def test_broken_answers_become_error_with_a_named_reason(zoho, body, reason):
    zoho.add_fault(r"/Leads/search$", 200, body=body)

    d = decision(zoho)

    assert d.status.value == "ERROR"
    assert reason in d.reason


def test_an_endless_body_is_refused_not_buffered(zoho):
    zoho.add_fault(r"/Leads/search$", 200, body=b'{"data": [' + b'{"id": "1"},' * 500_000 + b'{"id": "2"}]}')

    d = decision(zoho)

    assert d.status.value == "ERROR"
    assert "larger than" in d.reason


@pytest.mark.parametrize(
    "fault, expected",
    [
        (dict(status=500), "500 INTERNAL_ERROR"),
        (dict(status=503, body=b"<html>maintenance</html>"), "503"),
        (dict(status=400, body={"code": "INVALID_MODULE", "details": {}, "message": "the module name given seems to be invalid", "status": "error"}), "INVALID_MODULE"),
        (dict(status=403), "NO_PERMISSION"),
        (dict(status=200, close=True), "Leads/search"),
    ],
)
def test_server_errors_and_dropped_connections_become_error(zoho, fault, expected):
    zoho.add_fault(r"/Leads/search$", **fault)

    d = decision(zoho)

    assert d.status.value == "ERROR"
    assert expected in d.reason
    assert "\n" not in d.reason


def test_scope_mismatch_is_an_auth_error_without_a_useless_refresh(zoho, team):
    zoho.scope_mismatch = True

    async def scenario():
        app = App.from_config(zoho_config(zoho, zoho={"breaker_failures": 3}))
        try:
            return [await decide(app, f"+3492800000{i}") for i in range(6)]
        finally:
            await app.aclose()

    decisions = run(scenario())

    assert [d.status.value for d in decisions] == ["ERROR"] * 6
    assert "OAUTH_SCOPE_MISMATCH" in decisions[0].reason
    assert len(zoho.token_requests()) == 1
    assert len(zoho.api_requests()) <= 2 * 4, "the refusals it takes to open the breaker: at most two lookups' searches"


def test_paging_info_is_read_and_only_one_page_is_fetched(zoho, team):
    for index in range(205):
        zoho.add_record("Contacts", team["contact"], Full_Name=f"Shared {index}", Last_Name="S", Phone=CALLER)

    d = decision(zoho)

    assert d.match.module == "Contacts"
    assert any("more than 200 records share" in step for step in d.steps)
