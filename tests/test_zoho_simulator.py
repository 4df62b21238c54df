"""The Zoho simulator itself: what other tests rely on it to do, as Zoho does it.

Driven with a plain HTTP client, the way the call-outcome sync will use it.
"""

import concurrent.futures
import json

import httpx
import pytest

from zoho_simulator import MAX_INSERT


@pytest.fixture
def api(zoho):
    """An HTTP client holding a valid token for the simulator."""
    token = httpx.post(f"{zoho.url}/oauth/v2/token", data={
        "grant_type": "refresh_token", "client_id": zoho.client_id, "client_secret": zoho.client_secret, "refresh_token": zoho.refresh_token,
    }).json()
    assert token["api_domain"] == zoho.url and token["token_type"] == "Bearer" and token["expires_in"] == 3600
    with httpx.Client(base_url=f"{zoho.url}/crm/v8", headers={"Authorization": f"Zoho-oauthtoken {token['access_token']}"}) as client:
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
    assert results[1] == {"code": "INVALID_DATA", "details": {"api_name": "Call_Type", "json_path": "$.data[1].Call_Type", "expected_data_type": "picklist"}, "message": "invalid data", "status": "error"}
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
    no_header = httpx.get(f"{zoho.url}/crm/v8/Leads/search", params={"phone": "1"})
    bad_token = httpx.get(f"{zoho.url}/crm/v8/Leads/search", params={"phone": "1"}, headers={"Authorization": "Zoho-oauthtoken nope"})
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
