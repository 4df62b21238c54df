"""A Zoho Desk simulator: a real HTTP server on loopback that answers like Desk's API v1.

For tests, benchmarks and demos. It implements what crmroute uses, in the
shapes of Desk's published OpenAPI description (``zoho/zohodesk-oas``,
``v1.0/Search.json``, ``Agent.json``, ``AgentPresence.json``, ``Call.json``,
``Department.json``):

* OAuth as on Zoho's accounts server: ``POST /oauth/v2/token`` (grant_type
  ``refresh_token``, credentials in the form body) answers ``{"access_token",
  "expires_in", "api_domain", "token_type"}``; a wrong refresh token gets
  HTTP 200 ``{"error": "invalid_code"}``. Tokens expire after
  :attr:`ZohoDeskSimulator.token_ttl_s`; :meth:`expire_tokens` ends them now.
* Every API request needs ``Authorization: Zoho-oauthtoken ...`` (none, an
  unknown or an expired token: HTTP 401 ``INVALID_OAUTH``) and the ``orgId``
  header (none: HTTP 400 ``INVALID_DATA``; another org: HTTP 403 ``FORBIDDEN``).
* ``GET /api/v1/tickets/search`` with ``phone`` (comma-separated values, at
  most 30, a trailing ``*`` a wildcard), ``limit`` (1 to 100, default 10),
  ``from`` (0 to 999), ``sortBy`` (``relevance``, ``modifiedTime``,
  ``createdTime``, ``customerResponseTime``, ``-`` in front for descending),
  ``status``: ``{"data": [...], "count": N}``, or 204 with no body when
  nothing matches. A ticket is ``id``, ``ticketNumber``, ``subject``,
  ``status``, ``statusType`` (``Open``, ``On Hold``, ``Closed``),
  ``assigneeId`` (null: unassigned), ``departmentId``, ``contactId``,
  ``phone``, ``email``, ``createdTime``, ``modifiedTime`` (ISO, ``...Z``).
* ``GET /api/v1/contacts/search`` with ``phone`` (compared with the
  contact's ``phone`` and ``mobile``), ``limit``, ``from``: ``{"data",
  "count"}`` or 204; ``GET /api/v1/tickets/search?contactId=a,b`` finds
  those contacts' tickets (a ticket raised by mail has no phone of its own).
* ``GET /api/v1/agents`` with ``limit`` (at most 200) and ``from``:
  ``{"data": [...]}`` (204 past the end); each agent ``id``, ``name``,
  ``firstName``, ``lastName``, ``emailId``, ``extn``, ``status``
  (``ACTIVE``, ``DISABLED``), ``isConfirmed``.
* ``GET /api/v1/departments`` with ``limit`` (at most 200) and ``from``:
  ``{"data": [{"id", "name", "isEnabled"}]}``.
* ``GET /api/v1/agentAvailability`` with ``departmentId`` (required; ``-1``
  for all), ``limit`` (at most 50), ``from``: ``{"data": [{"agentId",
  "status", "phoneStatus", ...}], "hasMore", "totalAgentsCount"}``.
* ``POST /api/v1/calls`` (JSON; ``subject``, ``departmentId``,
  ``contactId``, ``startTime`` ``yyyy-MM-ddThh:mm:ss.SSSZ`` and ``status``
  one of ``Completed``, ``Scheduled``, ``Missed``, ``Canceled``, ``In
  Progress`` required; ``direction`` ``inbound``/``outbound``; ``duration``
  seconds; ``ticketId``; ``description``): the stored call. A missing or
  wrong field: HTTP 422 ``{"errorCode": "INVALID_DATA", "errors":
  [{"fieldName": "/subject", "errorType": "missing", ...}]}``.
* ``GET /api/v1/tickets/{id}``: the ticket (404 ``RESOURCE_NOT_FOUND``).
* ``GET /api/v1/tickets/{id}/calls`` with ``limit`` (at most 100) and
  ``from``: ``{"data": [...]}`` (204 when there are none).

Errors are Desk's ``{"errorCode", "message"}``. Choices where the documents
are silent: phones compare by their digits (the search treats the text; a
caller's forms are all sent, so this is the lenient side); past
:attr:`rate_limit_per_s` requests in one second: HTTP 429
``{"errorCode": "TOO_MANY_REQUESTS"}`` with ``Retry-After: 1``.

Fault injection: :meth:`fail_next` (status and body, or ``b"{broken"`` for a
body that is not JSON), :attr:`latency_s` and :attr:`path_latency_s` (slow),
:meth:`go_down` (every request refused at the socket: the server closes).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from http_simulator import HttpSimulator
from http_simulator import Reply as _Reply

ORG_ID = "60001234567"
CLIENT_ID = "1000.DESKSIMCLIENT"
CLIENT_SECRET = "desk-sim-secret"
REFRESH_TOKEN = "1000.desk-sim-refresh"
CALL_STATUSES = ("Completed", "Scheduled", "Missed", "Canceled", "In Progress")
STATUS_TYPES = ("Open", "On Hold", "Closed")
SORTABLE = ("relevance", "modifiedTime", "createdTime", "customerResponseTime")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z")
_DIGITS = re.compile(r"\D")
_TICKET = re.compile(r"/api/v1/tickets/([0-9]+)")
_TICKET_CALLS = re.compile(r"/api/v1/tickets/([0-9]+)/calls")


def digits(text: str) -> str:
    return _DIGITS.sub("", text)


def iso(moment: float) -> str:
    """Desk's time format: ``2026-01-02T03:04:05.000Z``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Request:
    """One request as the simulator saw it (no token kept)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    at: float
    status: int = 0


def error(status: int, code: str, message: str, errors: list[dict[str, str]] | None = None) -> _Reply:
    body: dict[str, Any] = {"errorCode": code, "message": message}
    if errors:
        body["errors"] = errors
    return _Reply(status, body)


class ZohoDeskSimulator(HttpSimulator):
    """One Zoho Desk portal (org) and its accounts server, on a free loopback port."""

    thread_name = "desk-simulator"
    content_type = "application/json;charset=UTF-8"

    def __init__(self, *, rate_limit_per_s: int | None = 50, token_ttl_s: int = 3600, org_id: str = ORG_ID):
        super().__init__()
        self.org_id = org_id
        self.rate_limit_per_s = rate_limit_per_s
        self.token_ttl_s = token_ttl_s
        self.refresh_token = REFRESH_TOKEN
        self.tickets: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.departments: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.presence: dict[str, dict[str, str]] = {}
        self.calls: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.tokens_issued: list[str] = []
        self._tokens: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self._next_id = 9_000_000_000_000_000
        self._clock = 1_767_225_600.0  # 2026-01-01T00:00:00Z: modified times advance from here
        # API requests being answered at once, now and at most (requests sent together overlap).
        self.in_flight = 0
        self.max_in_flight = 0

    def desk_config(self, **overrides: Any) -> dict[str, Any]:
        """The ``[zoho_desk]`` section that points crmroute at this simulator."""
        return {
            "accounts_url": self.url, "api_url": self.url, "org_id": self.org_id,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN, **overrides,
        }

    # -- control ------------------------------------------------------------

    def new_id(self) -> str:
        with self._lock:
            self._next_id += 1
            return str(self._next_id)

    def add_department(self, name: str, department_id: str = "") -> str:
        department_id = department_id or self.new_id()
        with self._lock:
            self.departments[department_id] = {"id": department_id, "name": name, "isEnabled": True}
        return department_id

    def add_contact(self, first: str, last: str, *, phone: str = "", mobile: str = "") -> str:
        contact_id = self.new_id()
        with self._lock:
            self.contacts[contact_id] = {"id": contact_id, "firstName": first, "lastName": last, "phone": phone or None,
                                         "mobile": mobile or None, "email": None, "accountId": None, "isSpam": False}
        return contact_id

    def add_agent(self, first: str, last: str = "", *, email: str = "", extn: str = "", status: str = "ACTIVE",
                  online: bool = True, agent_id: str = "") -> str:
        agent_id = agent_id or self.new_id()
        with self._lock:
            self.agents[agent_id] = {
                "id": agent_id, "firstName": first, "lastName": last, "name": f"{first} {last}".strip(),
                "emailId": email or f"{first.lower()}@example.com", "extn": extn, "status": status,
                "isConfirmed": True, "phone": None, "mobile": None, "roleId": "1", "profileId": "1",
            }
            self.presence[agent_id] = {"status": "ONLINE" if online else "OFFLINE", "phoneStatus": "ONLINE" if online else "OFFLINE"}
        return agent_id

    def set_online(self, agent_id: str, online: bool) -> None:
        with self._lock:
            state = "ONLINE" if online else "OFFLINE"
            self.presence[agent_id] = {"status": state, "phoneStatus": state}

    def add_ticket(self, phone: str, *, subject: str = "Help", assignee: str | None = None, department: str = "",
                   status_type: str = "Open", status: str = "", contact_id: str = "", modified_s_ago: float | None = None) -> str:
        """A ticket raised from ``phone``; each new one is modified after the ones before unless told otherwise."""
        assert status_type in STATUS_TYPES
        ticket_id = self.new_id()
        with self._lock:
            self._clock += 60
            modified = self._clock if modified_s_ago is None else self._clock - modified_s_ago
            number = str(100 + len(self.tickets))
            self.tickets[ticket_id] = {
                "id": ticket_id, "ticketNumber": number, "subject": subject,
                "status": status or {"Open": "Open", "On Hold": "On Hold", "Closed": "Closed"}[status_type],
                "statusType": status_type, "assigneeId": assignee, "departmentId": department or next(iter(self.departments), ""),
                "contactId": contact_id or self.new_id(), "phone": phone or None, "email": None,
                "createdTime": iso(modified - 3600), "modifiedTime": iso(modified),
                "channel": "Phone", "webUrl": f"{self.url}/support/ShowHomePage.do#Cases/dv/{ticket_id}",
            }
        return ticket_id

    def update_ticket(self, ticket_id: str, **fields: Any) -> None:
        with self._lock:
            self._clock += 60
            self.tickets[ticket_id].update(fields, modifiedTime=iso(self._clock))

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as after its hour)."""
        with self._lock:
            self._tokens = {token: 0.0 for token in self._tokens}

    def calls_on(self, ticket_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [call for call in self.calls if call.get("ticketId") == ticket_id]

    def wait_for_calls(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return self._wait_for(self.calls, count, timeout)

    # -- serving ------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        logged = Request(method, parts.path, query, None, time.time())
        with self._lock:
            self.requests.append(logged)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._handle(method, parts.path, query, headers, body, logged)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes, logged: Request) -> _Reply:
        self._delay(path)
        try:
            if path == "/oauth/v2/token" and method == "POST":
                reply = self._token(body)
            else:
                reply = self._api(method, path, query, headers, body, logged)
        except _Reply as answer:
            reply = answer
        logged.status = reply.status
        return reply

    def _token(self, body: bytes) -> _Reply:
        form = {key: values[-1] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "refresh_token":
            return _Reply(200, {"error": "unsupported_grant_type"})
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return _Reply(200, {"error": "invalid_client"})
        if form.get("refresh_token") != self.refresh_token:
            return _Reply(200, {"error": "invalid_code"})
        token = "1000." + secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl_s
            self.tokens_issued.append(token)
        return _Reply(200, {"access_token": token, "api_domain": self.url, "token_type": "Bearer", "expires_in": self.token_ttl_s})

    def _api(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes, logged: Request) -> _Reply:
        self._authenticate(headers)
        org = headers.get("orgid", "")
        if not org:
            raise error(400, "INVALID_DATA", "The header orgId is missing or empty")
        if org != self.org_id:
            raise error(403, "FORBIDDEN", "You do not have sufficient permission to perform this operation.")
        self._count_rate()
        self._raise_fault(path)
        if method == "GET":
            routes = {
                "/api/v1/tickets/search": self._search,
                "/api/v1/contacts/search": self._search_contacts,
                "/api/v1/agents": self._agents,
                "/api/v1/departments": self._departments,
                "/api/v1/agentAvailability": self._availability,
            }
            answer = routes.get(path)
            if answer is not None:
                return answer(query)
            match = _TICKET_CALLS.fullmatch(path)
            if match:
                return self._ticket_calls(match.group(1), query)
            match = _TICKET.fullmatch(path)
            if match:
                with self._lock:
                    ticket = self.tickets.get(match.group(1))
                if ticket is None:
                    raise error(404, "RESOURCE_NOT_FOUND", "The requested resource does not exist")
                return _Reply(200, dict(ticket))
        if method == "POST" and path == "/api/v1/calls":
            try:
                data = json.loads(body or b"null")
            except ValueError:
                raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions") from None
            logged.body = data
            return self._create_call(data)
        raise error(404, "URL_NOT_FOUND", "The URL you requested could not be found on our server")

    def _authenticate(self, headers: dict[str, str]) -> None:
        header = headers.get("authorization", "")
        token = header[len("Zoho-oauthtoken "):] if header.startswith("Zoho-oauthtoken ") else ""
        with self._lock:
            expires = self._tokens.get(token)
        if not token or expires is None or time.monotonic() >= expires:
            raise error(401, "INVALID_OAUTH", "The OAuth Token you provided is invalid.")

    def _count_rate(self) -> None:
        if self.rate_limit_per_s is None:
            return
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit_per_s:
                raise _Reply(429, {"errorCode": "TOO_MANY_REQUESTS", "message": "You have exceeded the rate limit"}, {"Retry-After": "1"})
            self._recent.append(now)

    def _search(self, query: dict[str, list[str]]) -> _Reply:
        limit, start = _paging(query, 10, 100, 999)
        phones = [p for p in _one(query, "phone").split(",") if p] if "phone" in query else []
        if len(phones) > 30:
            raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions",
                        [{"fieldName": "/phone", "errorType": "invalid", "errorMessage": "at most 30 values"}])
        sort = _one(query, "sortBy")
        if sort and sort.lstrip("-") not in SORTABLE:
            raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions",
                        [{"fieldName": "/sortBy", "errorType": "invalid", "errorMessage": ""}])
        statuses = {s.strip().casefold() for s in _one(query, "status").split(",") if s.strip()}
        contact_ids = {c for c in _one(query, "contactId").split(",") if c}
        with self._lock:
            found = [self._with_contact(t) for t in self.tickets.values()
                     if (not phones or _phone_matches(t.get("phone") or "", phones)) and (not contact_ids or t["contactId"] in contact_ids)
                     and (phones or contact_ids)]
        if statuses:
            found = [t for t in found if t["status"].casefold() in statuses]
        if sort and sort.lstrip("-") != "relevance":
            found.sort(key=lambda t: t.get(sort.lstrip("-"), ""), reverse=sort.startswith("-"))
        page = found[start:start + limit]
        if not page:
            return _Reply(204, b"")
        return _Reply(200, {"data": page, "count": len(found)})

    def _with_contact(self, ticket: dict[str, Any]) -> dict[str, Any]:
        """A ticket as the search lists it, with its contact's names (as Desk's listing carries them)."""
        contact = self.contacts.get(ticket["contactId"])
        shown = dict(ticket)
        if contact is not None:
            shown["contact"] = {key: contact[key] for key in ("id", "firstName", "lastName", "phone", "mobile", "email")}
        return shown

    def _search_contacts(self, query: dict[str, list[str]]) -> _Reply:
        limit, start = _paging(query, 10, 100, 999)
        phones = [p for p in _one(query, "phone").split(",") if p]
        if len(phones) > 30:
            raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions",
                        [{"fieldName": "/phone", "errorType": "invalid", "errorMessage": "at most 30 values"}])
        with self._lock:
            found = [dict(c) for c in self.contacts.values()
                     if phones and (_phone_matches(c.get("phone") or "", phones) or _phone_matches(c.get("mobile") or "", phones))]
        page = found[start:start + limit]
        return _Reply(200, {"data": page, "count": len(found)}) if page else _Reply(204, b"")

    def _agents(self, query: dict[str, list[str]]) -> _Reply:
        limit, start = _paging(query, 10, 200, 10**6)
        with self._lock:
            agents = [dict(a) for a in sorted(self.agents.values(), key=lambda a: a["id"])]
        page = agents[start:start + limit]
        return _Reply(200, {"data": page}) if page else _Reply(204, b"")

    def _departments(self, query: dict[str, list[str]]) -> _Reply:
        limit, start = _paging(query, 10, 200, 10**6)
        with self._lock:
            page = [dict(d) for d in self.departments.values()][start:start + limit]
        return _Reply(200, {"data": page}) if page else _Reply(204, b"")

    def _availability(self, query: dict[str, list[str]]) -> _Reply:
        if not _one(query, "departmentId"):
            raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions",
                        [{"fieldName": "departmentId", "errorType": "missing", "errorMessage": ""}])
        limit, start = _paging(query, 50, 50, 5999)
        with self._lock:
            rows = [{"agentId": agent_id, **state} for agent_id, state in sorted(self.presence.items())]
        page = rows[start:start + limit]
        return _Reply(200, {"data": page, "hasMore": start + limit < len(rows), "totalAgentsCount": str(len(rows))})

    def _ticket_calls(self, ticket_id: str, query: dict[str, list[str]]) -> _Reply:
        limit, start = _paging(query, 10, 100, 10**6)
        with self._lock:
            if ticket_id not in self.tickets:
                raise error(404, "RESOURCE_NOT_FOUND", "The requested resource does not exist")
            page = [dict(c) for c in self.calls if c.get("ticketId") == ticket_id][start:start + limit]
        return _Reply(200, {"data": page}) if page else _Reply(204, b"")

    def _create_call(self, data: Any) -> _Reply:
        if not isinstance(data, dict):
            raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions")
        problems = _call_problems(data)
        with self._lock:
            if data.get("ticketId") and str(data["ticketId"]) not in self.tickets:
                problems.append({"fieldName": "/ticketId", "errorType": "invalid", "errorMessage": "no such ticket"})
        if problems:
            raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions", problems)
        with self._changed:
            call = {**data, "id": self.new_id(), "createdTime": iso(time.time()), "activityType": "Calls", "isSpam": False}
            self.calls.append(call)
            self._changed.notify_all()
        return _Reply(200, call)


def _call_problems(data: dict[str, Any]) -> list[dict[str, str]]:
    problems = []
    for name in ("subject", "departmentId", "contactId", "startTime", "status"):
        if data.get(name) in (None, ""):
            problems.append({"fieldName": f"/{name}", "errorType": "missing", "errorMessage": ""})
    checks: tuple[tuple[str, Callable[[Any], bool]], ...] = (
        ("status", lambda v: v in CALL_STATUSES),
        ("startTime", lambda v: isinstance(v, str) and _ISO.fullmatch(v) is not None),
        ("direction", lambda v: v in ("inbound", "outbound")),
        ("duration", lambda v: str(v).isdigit()),
        ("subject", lambda v: isinstance(v, str) and len(v) <= 300),
    )
    for name, valid in checks:
        if data.get(name) not in (None, "") and not valid(data[name]):
            problems.append({"fieldName": f"/{name}", "errorType": "invalid", "errorMessage": ""})
    return problems


def _phone_matches(stored: str, wanted: list[str]) -> bool:
    have = digits(stored)
    if not have:
        return False
    for value in wanted:
        if value.endswith("*"):
            if have.startswith(digits(value)):
                return True
        elif digits(value) == have:
            return True
    return False


def _paging(query: dict[str, list[str]], default: int, most: int, last_start: int) -> tuple[int, int]:
    limit_text, from_text = _one(query, "limit") or str(default), _one(query, "from") or "0"
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= most:
        raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions",
                    [{"fieldName": "limit", "errorType": "invalid", "errorMessage": f"between 1 and {most}"}])
    if not from_text.isdigit() or int(from_text) > last_start:
        raise error(422, "INVALID_DATA", "The data is invalid due to validation restrictions",
                    [{"fieldName": "from", "errorType": "invalid", "errorMessage": f"between 0 and {last_start}"}])
    return int(limit_text), int(from_text)


def _one(values: dict[str, list[str]], name: str) -> str:
    found = values.get(name)
    return found[0] if found else ""
