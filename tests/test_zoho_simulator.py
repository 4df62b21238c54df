"""The Zoho simulator itself: what other tests rely on it to do, as Zoho does it.

Driven with a plain HTTP client, the way the call-outcome sync will use it.
"""

import concurrent.futures
import json
import ssl
import subprocess
import sys
from datetime import datetime, timedelta, UTC
from pathlib import Path

import httpx
import pytest

from zoho_simulator import MAX_INSERT, ZohoSimulator, generate_org

# One TLS context for every client: httpx builds one per client otherwise (~80 ms
# each, twice a test), though every request here is plain HTTP on loopback.
TLS = ssl.create_default_context()


def http_client(**kwargs):
    return httpx.Client(verify=TLS, **kwargs)


def post(url, **kwargs):
    with http_client() as client:
        return client.post(url, **kwargs)


def get(url, **kwargs):
    with http_client() as client:
        return client.get(url, **kwargs)


@pytest.fixture
def api(zoho):
    """An HTTP client holding a valid token for the simulator."""
    token = post(f"{zoho.url}/oauth/v2/token", data={
        "grant_type": "refresh_token", "client_id": zoho.client_id, "client_secret": zoho.client_secret, "refresh_token": zoho.refresh_token,
    }).json()
    assert token["api_domain"] == zoho.url and token["token_type"] == "Bearer" and token["expires_in"] == 3600
    with http_client(base_url=f"{zoho.url}/crm/v8", headers={"Authorization": f"Zoho-oauthtoken {token['access_token']}"}) as client:
        yield client


@pytest.fixture
def people(zoho):
    owner = zoho.add_user("Ana García", "ana@example.com")
    contact = zoho.add_record("Contacts", owner, Full_Name="Pedro Gil", Last_Name="Gil", Phone="928000001")
    deal = zoho.add_record("Deals", owner, Deal_Name="Deal", Stage="Qualification", Contact_Name={"id": contact["id"]})
    return {"owner": owner, "contact": contact, "deal": deal}


def call(people, **fields):
    return {
        "Subject": "Inbound call", "Call_Type": "Inbound", "Call_Start_Time": "2024-05-06T10:15:00+02:00", "Call_Duration": "02:05",
        "Who_Id": {"id": people["contact"]["id"]}, "What_Id": {"id": people["deal"]["id"]}, "$se_module": "Deals", **fields,
    }


def test_inserted_calls_are_stored_with_ids_and_countable(zoho, api, people):
    answer = api.post("/Calls", json={"data": [call(people), call(people, Call_Type="Missed", Call_Duration="00:00")], "trigger": []})

    assert answer.status_code == 201
    results = answer.json()["data"]
    assert [(r["code"], r["message"], r["status"]) for r in results] == [("SUCCESS", "record added", "success")] * 2
    ids = [r["details"]["id"] for r in results]
    assert all(set(r["details"]) >= {"id", "Created_Time", "Created_By", "Modified_Time", "Modified_By"} for r in results)
    listed = api.get("/Calls", params={"fields": "Subject,Call_Type", "per_page": "200"}).json()
    assert [r["id"] for r in listed["data"]] == ids[::-1], "Get Records sorts by id, newest first, by default"
    assert listed["info"] == {
        "per_page": 200, "count": 2, "page": 1, "more_records": False, "sort_by": "id", "sort_order": "desc",
        "next_page_token": None, "previous_page_token": None, "page_token_expiry": None,
    }
    missed = api.get("/Calls/search", params={"criteria": "(Call_Type:equals:Missed)"}).json()["data"]
    assert [r["id"] for r in missed] == [ids[1]]
    related = api.get(f"/Contacts/{people['contact']['id']}/Calls", params={"fields": "Subject"})
    assert len(related.json()["data"]) == 2
    assert zoho.records("Calls")[0]["Owner"]["id"] == people["owner"]["id"]


def test_a_batch_holds_at_most_100_records(api, people):
    full = api.post("/Tasks", json={"data": [{"Subject": f"Call back {i}"} for i in range(MAX_INSERT)]})
    over = api.post("/Tasks", json={"data": [{"Subject": f"Call back {i}"} for i in range(MAX_INSERT + 1)]})

    assert full.status_code == 201 and len(full.json()["data"]) == MAX_INSERT
    assert over.status_code == 400
    assert over.json()["code"] == "LIMIT_EXCEEDED"
    pages = [api.get("/Tasks", params={"fields": "Subject", "page": str(page), "per_page": "60"}) for page in (1, 2, 3)]
    assert [p.status_code for p in pages] == [200, 200, 204]
    assert [p.json()["info"]["more_records"] for p in pages[:2]] == [True, False]


def test_invalid_records_get_zohos_per_record_errors(api, people):
    answer = api.post("/Calls", json={"data": [
        call(people),
        call(people, Call_Type="Sideways"),
        call(people, Call_Start_Time="yesterday"),
        {k: v for k, v in call(people).items() if k != "Subject"},
        call(people, What_Id={"id": "999"}),
        "not a record",
    ]})

    assert answer.status_code == 207
    results = answer.json()["data"]
    assert results[0]["status"] == "success"
    details = {"api_name": "Call_Type", "json_path": "$.data[1].Call_Type", "expected_data_type": "picklist"}
    assert results[1] == {"code": "INVALID_DATA", "details": details, "message": "invalid data", "status": "error"}
    assert (results[2]["code"], results[2]["details"]["api_name"]) == ("INVALID_DATA", "Call_Start_Time")
    assert results[3] == {"code": "MANDATORY_NOT_FOUND", "details": {"api_name": "Subject", "json_path": "$.data[3].Subject"}, "message": "required field not found", "status": "error"}
    assert (results[4]["code"], results[4]["details"]["api_name"]) == ("INVALID_DATA", "What_Id")
    assert results[5]["code"] == "INVALID_DATA"


def test_all_records_invalid_is_400_and_nothing_stored(zoho, api):
    answer = api.post("/Leads", json={"data": [{"First_Name": "No last name"}]})

    assert answer.status_code == 400
    assert answer.json()["data"][0]["code"] == "MANDATORY_NOT_FOUND"
    assert zoho.records("Leads") == []


@pytest.mark.parametrize("body, code", [(b"{oops", "INVALID_DATA"), (b'{"rows": []}', "MANDATORY_NOT_FOUND")])
def test_unreadable_insert_bodies(api, body, code):
    answer = api.post("/Leads", content=body, headers={"Content-Type": "application/json"})

    assert answer.status_code == 400
    assert set(answer.json()) == {"code", "details", "message", "status"}
    assert answer.json()["code"] == code


def test_error_envelopes_for_tokens_modules_and_parameters(zoho, api, people):
    no_header = get(f"{zoho.url}/crm/v8/Leads/search", params={"phone": "1"})
    bad_token = get(f"{zoho.url}/crm/v8/Leads/search", params={"phone": "1"}, headers={"Authorization": "Zoho-oauthtoken nope"})
    bad_module = api.get("/Spaceships/search", params={"phone": "1"})
    no_param = api.get("/Leads/search")
    no_fields = api.get(f"/Contacts/{people['contact']['id']}/Deals")
    no_layout = api.get("/settings/pipeline")
    zoho.expire_tokens()
    expired = api.get("/Leads/search", params={"phone": "1"})

    assert (no_header.status_code, no_header.json()["code"]) == (401, "AUTHENTICATION_FAILURE")
    assert (bad_token.status_code, bad_token.json()) == (401, {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"})
    assert (bad_module.status_code, bad_module.json()["code"]) == (400, "INVALID_MODULE")
    assert (no_param.status_code, no_param.json()["code"]) == (400, "REQUIRED_PARAM_MISSING")
    assert no_fields.json()["details"] == {"param": "fields"}
    assert no_layout.json()["details"] == {"param": "layout_id"}
    assert (expired.status_code, expired.json()["code"]) == (401, "INVALID_TOKEN")


def test_search_answers_204_with_no_body_and_respects_converted(zoho, api, people):
    zoho.add_record("Leads", people["owner"], Last_Name="Old", Phone="+34 600 000 000", **{"$converted": True})

    nothing = api.get("/Leads/search", params={"phone": "+34600000001"})
    default = api.get("/Leads/search", params={"phone": "+34600000000"})
    converted = api.get("/Leads/search", params={"phone": "+34600000000", "converted": "true"})

    assert (nothing.status_code, nothing.content) == (204, b"")
    assert default.status_code == 204, "converted leads are left out unless asked for"
    assert converted.json()["data"][0]["Last_Name"] == "Old"


def test_a_raw_plus_in_the_query_is_a_space(zoho, api, people):
    zoho.add_record("Contacts", people["owner"], Last_Name="Plus", Phone="+34600000002")

    raw = api.get("/Contacts/search?phone=+34600000002")
    encoded = api.get("/Contacts/search?phone=%2B34600000002")

    assert raw.status_code == 204
    assert encoded.json()["data"][0]["Last_Name"] == "Plus"


def test_concurrency_limit_answers_429(zoho, api):
    zoho.max_concurrency = 1
    zoho.latency_s = 0.3

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(lambda _: api.get("/Leads/search", params={"phone": "1"}).status_code, range(4)))

    assert statuses[0] == 204 and 429 in statuses
    assert zoho.max_in_flight_seen >= 2


def test_users_and_layouts(zoho, api):
    zoho.add_user("Active", "a@example.com")
    zoho.add_user("Gone", "g@example.com", status="disabled")

    active = api.get("/users", params={"type": "ActiveUsers"}).json()
    everyone = api.get("/users", params={"type": "AllUsers"}).json()
    layouts = api.get("/settings/layouts", params={"module": "Deals"}).json()["layouts"]
    pipeline = api.get("/settings/pipeline", params={"layout_id": layouts[0]["id"]}).json()["pipeline"][0]

    assert [u["full_name"] for u in active["users"]] == ["Active"]
    assert len(everyone["users"]) == 2
    assert {m["display_value"]: m["forecast_type"] for m in pipeline["maps"]}["Closed Won"] == "Closed Won"
    assert json.dumps(pipeline)  # plain JSON all the way down


# -- helpers for the behaviours below --------------------------------------


class Clock:
    """A clock the simulator reads instead of the real one (``sim.now``)."""

    def __init__(self, start="2024-05-06T10:15:00+02:00"):
        self.moment = datetime.fromisoformat(start)

    def __call__(self):
        return self.moment

    def advance(self, **delta):
        self.moment += timedelta(**delta)


@pytest.fixture
def clock(zoho):
    zoho.now = Clock()
    return zoho.now


def token_for(zoho):
    answer = post(f"{zoho.url}/oauth/v2/token", data={
        "grant_type": "refresh_token", "client_id": zoho.client_id, "client_secret": zoho.client_secret, "refresh_token": zoho.refresh_token,
    })
    return answer.json()["access_token"]


def client_for(zoho):
    return http_client(base_url=f"{zoho.url}/crm/v8", headers={"Authorization": f"Zoho-oauthtoken {token_for(zoho)}"})


def coql(api, text):
    return api.post("/coql", json={"select_query": text})


def error_code(answer):
    assert set(answer.json()) == {"code", "details", "message", "status"}, answer.text
    return answer.status_code, answer.json()["code"]


def list_all(api, module, **params):
    """Every page of Get Records through page tokens: (ids, infos)."""
    params = {"fields": "Last_Name", "per_page": "200", **params}
    answer = api.get(f"/{module}", params=params)
    ids, infos = [], []
    while answer.status_code == 200:
        body = answer.json()
        ids += [record["id"] for record in body["data"]]
        infos.append(body["info"])
        if not body["info"]["more_records"]:
            break
        answer = api.get(f"/{module}", params={**params, "page_token": body["info"]["next_page_token"]})
    return ids, infos


# -- record times and control calls -----------------------------------------


def test_records_carry_zoho_times_and_updates_bump_modified_time(zoho, api, clock):
    lead = zoho.add_record("Leads", Last_Name="Ruiz", Phone="928000000")
    clock.advance(minutes=5)
    updated = zoho.update_record("Leads", lead["id"], Lead_Status="Contacted")

    assert (lead["Created_Time"], lead["Modified_Time"]) == ("2024-05-06T10:15:00+02:00", "2024-05-06T10:15:00+02:00")
    assert (updated["Created_Time"], updated["Modified_Time"]) == ("2024-05-06T10:15:00+02:00", "2024-05-06T10:20:00+02:00")
    assert lead["Converted__s"] is False
    found = api.get("/Leads/search", params={"phone": "928000000"}).json()["data"][0]
    assert (found["Lead_Status"], found["Modified_Time"]) == ("Contacted", "2024-05-06T10:20:00+02:00")
    given = zoho.add_record("Contacts", Last_Name="Old", Created_Time="2020-01-01T00:00:00+00:00", Modified_Time="2021-01-01T00:00:00+00:00")
    assert given["Modified_Time"] == "2021-01-01T00:00:00+00:00"
    with pytest.raises(KeyError):
        zoho.update_record("Leads", "404", Lead_Status="Contacted")


def test_the_default_clock_is_the_real_one_with_an_offset(zoho):
    record = zoho.add_record("Accounts", Account_Name="Now")

    stamp = datetime.fromisoformat(record["Created_Time"])
    assert stamp.tzinfo is not None and stamp.microsecond == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 3600


def test_deleted_records_leave_the_lists_and_appear_in_the_deleted_list(zoho, api, clock):
    owner = zoho.add_user("Ana García", "ana@example.com")
    kept = zoho.add_record("Leads", owner, Full_Name="Kept", Last_Name="Kept", Phone="928000001")
    recycled = zoho.add_record("Leads", owner, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone="928000002", Created_By={"name": "Ana García", "id": owner["id"]})
    purged = zoho.add_record("Leads", owner, Full_Name="Gone", Last_Name="Gone", Phone="928000003")
    clock.advance(hours=1)
    zoho.delete_record("Leads", recycled["id"])
    clock.advance(hours=1)
    zoho.delete_record("Leads", purged["id"], permanent=True)

    assert [r["id"] for r in zoho.records("Leads")] == [kept["id"]]
    assert api.get("/Leads/search", params={"phone": "928000002"}).status_code == 204
    assert list_all(api, "Leads")[0] == [kept["id"]]
    answer = api.get("/Leads/deleted")
    assert answer.status_code == 200
    assert answer.json() == {"data": [
        {"deleted_by": None, "id": purged["id"], "display_name": None, "type": "permanent", "created_by": None, "deleted_time": "2024-05-06T12:15:00+02:00"},
        {"deleted_by": {"name": "Ana García", "id": owner["id"]}, "id": recycled["id"], "display_name": "Marta Ruiz", "type": "recycle",
         "created_by": {"name": "Ana García", "id": owner["id"]}, "deleted_time": "2024-05-06T11:15:00+02:00"},
    ], "info": {"per_page": 200, "count": 2, "page": 1, "more_records": False}}
    assert [e["id"] for e in api.get("/Leads/deleted", params={"type": "recycle"}).json()["data"]] == [recycled["id"]]
    assert [e["id"] for e in api.get("/Leads/deleted", params={"type": "permanent"}).json()["data"]] == [purged["id"]]
    since = api.get("/Leads/deleted", headers={"If-Modified-Since": "2024-05-06T11:15:00+02:00"}).json()["data"]
    assert [e["id"] for e in since] == [purged["id"]], "only deletions strictly after the header's time"
    clock.advance(hours=1)
    emptied = zoho.delete_record("Leads", recycled["id"], permanent=True)
    assert (emptied["type"], emptied["display_name"]) == ("permanent", None), "emptying the recycle bin makes it permanent"
    with pytest.raises(KeyError):
        zoho.delete_record("Leads", kept["id"] + "0")


def test_deleted_list_parameters_and_errors(zoho, api):
    for n in range(5):
        zoho.delete_record("Contacts", zoho.add_record("Contacts", Last_Name=f"C{n}")["id"])

    nothing = api.get("/Accounts/deleted")
    paged = [api.get("/Contacts/deleted", params={"per_page": "2", "page": str(page)}) for page in (1, 2, 3, 4)]
    wrong_type = api.get("/Contacts/deleted", params={"type": "trash"})
    too_many = api.get("/Contacts/deleted", params={"per_page": "201"})
    bad_header = api.get("/Contacts/deleted", headers={"If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT"})
    later = api.get("/Contacts/deleted", headers={"If-Modified-Since": "2999-01-01T00:00:00+00:00"})

    assert (nothing.status_code, nothing.content) == (204, b"")
    assert [p.status_code for p in paged] == [200, 200, 200, 204]
    assert [(p.json()["info"]["count"], p.json()["info"]["more_records"]) for p in paged[:3]] == [(2, True), (2, True), (1, False)]
    assert error_code(wrong_type) == (400, "PATTERN_NOT_MATCHED")
    assert wrong_type.json()["details"] == {"param": "type"}
    assert error_code(too_many) == (400, "INVALID_DATA")
    assert error_code(bad_header) == (400, "INVALID_DATA")
    assert later.status_code == 204


def test_convert_lead_marks_it_converted_and_may_create_the_contact(zoho, api, clock):
    owner = zoho.add_user("Ana García", "ana@example.com")
    lead = zoho.add_record("Leads", owner, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone="+34 928 000 000")
    plain = zoho.add_record("Leads", owner, Last_Name="Plain", Phone="+34 928 000 009")
    clock.advance(days=1)
    contact = zoho.convert_lead(lead["id"], contact_fields={"Last_Name": "Ruiz", "Full_Name": "Marta Ruiz", "Phone": "+34 928 000 000"})
    nothing = zoho.convert_lead(plain["id"])

    [stored] = [r for r in zoho.records("Leads") if r["id"] == lead["id"]]
    assert (stored["Converted__s"], stored["$converted"]) == (True, True)
    assert stored["Converted_Date_Time"] == stored["Modified_Time"] == "2024-05-07T10:15:00+02:00"
    assert stored["Converted_Contact"] == {"name": "Marta Ruiz", "id": contact["id"]}
    assert contact["Owner"]["id"] == owner["id"] and nothing is None
    assert api.get("/Leads/search", params={"phone": "+34928000000"}).status_code == 204
    assert api.get("/Leads/search", params={"phone": "+34928000000", "converted": "true"}).status_code == 200
    assert api.get("/Contacts/search", params={"phone": "+34928000000"}).json()["data"][0]["id"] == contact["id"]
    listed = api.get("/Leads", params={"fields": "Converted__s", "converted": "true"}).json()["data"]
    assert {r["id"]: r["Converted__s"] for r in listed} == {lead["id"]: True, plain["id"]: True}


def test_users_carry_status_and_modified_time_and_the_list_honours_if_modified_since(zoho, api, clock):
    ana = zoho.add_user("Ana García", "ana@example.com")
    zoho.add_user("Gone Rep", "gone@example.com", status="disabled")
    zoho.add_user("Deleted Rep", "deleted@example.com", status="deleted")
    clock.advance(minutes=10)
    changed = zoho.update_user(ana["id"], Extension="101")

    users = api.get("/users").json()["users"]
    assert {u["full_name"]: (u["status"], u["Modified_Time"]) for u in users} == {
        "Ana García": ("active", "2024-05-06T10:25:00+02:00"),
        "Gone Rep": ("disabled", "2024-05-06T10:15:00+02:00"),
        "Deleted Rep": ("deleted", "2024-05-06T10:15:00+02:00"),
    }
    assert changed["Extension"] == "101"
    since = api.get("/users", params={"type": "AllUsers"}, headers={"If-Modified-Since": "2024-05-06T10:15:00+02:00"})
    assert [u["full_name"] for u in since.json()["users"]] == ["Ana García"]
    unchanged = api.get("/users", headers={"If-Modified-Since": "2024-05-06T10:25:00+02:00"})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert [u["full_name"] for u in api.get("/users", params={"type": "DeactiveUsers"}).json()["users"]] == ["Gone Rep"]
    assert [u["full_name"] for u in api.get("/users", params={"type": "DeletedUsers"}).json()["users"]] == ["Deleted Rep"]
    assert error_code(api.get("/users", params={"type": "Robots"})) == (400, "INVALID_DATA")


# -- Get Records --------------------------------------------------------------


def test_get_records_parameters_are_checked(zoho, api):
    zoho.add_record("Contacts", Last_Name="Gil")

    cases = {
        "no fields": api.get("/Contacts"),
        "51 fields": api.get("/Contacts", params={"fields": ",".join(f"F{n}" for n in range(51))}),
        "per_page 201": api.get("/Contacts", params={"fields": "Last_Name", "per_page": "201"}),
        "page 11": api.get("/Contacts", params={"fields": "Last_Name", "page": "11"}),
        "page 0": api.get("/Contacts", params={"fields": "Last_Name", "page": "0"}),
        "sort_by": api.get("/Contacts", params={"fields": "Last_Name", "sort_by": "Last_Name"}),
        "sort_order": api.get("/Contacts", params={"fields": "Last_Name", "sort_order": "up"}),
        "converted": api.get("/Leads", params={"fields": "Last_Name", "converted": "maybe"}),
        "header": api.get("/Contacts", params={"fields": "Last_Name"}, headers={"If-Modified-Since": "yesterday"}),
        "page and token": api.get("/Contacts", params={"fields": "Last_Name", "page": "2", "page_token": "abc"}),
        "unknown token": api.get("/Contacts", params={"fields": "Last_Name", "page_token": "abc"}),
    }

    assert {name: error_code(answer) for name, answer in cases.items()} == {
        "no fields": (400, "REQUIRED_PARAM_MISSING"),
        "51 fields": (400, "LIMIT_EXCEEDED"),
        "per_page 201": (400, "INVALID_DATA"),
        "page 11": (400, "DISCRETE_PAGINATION_LIMIT_EXCEEDED"),
        "page 0": (400, "INVALID_DATA"),
        "sort_by": (400, "INVALID_DATA"),
        "sort_order": (400, "INVALID_DATA"),
        "converted": (400, "INVALID_DATA"),
        "header": (400, "INVALID_DATA"),
        "page and token": (400, "AMBIGUITY_DURING_PROCESSING"),
        "unknown token": (400, "INVALID_DATA"),
    }
    assert api.get("/Contacts", params={"fields": ",".join(["Last_Name"] * 50)}).status_code == 200


def test_get_records_empty_module_is_204_and_missing_fields_are_null(zoho, api):
    empty = api.get("/Accounts", params={"fields": "Account_Name"})
    zoho.add_record("Accounts", Account_Name="Hotel")
    listed = api.get("/Accounts", params={"fields": "Account_Name,Phone"}).json()["data"]

    assert (empty.status_code, empty.content) == (204, b"")
    assert [{k: v for k, v in r.items() if k != "id"} for r in listed] == [{"Account_Name": "Hotel", "Phone": None}]


def test_page_tokens_walk_past_2000_records_without_repeats(zoho, api):
    for n in range(2100):
        zoho.add_record("Contacts", Last_Name=f"C{n:04d}")

    tenth = api.get("/Contacts", params={"fields": "Last_Name", "page": "10", "per_page": "200"}).json()
    after = api.get("/Contacts", params={"fields": "Last_Name", "per_page": "200", "page_token": tenth["info"]["next_page_token"]}).json()
    ids, infos = list_all(api, "Contacts")

    assert tenth["info"]["more_records"] is True and tenth["info"]["next_page_token"]
    assert [r["Last_Name"] for r in after["data"]] == [f"C{n:04d}" for n in range(99, -1, -1)], "records 2001-2100, newest first"
    assert after["info"]["page"] == 11 and after["info"]["previous_page_token"] and after["info"]["more_records"] is False
    assert after["info"]["page_token_expiry"]
    assert len(ids) == len(set(ids)) == 2100
    assert ids == sorted(ids, key=int, reverse=True)
    assert [info["page"] for info in infos] == list(range(1, 12))


def test_a_previous_page_token_goes_back_one_page(zoho, api):
    for n in range(12):
        zoho.add_record("Contacts", Last_Name=f"C{n}")
    params = {"fields": "Last_Name", "per_page": "5"}

    first = api.get("/Contacts", params=params).json()
    second = api.get("/Contacts", params={**params, "page_token": first["info"]["next_page_token"]}).json()
    back = api.get("/Contacts", params={**params, "page_token": second["info"]["previous_page_token"]}).json()

    assert first["info"]["previous_page_token"] is None
    assert [r["id"] for r in back["data"]] == [r["id"] for r in first["data"]]
    assert back["info"]["page"] == 1


@pytest.mark.parametrize("change", [
    {"fields": "Last_Name,Phone"}, {"sort_by": "Modified_Time"}, {"sort_order": "asc"}, {"converted": "both"},
    {"per_page": "4"}, {"header": "2020-01-01T00:00:00+00:00"}, {"module": "Contacts"},
])
def test_a_page_token_is_bound_to_the_parameters_that_made_it(zoho, api, change):
    for n in range(6):
        zoho.add_record("Leads", Last_Name=f"L{n}")
        zoho.add_record("Contacts", Last_Name=f"C{n}")
    params = {"fields": "Last_Name", "per_page": "5", "sort_by": "id", "sort_order": "desc", "converted": "false"}
    token = api.get("/Leads", params=params).json()["info"]["next_page_token"]
    change = dict(change)
    module = change.pop("module", "Leads")
    headers = {"If-Modified-Since": change.pop("header")} if "header" in change else {}

    same = api.get("/Leads", params={**params, "page_token": token})
    changed = api.get(f"/{module}", params={**params, **change, "page_token": token}, headers=headers)
    dropped = api.get("/Leads", params={k: v for k, v in {**params, "page_token": token}.items() if k != "sort_order"})

    assert same.status_code == 200 and len(same.json()["data"]) == 1
    assert error_code(changed) == (400, "TOKEN_BOUND_DATA_MISMATCH")
    assert error_code(dropped) == (400, "TOKEN_BOUND_DATA_MISMATCH"), "a parameter left out also changes the binding"


def test_page_tokens_expire_after_24_hours_or_on_demand(zoho, api, clock):
    for n in range(6):
        zoho.add_record("Contacts", Last_Name=f"C{n}")
    params = {"fields": "Last_Name", "per_page": "2"}
    first = api.get("/Contacts", params=params).json()["info"]
    second = api.get("/Contacts", params={**params, "page_token": first["next_page_token"]}).json()["info"]

    assert first["page_token_expiry"] == "2024-05-07T10:15:00+02:00"
    clock.advance(hours=23, minutes=59, seconds=59)
    assert api.get("/Contacts", params={**params, "page_token": first["next_page_token"]}).status_code == 200
    clock.advance(seconds=1)
    assert error_code(api.get("/Contacts", params={**params, "page_token": first["next_page_token"]})) == (400, "EXPIRED_VALUE")
    clock.moment -= timedelta(hours=1)
    zoho.expire_page_tokens()
    assert error_code(api.get("/Contacts", params={**params, "page_token": second["next_page_token"]})) == (400, "EXPIRED_VALUE")


def test_tokens_of_a_listing_no_longer_kept_answer_expired(zoho, api):
    for n in range(3):
        zoho.add_record("Contacts", Last_Name=f"C{n}", Modified_Time=f"2024-05-06T10:15:0{n}+00:00")
    params = {"fields": "Last_Name", "per_page": "1"}
    oldest = api.get("/Contacts", params=params, headers={"If-Modified-Since": "2000-01-01T00:00:00+00:00"}).json()["info"]["next_page_token"]
    for hour in range(64):  # each header makes its own listing; 64 are kept
        api.get("/Contacts", params=params, headers={"If-Modified-Since": f"2001-01-{1 + hour // 24:02d}T{hour % 24:02d}:00:00+00:00"})

    answer = api.get("/Contacts", params={**params, "page_token": oldest}, headers={"If-Modified-Since": "2000-01-01T00:00:00+00:00"})

    assert error_code(answer) == (400, "EXPIRED_VALUE")


def test_page_tokens_stop_at_the_listing_limit(zoho, api):
    zoho.max_listed_records = 10  # Zoho's is 100,000; the rule is the same
    for n in range(14):
        zoho.add_record("Contacts", Last_Name=f"C{n}")
    params = {"fields": "Last_Name", "per_page": "5"}

    first = api.get("/Contacts", params=params).json()["info"]
    second = api.get("/Contacts", params={**params, "page_token": first["next_page_token"]}).json()["info"]
    third = api.get("/Contacts", params={**params, "page_token": second["next_page_token"]})

    assert second["more_records"] is True
    assert error_code(third) == (400, "PAGINATION_LIMIT_EXCEEDED")


def test_a_token_listing_is_a_snapshot_read_in_pages_without_resorting(zoho, api, monkeypatch):
    records = [zoho.add_record("Contacts", Last_Name=f"C{n}") for n in range(10)]
    sorts = []
    original = zoho._ordered_ids
    monkeypatch.setattr(zoho, "_ordered_ids", lambda spec: sorts.append(spec) or original(spec))
    params = {"fields": "Last_Name", "per_page": "4"}

    first = api.get("/Contacts", params=params).json()
    zoho.add_record("Contacts", Last_Name="Late")
    zoho.update_record("Contacts", records[5]["id"], Last_Name="Renamed")
    zoho.delete_record("Contacts", records[4]["id"])
    second = api.get("/Contacts", params={**params, "page_token": first["info"]["next_page_token"]}).json()
    third = api.get("/Contacts", params={**params, "page_token": second["info"]["next_page_token"]}).json()
    fresh = api.get("/Contacts", params=params).json()

    assert [r["Last_Name"] for r in second["data"]] == ["Renamed", "C3", "C2"], "current fields; the deleted one drops out"
    assert [r["Last_Name"] for r in third["data"]] == ["C1", "C0"] and third["info"]["more_records"] is False
    assert fresh["data"][0]["Last_Name"] == "Late", "a new listing sees the new record"
    assert len(sorts) == 2, "one sort per listing, not one per page"


def test_sorting_and_converted_and_if_modified_since(zoho, api, clock):
    old = zoho.add_record("Leads", Last_Name="Old")
    clock.advance(minutes=1)
    converted = zoho.add_record("Leads", Last_Name="Converted", **{"$converted": True})
    clock.advance(minutes=1)
    new = zoho.add_record("Leads", Last_Name="New")
    clock.advance(minutes=1)
    zoho.update_record("Leads", old["id"], Lead_Status="Contacted")

    by_modified = list_all(api, "Leads", sort_by="Modified_Time", sort_order="asc")[0]
    by_created = list_all(api, "Leads", sort_by="Created_Time")[0]
    both = list_all(api, "Leads", converted="both")[0]
    only = list_all(api, "Leads", converted="true")[0]
    since = api.get("/Leads", params={"fields": "Last_Name"}, headers={"If-Modified-Since": "2024-05-06T10:17:00+02:00"})
    none = api.get("/Leads", params={"fields": "Last_Name"}, headers={"If-Modified-Since": "2024-05-06T10:18:00+02:00"})

    assert by_modified == [new["id"], old["id"]]
    assert by_created == [new["id"], old["id"]]
    assert both == [new["id"], converted["id"], old["id"]]
    assert only == [converted["id"]]
    assert [r["id"] for r in since.json()["data"]] == [old["id"]], "strictly later than the header"
    assert (none.status_code, none.content) == (304, b"")


# -- field metadata -----------------------------------------------------------


def test_field_metadata_lists_standard_and_custom_phone_fields(zoho, api):
    zoho.add_phone_field("Contacts", "Work_Phone_2")

    leads = {f["api_name"]: f for f in api.get("/settings/fields", params={"module": "Leads"}).json()["fields"]}
    contacts = {f["api_name"]: f for f in api.get("/settings/fields", params={"module": "Contacts"}).json()["fields"]}
    accounts = api.get("/settings/fields", params={"module": "Accounts"}).json()["fields"]
    deals = {f["api_name"]: f for f in api.get("/settings/fields", params={"module": "Deals"}).json()["fields"]}

    required = {"api_name", "data_type", "field_label", "display_label", "custom_field", "id", "json_type", "visible", "read_only"}
    assert all(required <= set(f) for f in [*leads.values(), *contacts.values(), *accounts, *deals.values()])
    assert [n for n, f in leads.items() if f["data_type"] == "phone"] == ["Phone", "Mobile"]
    assert [n for n, f in contacts.items() if f["data_type"] == "phone"] == ["Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone", "Work_Phone_2"]
    assert [f["api_name"] for f in accounts if f["data_type"] == "phone"] == ["Phone"]
    assert contacts["Work_Phone_2"]["custom_field"] is True and contacts["Phone"]["custom_field"] is False
    assert (leads["Phone"]["json_type"], leads["Owner"]["data_type"], leads["Owner"]["json_type"]) == ("string", "ownerlookup", "jsonobject")
    assert {"Full_Name", "Last_Name", "Lead_Status", "Modified_Time", "Email"} <= set(leads)
    assert deals["Contact_Name"]["lookup"]["module"]["api_name"] == "Contacts"
    assert {"Deal_Name", "Stage", "Pipeline", "Account_Name", "Owner"} <= set(deals)
    assert len({f["id"] for f in [*leads.values(), *contacts.values()]}) == len(leads) + len(contacts)
    assert error_code(api.get("/settings/fields")) == (400, "REQUIRED_PARAM_MISSING")
    assert error_code(api.get("/settings/fields", params={"module": "Spaceships"})) == (400, "INVALID_MODULE")
    with pytest.raises(ValueError):
        zoho.add_phone_field("Contacts", "Phone")


def test_a_custom_phone_field_is_searched_by_phone_and_criteria(zoho, api):
    before = zoho.add_record("Contacts", Last_Name="Before", Work_Phone="+34 928-000-100")
    zoho.add_phone_field("Contacts", "Work_Phone")
    after = zoho.add_record("Contacts", Last_Name="After", Work_Phone="(928) 000 101")

    by_phone = api.get("/Contacts/search", params={"phone": "+34928000100"}).json()["data"]
    by_criteria = api.get("/Contacts/search", params={"criteria": "(Work_Phone:equals:928000101)"}).json()["data"]

    assert [r["id"] for r in by_phone] == [before["id"]]
    assert [r["id"] for r in by_criteria] == [after["id"]]


# -- search -------------------------------------------------------------------


def test_criteria_in_operator_and_phone_equality_without_formatting(zoho, api):
    a = zoho.add_record("Leads", Last_Name="A", Phone="+34 928 00 00 00")
    b = zoho.add_record("Leads", Last_Name="B", Mobile="928-000-001")
    c = zoho.add_record("Leads", Last_Name="Burns,B", Phone="1")

    phone_in = api.get("/Leads/search", params={"criteria": "(Phone:in:+34928000000,928000009)"}).json()["data"]
    mobile_eq = api.get("/Leads/search", params={"criteria": "(Mobile:equals:928 000 001)"}).json()["data"]
    escaped = api.get("/Leads/search", params={"criteria": r"(Last_Name:in:Burns\,B,Nobody)"}).json()["data"]
    names_in = api.get("/Leads/search", params={"criteria": "((Last_Name:in:a,b)and(Phone:equals:+34928000000))"}).json()["data"]
    text_eq = api.get("/Leads/search", params={"criteria": "(Last_Name:equals:burns,b)"}).json()["data"]
    partial = api.get("/Leads/search", params={"criteria": "(Last_Name:equals:Burn)"})

    assert [r["id"] for r in phone_in] == [a["id"]]
    assert [r["id"] for r in mobile_eq] == [b["id"]]
    assert [r["id"] for r in escaped] == [c["id"]], "an escaped comma belongs to the value"
    assert [r["id"] for r in names_in] == [a["id"]]
    assert [r["id"] for r in text_eq] == [c["id"]], "equals on text: exact, case-insensitive"
    assert partial.status_code == 204


def test_criteria_limits_and_errors(zoho, api):
    zoho.add_record("Leads", Last_Name="A", Phone="1")
    eleven = "(" + "or".join(f"(Phone:equals:{n})" for n in range(11)) + ")"
    ten = "(" + "or".join(f"(Phone:equals:{n})" for n in range(10)) + ")"
    nested_eleven = "(" + "or".join(["(" + "or".join(f"(Phone:equals:{n})" for n in range(6)) + ")"] * 2) + ")"

    assert api.get("/Leads/search", params={"criteria": ten}).status_code == 200
    for criteria in (eleven, nested_eleven, "(Phone:in:" + ",".join(map(str, range(101))) + ")", "(Phone:greater:1)", "(Phone:equals:1", "Phone"):
        assert error_code(api.get("/Leads/search", params={"criteria": criteria})) == (400, "INVALID_QUERY"), criteria
    assert error_code(api.get("/Leads/search", params={"phone": "1", "page": "11"})) == (400, "LIMIT_REACHED")


def test_the_phone_match_switch_governs_criteria_too(zoho, api):
    zoho.add_record("Leads", Last_Name="A", Phone="928 000 000")
    compact = {"criteria": "(Phone:equals:928000000)"}

    formatting = api.get("/Leads/search", params=compact).status_code
    zoho.phone_match = "exact"
    exact = api.get("/Leads/search", params=compact).status_code

    assert (formatting, exact) == (200, 204)
    assert api.get("/Leads/search", params={"criteria": "(Phone:equals:928 000 000)"}).status_code == 200


# -- COQL -----------------------------------------------------------------------


@pytest.fixture
def org(zoho):
    """Two owners; an account, a contact of it with a deal, another deal on the account alone, two leads."""
    ana = zoho.add_user("Ana García", "ana@example.com")
    beatriz = zoho.add_user("Beatriz Soto", "beatriz@example.com")
    account = zoho.add_record("Accounts", ana, Account_Name="Hotel Las Palmas", Phone="+34 928 00 00 04")
    contact = zoho.add_record("Contacts", ana, Last_Name="Romero", Full_Name="Lucía Romero", Mobile="+34-928-000-002",
                              Account_Name={"name": "Hotel Las Palmas", "id": account["id"]})
    deal = zoho.add_record("Deals", beatriz, Deal_Name="Ampliación", Stage="Qualification",
                           Contact_Name={"name": "Lucía Romero", "id": contact["id"]}, Account_Name={"name": "Hotel Las Palmas", "id": account["id"]})
    account_deal = zoho.add_record("Deals", ana, Deal_Name="Renovación", Stage="Closed Won", Account_Name={"name": "Hotel Las Palmas", "id": account["id"]})
    lead = zoho.add_record("Leads", ana, Last_Name="Ruiz", Full_Name="Marta Ruiz", Phone="928 00 00 00", Lead_Status="Contacted")
    old_lead = zoho.add_record("Leads", beatriz, Last_Name="Old", Full_Name="Old Lead", Phone="928 00 00 01", **{"$converted": True})
    return {"ana": ana, "beatriz": beatriz, "account": account, "contact": contact, "deal": deal, "account_deal": account_deal, "lead": lead, "old_lead": old_lead}


def test_coql_selects_columns_and_joins_through_lookups(api, org):
    answer = coql(api, "select Deal_Name, Stage, Owner, Contact_Name, Contact_Name.Mobile, Account_Name.Phone from Deals "
                       "where Contact_Name.Mobile in ('+34928000002', '+34928000999') or Account_Name.Phone = '+34 928 000 004' "
                       "order by Deal_Name asc")

    assert answer.status_code == 200
    assert answer.json() == {"data": [
        {"Deal_Name": "Ampliación", "Stage": "Qualification", "Owner": {"name": "Soto", "id": org["beatriz"]["id"]},
         "Contact_Name": {"name": "Lucía Romero", "id": org["contact"]["id"]}, "Contact_Name.Mobile": "+34-928-000-002",
         "Account_Name.Phone": "+34 928 00 00 04", "id": org["deal"]["id"]},
        {"Deal_Name": "Renovación", "Stage": "Closed Won", "Owner": {"name": "García", "id": org["ana"]["id"]},
         "Contact_Name": None, "Contact_Name.Mobile": None, "Account_Name.Phone": "+34 928 00 00 04", "id": org["account_deal"]["id"]},
    ], "info": {"count": 2, "more_records": False}}


def test_coql_lookups_can_come_back_as_ids_alone(zoho, api, org):
    zoho.coql_lookup_names = False

    [row] = coql(api, f"select Owner, Contact_Name from Deals where id = '{org['deal']['id']}'").json()["data"]

    assert row == {"Owner": {"id": org["beatriz"]["id"]}, "Contact_Name": {"id": org["contact"]["id"]}, "id": org["deal"]["id"]}


def test_coql_two_level_joins_and_the_relation_limit(api, org):
    two = coql(api, "select Deal_Name, Contact_Name.Account_Name.Phone from Deals where Contact_Name.Account_Name.Phone = '+34928000004'")
    three = coql(api, "select Contact_Name.Account_Name.Phone, Account_Name.Phone from Deals where id is not null")
    not_lookup = coql(api, "select Deal_Name.Phone from Deals where id is not null")

    assert [(r["Deal_Name"], r["Contact_Name.Account_Name.Phone"]) for r in two.json()["data"]] == [("Ampliación", "+34 928 00 00 04")]
    assert error_code(three) == (400, "LIMIT_EXCEEDED"), "Contact_Name, Contact_Name.Account_Name and Account_Name: three relations"
    assert error_code(not_lookup) == (400, "INVALID_QUERY")


@pytest.mark.parametrize("where, expected", [
    ("Last_Name = 'ruiz'", ["lead"]),
    ("Last_Name != 'Ruiz'", []),
    ("Phone = '928000000'", ["lead"]),
    ("Phone in ('928 000 000', '+34 1')", ["lead"]),
    ("Phone not in ('928000000')", []),
    ("Lead_Status is null", []),
    ("Lead_Status is not null", ["lead"]),
    ("Full_Name like '%ruiz'", ["lead"]),
    ("Full_Name not like '%Ruiz%'", []),
    ("Converted__s = true", ["old_lead"]),
    ("Converted__s = 'false'", ["lead"]),
    ("(Converted__s = true or Converted__s = false) and Phone like '928%'", ["lead", "old_lead"]),
    ("Owner = '{ana}'", ["lead"]),
    ("Created_Time > '2000-01-01T00:00:00+00:00'", ["lead"]),
    ("Created_Time between '2000-01-01T00:00:00+00:00' and '2001-01-01T00:00:00+00:00'", []),
])
def test_coql_conditions(api, org, where, expected):
    answer = coql(api, "select Last_Name from Leads where " + where.format(ana=org["ana"]["id"]))

    found = [r["id"] for r in answer.json()["data"]] if answer.status_code == 200 else []
    assert answer.status_code in (200, 204)
    assert found == [org[name]["id"] for name in expected], "converted leads only when the query names Converted__s"


def test_coql_null_fields_match_negations_only(zoho, api):
    zoho.add_record("Contacts", Last_Name="NoMail")
    with_mail = zoho.add_record("Contacts", Last_Name="Mail", Email="a@example.com")

    assert [r["id"] for r in coql(api, "select Email from Contacts where Email = 'a@example.com'").json()["data"]] == [with_mail["id"]]
    assert len(coql(api, "select Email from Contacts where Email != 'a@example.com'").json()["data"]) == 1
    assert coql(api, "select Email from Contacts where Email like '%'").json()["info"]["count"] == 1


def test_coql_quoting_order_limit_and_offset(zoho, api):
    for n in range(7):
        zoho.add_record("Contacts", Last_Name=f"O'Brien {n}", Title="Lead \"quoted\" (x), y")

    quoted = coql(api, "select Last_Name, 'Title' from Contacts where Last_Name = 'O''Brien 3' and Title = 'Lead \"quoted\" (x), y'")
    ordered = coql(api, "select Last_Name from Contacts where Last_Name like 'O''Brien%' order by Last_Name desc limit 2, 3").json()
    offset = coql(api, "select Last_Name from Contacts where Last_Name is not null limit 3 offset 6").json()
    default = coql(api, "SELECT Last_Name FROM Contacts WHERE Last_Name IS NOT NULL").json()
    past = coql(api, "select Last_Name from Contacts where Last_Name is not null limit 5 offset 7")

    assert [r["Last_Name"] for r in quoted.json()["data"]] == ["O'Brien 3"] and "Title" in quoted.json()["data"][0]
    assert [r["Last_Name"] for r in ordered["data"]] == ["O'Brien 4", "O'Brien 3", "O'Brien 2"] and ordered["info"]["more_records"] is True
    assert [r["Last_Name"] for r in offset["data"]] == ["O'Brien 6"] and offset["info"] == {"count": 1, "more_records": False}
    assert [r["Last_Name"] for r in default["data"]] == [f"O'Brien {n}" for n in range(7)], "by id, ascending, by default"
    assert (past.status_code, past.content) == (204, b"")


def test_coql_converted_leads_are_left_out_unless_asked_for(api, org):
    plain = coql(api, "select Last_Name from Leads where Phone like '928%'").json()["data"]
    asked = coql(api, "select Last_Name from Leads where Converted__s = true and Phone like '928%'").json()["data"]

    assert [r["id"] for r in plain] == [org["lead"]["id"]]
    assert [r["id"] for r in asked] == [org["old_lead"]["id"]]


@pytest.mark.parametrize("query, code", [
    ("select Last_Name from Leads", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where", "SYNTAX_ERROR"),
    ("select Last_Name Leads where id is not null", "SYNTAX_ERROR"),
    ("update Leads set Last_Name = 'x' where id = '1'", "SYNTAX_ERROR"),
    ("select from Leads where id is not null", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where Last_Name = 'unterminated", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where (Last_Name = 'a'", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where Last_Name = 'a' and Phone = '1' or Phone = '2'", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where Last_Name = 'a' and Phone = '1' and Phone = '2'", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where Last_Name ~ 'a'", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where id is not null limit 0", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where id is not null limit 10 garbage", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where Phone in ()", "SYNTAX_ERROR"),
    ("select Last_Name from Leads where id is not null limit 2001", "LIMIT_EXCEEDED"),
    ("select Last_Name from Leads where id is not null limit 9801, 200", "LIMIT_EXCEEDED"),
    ("select Last_Name from Leads where id is not null limit 200 offset 9801", "LIMIT_EXCEEDED"),
    ("select " + ", ".join(["Last_Name", "Full_Name", "Phone", "Mobile", "Email"] * 10) + ", id from Leads where id is not null", "LIMIT_EXCEEDED"),
    ("select Last_Name from Leads where Phone in (" + ", ".join(f"'{n}'" for n in range(51)) + ")", "LIMIT_EXCEEDED"),
    ("select Last_Name from Leads where id is not null order by Last_Name, First_Name, Full_Name, Phone, Mobile, Email, Company, "
     "Lead_Status, Created_Time, Modified_Time, id", "LIMIT_EXCEEDED"),
    ("select Last_Name, Last_Name from Leads where id is not null", "DUPLICATE_DATA"),
    ("select Nonsense from Leads where id is not null", "INVALID_QUERY"),
    ("select Last_Name from Leads where Nonsense is null", "INVALID_QUERY"),
    ("select Last_Name from Spaceships where id is not null", "INVALID_QUERY"),
    ("select Last_Name from Leads where Owner like '%a%'", "INVALID_QUERY"),
    ("select Last_Name from Leads where Last_Name > 'a'", "INVALID_QUERY"),
    ("select Last_Name from Leads where Created_Time > 'yesterday'", "INVALID_QUERY"),
])
def test_coql_errors(api, org, query, code):
    answer = coql(api, query)

    assert error_code(answer) == (400, code)
    assert answer.json()["message"]


def test_coql_with_more_than_25_conditions_is_refused(api, org):
    def nest(count):
        node = "Phone = '0'"
        for n in range(1, count):
            node = f"({node} or Phone = '{n}')"
        return node

    assert coql(api, "select Last_Name from Leads where " + nest(25)).status_code == 204
    assert error_code(coql(api, "select Last_Name from Leads where " + nest(26))) == (400, "LIMIT_EXCEEDED")
    assert coql(api, "select Last_Name from Leads where id is not null limit 9800, 200").status_code == 204


@pytest.mark.parametrize("body", [b"{oops", b'{"query": "select"}', b'{"select_query": 5}', b'[]'])
def test_coql_unreadable_bodies(api, body):
    answer = api.post("/coql", content=body, headers={"Content-Type": "application/json"})

    assert answer.status_code == 400 and answer.json()["code"] in ("INVALID_DATA", "MANDATORY_NOT_FOUND")


def test_deep_brackets_are_refused_not_a_crash(api):
    deep_coql = "select Last_Name from Leads where " + "(" * 5000 + "Last_Name = 'a'" + ")" * 5000
    deep_criteria = "(" * 5000 + "Last_Name:equals:a" + ")" * 5000

    assert error_code(coql(api, deep_coql)) == (400, "SYNTAX_ERROR")
    assert error_code(api.get("/Leads/search", params={"criteria": deep_criteria})) == (400, "INVALID_QUERY")
    assert coql(api, "select Last_Name from Leads where " + "(" * 50 + "Last_Name = 'a'" + ")" * 50).status_code == 204


def test_coql_answers_hostile_text_as_data(zoho, api):
    nasty = "Robert'); DROP TABLE Leads;--\n\u2028,PJSIP/999&Local/1"
    record = zoho.add_record("Leads", Last_Name=nasty, Phone="5")
    text = nasty.replace("'", "''")

    answer = coql(api, f"select Last_Name from Leads where Last_Name = '{text}'")

    assert answer.json()["data"] == [{"Last_Name": nasty, "id": record["id"]}]
    assert coql(api, "select Last_Name from Leads where Last_Name = ''").status_code == 204
    assert api.get("/coql").status_code == 400


def test_coql_phone_conditions_use_the_index_and_agree_with_a_scan(zoho, api):
    """The phone index only narrows the records tested; a scan with the same condition finds the same."""
    contacts = [zoho.add_record("Contacts", Last_Name=f"C{n}", Phone=f"+34 600 000 {n:03d}") for n in range(50)]
    for n, contact in enumerate(contacts):
        zoho.add_record("Deals", Deal_Name=f"D{n}", Stage="Qualification", Contact_Name={"id": contact["id"]})
    wanted = "('+34600000007', '+34 600 000 042', '600000001')"

    indexed = coql(api, f"select Deal_Name from Deals where Contact_Name.Phone in {wanted}").json()["data"]
    scanned = coql(api, f"select Deal_Name from Deals where Contact_Name.Phone in {wanted} or Deal_Name like '%no such%'").json()["data"]
    both = coql(api, f"select Deal_Name from Deals where Contact_Name.Phone in {wanted} and Deal_Name = 'D7'").json()["data"]

    assert [r["Deal_Name"] for r in indexed] == [r["Deal_Name"] for r in scanned] == ["D7", "D42"]
    assert [r["Deal_Name"] for r in both] == ["D7"]


# -- scopes -------------------------------------------------------------------


@pytest.mark.parametrize("scopes, method, path, allowed", [
    ("ZohoCRM.modules.ALL", "GET", "/Leads?fields=Last_Name", True),
    ("ZohoCRM.modules.READ", "GET", "/Leads?fields=Last_Name", True),
    ("ZohoCRM.modules.leads.READ", "GET", "/Leads?fields=Last_Name", True),
    ("ZohoCRM.modules.contacts.READ", "GET", "/Leads?fields=Last_Name", False),
    ("ZohoCRM.modules.leads.READ", "GET", "/Leads/deleted", True),
    ("ZohoCRM.modules.ALL", "GET", "/Leads/search?phone=1", False),
    ("ZohoCRM.modules.ALL ZohoSearch.securesearch.READ", "GET", "/Leads/search?phone=1", True),
    ("ZohoCRM.modules.READ", "POST", "/Leads", False),
    ("ZohoCRM.modules.leads.CREATE", "POST", "/Leads", True),
    ("ZohoCRM.settings.fields.READ", "GET", "/settings/fields?module=Leads", True),
    ("ZohoCRM.settings.READ", "GET", "/settings/fields?module=Leads", True),
    ("ZohoCRM.settings.layouts.READ", "GET", "/settings/fields?module=Leads", False),
    ("ZohoCRM.settings.layouts.READ", "GET", "/settings/layouts?module=Deals", True),
    ("ZohoCRM.settings.ALL", "GET", "/settings/pipeline?layout_id=1", True),
    ("ZohoCRM.modules.ALL", "GET", "/settings/pipeline?layout_id=1", False),
    ("ZohoCRM.users.READ", "GET", "/users", True),
    ("ZohoCRM.users.ALL", "GET", "/users", True),
    ("ZohoCRM.modules.ALL ZohoCRM.settings.ALL", "GET", "/users", False),
    ("ZohoCRM.coql.READ ZohoCRM.modules.leads.READ", "POST", "/coql", True),
    ("ZohoCRM.coql.READ ZohoCRM.modules.contacts.READ", "POST", "/coql", False),
    ("ZohoCRM.modules.ALL", "POST", "/coql", False),
])
def test_each_endpoint_needs_its_documented_scope(zoho, scopes, method, path, allowed):
    zoho.granted_scopes = scopes
    with client_for(zoho) as api:
        body = {"select_query": "select Last_Name from Leads where id is not null"} if path == "/coql" else {"data": [{"Last_Name": "x"}]}
        answer = api.request(method, path, json=body if method == "POST" else None)

    if allowed:
        assert answer.status_code != 401, answer.text
    else:
        assert error_code(answer) == (401, "OAUTH_SCOPE_MISMATCH")


def test_tokens_keep_the_scopes_they_were_minted_with(zoho):
    early = client_for(zoho)
    zoho.granted_scopes = "ZohoCRM.modules.ALL"
    late_token = post(f"{zoho.url}/oauth/v2/token", data={
        "grant_type": "refresh_token", "client_id": zoho.client_id, "client_secret": zoho.client_secret, "refresh_token": zoho.refresh_token,
    }).json()
    late = http_client(base_url=f"{zoho.url}/crm/v8", headers={"Authorization": f"Zoho-oauthtoken {late_token['access_token']}"})

    with early, late:
        assert early.get("/users").status_code == 204
        assert late_token["scope"] == "ZohoCRM.modules.ALL"
        assert error_code(late.get("/users")) == (401, "OAUTH_SCOPE_MISMATCH")
        zoho.scope_mismatch = True
        assert error_code(early.get("/users")) == (401, "OAUTH_SCOPE_MISMATCH"), "the switch still refuses everything"


def test_the_default_grant_is_the_documented_set(zoho, api):
    answer = post(f"{zoho.url}/oauth/v2/token", data={
        "grant_type": "refresh_token", "client_id": zoho.client_id, "client_secret": zoho.client_secret, "refresh_token": zoho.refresh_token,
    }).json()

    assert answer["scope"] == "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.users.READ ZohoSearch.securesearch.READ ZohoCRM.coql.READ"
    for method, path in [("GET", "/Leads?fields=Last_Name"), ("GET", "/Leads/search?phone=1"), ("GET", "/users"),
                         ("GET", "/settings/fields?module=Leads"), ("GET", "/Leads/deleted")]:
        assert api.request(method, path).status_code in (200, 204), path
    assert coql(api, "select Last_Name from Leads where id is not null").status_code == 204


# -- credits and latency --------------------------------------------------------


def test_credits_count_api_requests_and_coql_by_its_limit(zoho, api):
    zoho.add_record("Leads", Last_Name="A", Phone="1")
    bad = http_client(base_url=f"{zoho.url}/crm/v8", headers={"Authorization": "Zoho-oauthtoken nope"})

    api.get("/Leads/search", params={"phone": "1"})                      # 1
    api.get("/Leads/search", params={"phone": "2"})                      # 1 (204 counts)
    api.get("/Leads", params={"per_page": "500", "fields": "x"})         # 1 (400 counts)
    api.get("/Spaceships/search", params={"phone": "1"})                 # 1
    for limit in (1, 200, 201, 1000, 1001, 2000):                        # 1 + 1 + 2 + 2 + 3 + 3
        coql(api, f"select Last_Name from Leads where id is not null limit {limit}")
    coql(api, "select Last_Name from Leads where id is not null")        # 1 (default LIMIT 200)
    coql(api, "select nonsense")                                         # 1
    bad.get("/Leads/search", params={"phone": "1"})                      # refused for its token: 0
    token_for(zoho)                                                      # token requests: 0
    zoho.add_fault(r"/Leads/search$", 429, times=1)
    api.get("/Leads/search", params={"phone": "1"})                      # 429: 0
    zoho.add_fault(r"/Leads/search$", 500, times=1)
    api.get("/Leads/search", params={"phone": "1"})                      # 1 (an error still counts)
    bad.close()

    assert zoho.credits_used == 4 + 12 + 1 + 1 + 1
    assert zoho.credits_by_path() == {"/crm/v8/Leads/search": 3, "/crm/v8/Leads": 1, "/crm/v8/Spaceships/search": 1, "/crm/v8/coql": 14}
    zoho.reset_credits()
    assert (zoho.credits_used, zoho.credits_by_path()) == (0, {})


def test_requests_refused_for_scope_cost_nothing(zoho):
    zoho.granted_scopes = "ZohoCRM.modules.ALL"
    with client_for(zoho) as api:
        api.get("/users")
        api.get("/Leads", params={"fields": "Last_Name"})

    assert zoho.credits_by_path() == {"/crm/v8/Leads": 1}


def test_latency_for_delays_one_path_and_keeps_its_answer(zoho, api):
    zoho.add_record("Leads", Last_Name="A", Phone="1")
    latency = zoho.latency_for(r"/Leads/search$", 0.25)

    slow = api.get("/Leads/search", params={"phone": "1"})
    zoho.clear_latencies()

    assert latency.seconds == 0.25
    assert slow.status_code == 200 and slow.json()["data"][0]["Last_Name"] == "A"
    [logged] = zoho.requests("/crm/v8/Leads/search")
    assert logged.ms >= 250, "the delay is on top of the answer"
    assert zoho.latencies == []


# -- the generated org and standalone mode --------------------------------------


def test_generate_org_spreads_unique_numbers_over_the_modules(zoho, api):
    summary = generate_org(zoho, 1000, seed=3)

    kinds = summary.kinds()
    every = [number for numbers in kinds.values() for number in numbers]
    assert {kind: len(numbers) for kind, numbers in kinds.items()} == {"lead": 400, "deal": 200, "contact": 100, "account": 100}
    assert len(every) == len(set(every)) == len(summary.owner_of)
    assert sum(len(zoho.records(module)) for module in ("Leads", "Contacts", "Accounts", "Deals")) == 1000
    for kind, module in (("lead", "Leads"), ("contact", "Contacts"), ("account", "Accounts")):
        [found] = api.get(f"/{module}/search", params={"phone": kinds[kind][0]}).json()["data"]
        assert found["Owner"]["id"] == summary.owner_of[kinds[kind][0]]
    number = kinds["deal"][0]
    [deal] = coql(api, f"select Owner, Contact_Name.Phone, Contact_Name.Mobile, Contact_Name.Home_Phone from Deals "
                       f"where (Contact_Name.Phone = '{number}' or Contact_Name.Mobile = '{number}') or Contact_Name.Home_Phone = '{number}'").json()["data"]
    assert deal["Owner"]["id"] == summary.owner_of[number]
    again = generate_org(ZohoSimulator(), 1000, seed=3)
    assert again.kinds() == kinds, "the same seed makes the same org"


def test_standalone_mode_serves_a_generated_org():
    repo = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.zoho_simulator", "--port", "0", "--records", "200", "--no-demo-data"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        url = lines[1].split(" on ")[1].split(". ")[0]
        token = post(f"{url}/oauth/v2/token", data={
            "grant_type": "refresh_token", "client_id": "1000.SIMCLIENTID", "client_secret": "sim-client-secret-0123456789",
            "refresh_token": "1000.sim-refresh-token.abcdef",
        }).json()["access_token"]
        answer = get(f"{url}/crm/v8/Leads/search", params={"phone": "+34600000081"}, headers={"Authorization": f"Zoho-oauthtoken {token}"})
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert lines[0].startswith("Generated 200 records: 80 lead numbers, 40 deal numbers, 20 contact numbers, 20 account numbers")
    assert answer.status_code == 200 and answer.json()["data"][0]["Last_Name"] == "Lead 0"


def test_control_calls_while_the_server_answers(zoho, api):
    """Changes from test threads and answers share one lock: no request sees a half-made change."""
    stored = [zoho.add_record("Contacts", Last_Name=f"C{n}", Phone=f"+34 600 {n:06d}") for n in range(400)]
    stop = []

    def churn(offset):
        n = offset
        while not stop:
            zoho.update_record("Contacts", stored[n % 400]["id"], Mobile=f"7{n:08d}")
            zoho.delete_record("Contacts", zoho.add_record("Contacts", Last_Name="Temp", Phone=f"8{n:08d}")["id"])
            n += 4

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(churn, offset) for offset in range(4)]
        try:
            statuses = []
            for _ in range(5):
                ids, infos = list_all(api, "Contacts", per_page="50")
                statuses.append(len(set(ids) & {r["id"] for r in stored}))
                statuses.append(coql(api, "select Last_Name from Contacts where Phone in ('+34600000007', '+34600000100')").json()["info"]["count"])
        finally:
            stop.append(True)
        for worker in workers:
            worker.result()

    assert statuses == [400, 2] * 5


# -- attachments and updates -------------------------------------------------------------


def test_an_attachment_is_stored_byte_for_byte_and_listed(zoho, api):
    call = zoho.add_record("Calls", Subject="Inbound call", Call_Type="Inbound", Call_Start_Time="2024-05-01T10:00:00+02:00")
    content = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n\r\n"
    answer = api.post(f"/Calls/{call['id']}/Attachments", files={"file": ("1700000000.7.wav", content, "audio/wav")})
    assert answer.status_code == 200
    body = answer.json()["data"][0]
    assert (body["code"], body["status"], body["message"]) == ("SUCCESS", "success", "attachment uploaded successfully")
    stored = zoho.attachments("Calls", call["id"])
    assert [(a["id"], a["File_Name"], a["content"]) for a in stored] == [(body["details"]["id"], "1700000000.7.wav", content)]
    listed = api.get(f"/Calls/{call['id']}/Attachments", params={"fields": "id,File_Name"}).json()["data"]
    assert listed == [{"id": body["details"]["id"], "File_Name": "1700000000.7.wav"}]


def test_attachment_errors_are_zohos(zoho, api):
    call = zoho.add_record("Calls", Subject="Inbound call", Call_Type="Inbound", Call_Start_Time="2024-05-01T10:00:00+02:00")
    assert api.get(f"/Calls/{call['id']}/Attachments", params={"fields": "id"}).status_code == 204
    assert api.get(f"/Calls/{call['id']}/Attachments").json()["code"] == "REQUIRED_PARAM_MISSING"
    unknown = api.post("/Calls/999/Attachments", files={"file": ("a.wav", b"x", "audio/wav")})
    assert unknown.status_code == 400 and unknown.json()["details"] == {"resource_path_index": 1}
    no_file = api.post(f"/Calls/{call['id']}/Attachments", files={"other": ("a.wav", b"x", "audio/wav")})
    assert no_file.status_code == 400 and no_file.json()["code"] == "MANDATORY_NOT_FOUND"
    not_multipart = api.post(f"/Calls/{call['id']}/Attachments", content=b"RIFF....", headers={"Content-Type": "audio/wav"})
    assert not_multipart.status_code == 400
    zoho.attachment_limit_bytes = 1000
    too_large = api.post(f"/Calls/{call['id']}/Attachments", files={"file": ("a.wav", b"x" * 1001, "audio/wav")})
    assert too_large.status_code == 413
    assert too_large.json() == {
        "code": "FILE_SIZE_MORE_THAN_ALLOWED_SIZE", "details": {}, "message": "Please check if the size of the file is in the correct range", "status": "error",
    }
    huge = api.post(f"/Calls/{call['id']}/Attachments", files={"file": ("a.wav", b"x" * 200_000, "audio/wav")})
    assert huge.status_code == 413 and huge.json()["code"] == "FILE_SIZE_MORE_THAN_ALLOWED_SIZE"
    assert zoho.attachments("Calls", call["id"]) == []


def test_a_record_is_updated_by_put(zoho, api):
    call = zoho.add_record("Calls", Subject="Inbound call", Call_Type="Inbound", Call_Start_Time="2024-05-01T10:00:00+02:00")
    done = api.put(f"/Calls/{call['id']}", json={"data": [{"id": call["id"], "Voice_Recording__s": "https://pbx.example.com/rec/a.wav"}]})
    assert done.status_code == 200 and done.json()["data"][0]["message"] == "record updated"
    assert zoho.records("Calls")[0]["Voice_Recording__s"] == "https://pbx.example.com/rec/a.wav"
    refused = api.put(f"/Calls/{call['id']}", json={"data": [{"id": call["id"], "Call_Type": "Sideways"}]})
    assert refused.status_code == 400 and refused.json()["data"][0]["code"] == "INVALID_DATA"
    missing = api.put("/Calls/999", json={"data": [{"id": "999", "Subject": "x"}]})
    assert missing.status_code == 400 and missing.json()["data"][0]["code"] == "INVALID_DATA"
