"""The Zoho Desk simulator answers as Desk's API documents say (over real HTTP)."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from zoho_desk_simulator import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoDeskSimulator


@pytest.fixture
def desk() -> Iterator[ZohoDeskSimulator]:
    with ZohoDeskSimulator() as simulator:
        yield simulator


def token(desk: ZohoDeskSimulator, refresh: str = REFRESH_TOKEN) -> dict[str, Any]:
    form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": refresh}
    answer: dict[str, Any] = httpx.post(desk.url + "/oauth/v2/token", data=form).json()
    return answer


def get(desk: ZohoDeskSimulator, path: str, params: dict[str, str] | None = None, *, org: str | None = None, access: str = "") -> httpx.Response:
    headers = {"Authorization": f"Zoho-oauthtoken {access or token(desk)['access_token']}"}
    headers["orgId"] = desk.org_id if org is None else org
    return httpx.get(desk.url + path, params=params, headers=headers)


def test_token_and_refusals(desk: ZohoDeskSimulator) -> None:
    answer = token(desk)
    assert answer["expires_in"] == 3600 and answer["api_domain"] == desk.url
    assert token(desk, "wrong") == {"error": "invalid_code"}
    reply = get(desk, "/api/v1/agents", access="1000.nope")
    assert reply.status_code == 401 and reply.json()["errorCode"] == "INVALID_OAUTH"


def test_org_id_header_is_required(desk: ZohoDeskSimulator) -> None:
    reply = get(desk, "/api/v1/agents", org="")
    assert reply.status_code == 400 and reply.json()["errorCode"] == "INVALID_DATA"
    assert get(desk, "/api/v1/agents", org="999").status_code == 403


def test_expired_token_is_refused(desk: ZohoDeskSimulator) -> None:
    access = token(desk)["access_token"]
    desk.add_agent("Ann")
    assert get(desk, "/api/v1/agents", access=access).status_code == 200
    desk.expire_tokens()
    assert get(desk, "/api/v1/agents", access=access).status_code == 401


def test_ticket_search_by_phone_sorted_and_204(desk: ZohoDeskSimulator) -> None:
    older = desk.add_ticket("+34 928 00 00 00", subject="old")
    newer = desk.add_ticket("+34928000000", subject="new")
    desk.add_ticket("+34600000000")
    reply = get(desk, "/api/v1/tickets/search", {"phone": "+34928000000,928000000", "sortBy": "-modifiedTime", "limit": "100"})
    assert reply.status_code == 200
    body = reply.json()
    assert [t["id"] for t in body["data"]] == [newer, older] and body["count"] == 2
    assert get(desk, "/api/v1/tickets/search", {"phone": "+15550000000"}).status_code == 204
    assert get(desk, "/api/v1/tickets/search", {"phone": "1", "limit": "101"}).status_code == 422
    assert get(desk, "/api/v1/tickets/search", {"phone": ",".join(["1"] * 31)}).status_code == 422


def test_call_activity_validated_and_listed_by_ticket(desk: ZohoDeskSimulator) -> None:
    department = desk.add_department("Support")
    ticket = desk.add_ticket("+34928000000", department=department)
    headers = {"Authorization": f"Zoho-oauthtoken {token(desk)['access_token']}", "orgId": desk.org_id}
    bad = httpx.post(desk.url + "/api/v1/calls", json={"subject": "x"}, headers=headers)
    assert bad.status_code == 422 and {e["fieldName"] for e in bad.json()["errors"]} >= {"/contactId", "/startTime"}
    call = {"subject": "Inbound call", "departmentId": department, "contactId": desk.tickets[ticket]["contactId"],
            "startTime": "2026-01-01T10:00:00.000Z", "status": "Completed", "direction": "inbound", "duration": "30", "ticketId": ticket}
    assert httpx.post(desk.url + "/api/v1/calls", json=call, headers=headers).status_code == 200
    listed = httpx.get(f"{desk.url}/api/v1/tickets/{ticket}/calls", headers=headers)
    assert [c["subject"] for c in listed.json()["data"]] == ["Inbound call"]


def test_presence_and_faults(desk: ZohoDeskSimulator) -> None:
    agent = desk.add_agent("Ann", online=False)
    assert get(desk, "/api/v1/agentAvailability").status_code == 422  # departmentId is required
    rows = get(desk, "/api/v1/agentAvailability", {"departmentId": "-1"}).json()["data"]
    assert rows == [{"agentId": agent, "status": "OFFLINE", "phoneStatus": "OFFLINE"}]
    desk.fail_next("/api/v1/agents", 200, b"{broken")
    assert get(desk, "/api/v1/agents").content == b"{broken"
    desk.rate_limit_per_s = 1
    replies = [get(desk, "/api/v1/agents").status_code for _ in range(3)]
    assert 429 in replies
