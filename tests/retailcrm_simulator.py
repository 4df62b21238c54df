"""A retailCRM simulator: a real HTTP server on loopback that answers like retailCRM's API v5.

For tests, benchmarks and demos. It implements the parts crmroute uses, in
the formats retailCRM's official API clients (``retailcrm/api-client-php``,
``retailcrm/api-client-python``) send and read:

* Authentication: the ``X-API-KEY`` header (or the ``apiKey`` query
  parameter). None: HTTP 400 ``"apiKey" is missing.``; an unknown key: HTTP
  403 ``Wrong "apiKey" value.``; a key without the method among its
  credentials: HTTP 403 ``Access denied.``.
* ``GET /api/credentials``: ``{"success", "credentials", "siteAccess", "sitesAvailable"}``.
* ``GET /api/v5/telephony/manager`` with ``phone`` (required: else HTTP 400
  ``Parameter 'phone' is missing``), ``details`` and ``ignoreStatus`` (0 or
  1): the customer whose phone matches, their responsible manager
  (``id``, ``firstName``, ``lastName``, ``patronymic``, ``email``, ``code``:
  the telephony extension) and, with ``details``, the customer
  (``id``, ``externalId``, names, ``email``, ``phones: [{"number"}]``) and
  ``links``.
* ``GET /api/v5/users`` with ``limit`` (20, 50 or 100, else HTTP 400),
  ``page``, ``filter[active]``, ``filter[isManager]``, ``filter[status]``:
  ``{"success", "pagination": {limit, totalCount, currentPage, totalPageCount}, "users"}``,
  each user with ``status`` (``free``, ``busy``, ``dinner``, ``break``), ``active``, ``online``.
* ``POST /api/v5/telephony/call/event`` with the form field ``event`` (JSON:
  ``phone`` and ``type`` required; ``type`` ``in``, ``out`` or ``hangup``;
  ``codes`` a list; ``hangupStatus`` one of ``answered``, ``busy``,
  ``cancel``, ``failed``, ``no answered``): ``{"success": true}``, with
  ``notExistCodes`` listing codes no user has.
* ``POST /api/v5/telephony/calls/upload`` with the form field ``calls`` (a
  JSON list; each ``date`` ``Y-m-d H:i:s``, ``type`` ``in``/``out``,
  ``phone`` and ``result`` one of ``answered``, ``busy``, ``failed``, ``no
  answer``, ``not allowed``, ``unknown`` required; ``duration`` a
  non-negative integer; ``recordUrl``, when given, an http(s) address, the
  recording retailCRM's call history plays): ``{"success": true, "processedCallsCount",
  "duplicateCalls"}``.
* Errors in retailCRM's shape: ``{"success": false, "errorMsg": ..., "errors": {...}}``.

Choices where retailCRM's documents and clients are silent:

* Phones are compared by their digits (``+7 (916) 123-45-67`` is
  ``79161234567``); country codes and trunk prefixes are not known, so
  ``89161234567`` does not find ``+79161234567``.
* A number no customer has answers ``{"success": true}`` with ``links``
  (``newCustomerLink``, ``newOrderLink``) under ``details`` and nothing else.
* Without ``ignoreStatus=1`` a manager whose status is not ``free`` is left
  out of the answer (the customer still comes back).
* An upload is refused whole (HTTP 400 ``Errors in the entity format``,
  ``errors`` keyed ``calls[i][field]``) when any call in it is invalid;
  ``externalId`` is unique per account: a call whose ``externalId`` was
  stored already is not stored again and is listed in ``duplicateCalls``.
* Past :attr:`RetailCrmSimulator.rate_limit_per_s` requests in one second
  from one key: HTTP 503 ``{"success": false, "errorMsg": "Rate limit exceeded"}``
  with ``Retry-After: 1``.

Control calls (Python, from the test): :meth:`add_user`, :meth:`add_customer`,
:meth:`set_status`, :meth:`fail_next`, :attr:`latency_s` (every request) and
:attr:`path_latency_s`, :meth:`wait_for_events`, :attr:`requests`.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from http_simulator import HttpSimulator
from http_simulator import Reply as _Reply

KEY = "sim-retailcrm-key"
ALL_CREDENTIALS = (
    "/api/telephony/manager",
    "/api/telephony/call/event",
    "/api/telephony/calls/upload",
    "/api/users",
)
USER_STATUSES = ("free", "busy", "dinner", "break")
CALL_RESULTS = ("answered", "busy", "failed", "no answer", "not allowed", "unknown")
EVENT_TYPES = ("in", "out", "hangup")
HANGUP_STATUSES = ("answered", "busy", "cancel", "failed", "no answered")
_DIGITS = re.compile(r"\D")


def digits(text: str) -> str:
    return _DIGITS.sub("", text)


@dataclass
class Request:
    """One request as the simulator saw it (the key is never kept)."""

    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    at: float
    status: int = 0


def _error(status: int, message: str, errors: dict[str, str] | None = None) -> _Reply:
    body: dict[str, Any] = {"success": False, "errorMsg": message}
    if errors:
        body["errors"] = errors
    return _Reply(status, body)


class RetailCrmSimulator(HttpSimulator):
    """One retailCRM account on a free loopback port."""

    thread_name = "retailcrm-simulator"

    def __init__(self, *, rate_limit_per_s: int | None = 10, sites: tuple[str, ...] = ("main",)):
        super().__init__()
        self.rate_limit_per_s = rate_limit_per_s
        self.sites = list(sites)
        # API key -> the methods it may call.
        self.keys: dict[str, list[str]] = {KEY: list(ALL_CREDENTIALS)}
        self.users: dict[int, dict[str, Any]] = {}
        self.customers: dict[int, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []  # stored, in upload order
        self.events: list[dict[str, Any]] = []
        self.uploads: list[list[dict[str, Any]]] = []  # every upload as sent, stored or not
        self.requests: list[Request] = []
        self._recent: dict[str, deque[float]] = defaultdict(deque)

    def retailcrm_config(self, **overrides: Any) -> dict[str, Any]:
        """The ``[retailcrm]`` section that points crmroute at this simulator."""
        return {"url": self.url, "api_key": KEY, "site": self.sites[0], **overrides}

    # -- control ------------------------------------------------------------

    def add_user(self, user_id: int, first: str, last: str = "", *, code: str = "", status: str = "free",
                 email: str = "", active: bool = True, patronymic: str = "") -> None:
        with self._lock:
            self.users[user_id] = {
                "id": user_id, "firstName": first, "lastName": last, "patronymic": patronymic,
                "email": email or f"user{user_id}@example.com", "active": active, "status": status,
                "online": True, "isManager": True, "isAdmin": False, "code": code,
                "createdAt": "2025-01-01 09:00:00", "groups": [],
            }

    def set_status(self, user_id: int, status: str) -> None:
        assert status in USER_STATUSES
        with self._lock:
            self.users[user_id]["status"] = status

    def add_customer(self, customer_id: int, first: str, phones: list[str], *, manager_id: int | None = None,
                     last: str = "", email: str = "") -> None:
        with self._lock:
            self.customers[customer_id] = {
                "id": customer_id, "externalId": str(customer_id), "firstName": first, "lastName": last,
                "email": email, "phones": [{"number": phone} for phone in phones], "managerId": manager_id,
            }

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The call events once ``count`` have arrived (or when ``timeout`` passes)."""
        return self._wait_for(self.events, count, timeout)

    def stored_external_ids(self) -> list[str]:
        with self._lock:
            return [call.get("externalId", "") for call in self.calls]

    # -- serving ------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True) if method == "POST" else {}
        logged = Request(method, parts.path, query, form, time.time())
        with self._lock:
            self.requests.append(logged)
        self._delay(parts.path)
        try:
            reply = self._answer(method, parts.path, query, form, headers)
        except _Reply as answer:
            reply = answer
        logged.status = reply.status
        return reply

    def _answer(self, method: str, path: str, query: dict[str, list[str]], form: dict[str, list[str]], headers: dict[str, str]) -> _Reply:
        key = headers.get("x-api-key") or _one(query, "apiKey")
        if not key:
            raise _error(400, '"apiKey" is missing.')
        if key not in self.keys:
            raise _error(403, 'Wrong "apiKey" value.')
        self._count_rate(key)
        self._raise_fault(path)
        if path == "/api/credentials" and method == "GET":
            access = "access_full" if len(self.sites) <= 1 else "access_selective"
            return _Reply(200, {"success": True, "credentials": list(self.keys[key]), "siteAccess": access, "sitesAvailable": list(self.sites)})
        routes = {
            ("GET", "/api/v5/telephony/manager"): self._manager,
            ("GET", "/api/v5/users"): self._users,
            ("POST", "/api/v5/telephony/call/event"): self._event,
            ("POST", "/api/v5/telephony/calls/upload"): self._upload,
        }
        answer = routes.get((method, path))
        if answer is None:
            raise _error(404, "Not found")
        if "/api/" + path.split("/", 3)[3] not in self.keys[key]:
            raise _error(403, "Access denied.")
        return answer(query if method == "GET" else form)

    def _count_rate(self, key: str) -> None:
        if self.rate_limit_per_s is None:
            return
        now = time.monotonic()
        with self._lock:
            recent = self._recent[key]
            while recent and recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) >= self.rate_limit_per_s:
                raise _Reply(503, {"success": False, "errorMsg": "Rate limit exceeded"}, {"Retry-After": "1"})
            recent.append(now)

    def _manager(self, query: dict[str, list[str]]) -> _Reply:
        phone = _one(query, "phone")
        if not phone:
            raise _error(400, "Parameter 'phone' is missing")
        details = _one(query, "details") in ("1", "true")
        ignore_status = _one(query, "ignoreStatus") in ("1", "true")
        wanted = digits(phone)
        with self._lock:
            customer = next(
                (c for c in self.customers.values() if wanted and any(digits(p["number"]) == wanted for p in c["phones"])), None
            )
            links = {"newOrderLink": f"{self.url}/orders/add?phone={wanted}", "newCustomerLink": f"{self.url}/customers/add?phone={wanted}"}
            if customer is None:
                return _Reply(200, {"success": True, **({"links": links} if details else {})})
            body: dict[str, Any] = {"success": True}
            manager = self.users.get(customer["managerId"]) if customer["managerId"] is not None else None
            if manager is not None and (ignore_status or manager["status"] == "free"):
                body["manager"] = {key: manager[key] for key in ("id", "firstName", "lastName", "patronymic", "email", "code")}
            if details:
                body["customer"] = {key: customer[key] for key in ("id", "externalId", "firstName", "lastName", "email", "phones")}
                body["links"] = {**links, "customerLink": f"{self.url}/customers/{customer['id']}"}
            return _Reply(200, body)

    def _users(self, query: dict[str, list[str]]) -> _Reply:
        limit = _one(query, "limit") or "20"
        if limit not in ("20", "50", "100"):
            raise _error(400, "Errors in the input parameters", {"limit": "The value you selected is not a valid choice."})
        page_text = _one(query, "page") or "1"
        if not page_text.isdigit() or int(page_text) < 1:
            raise _error(400, "Errors in the input parameters", {"page": "This value should be greater than or equal to 1."})
        with self._lock:
            users = [dict(u) for u in sorted(self.users.values(), key=lambda u: u["id"])]
        for name in ("active", "isManager"):
            wanted = _one(query, f"filter[{name}]")
            if wanted in ("0", "1"):
                users = [u for u in users if bool(u[name]) == (wanted == "1")]
        status = _one(query, "filter[status]")
        if status:
            users = [u for u in users if u["status"] == status]
        size, page = int(limit), int(page_text)
        shown = users[(page - 1) * size: page * size]
        for user in shown:
            user.pop("code", None)  # a user's telephony code is in the telephony settings, not here
        pages = max(1, -(-len(users) // size))
        pagination = {"limit": size, "totalCount": len(users), "currentPage": page, "totalPageCount": pages}
        return _Reply(200, {"success": True, "pagination": pagination, "users": shown})

    def _event(self, form: dict[str, list[str]]) -> _Reply:
        event = _json_field(form, "event")
        if not isinstance(event, dict):
            raise _error(400, "Parameter 'event' is missing" if event is None else "Errors in the entity format", None if event is None else {"event": "This value should be an object."})
        errors = _event_errors(event)
        if errors:
            raise _error(400, "Errors in the entity format", errors)
        with self._changed:
            known = {u["code"] for u in self.users.values() if u["code"]}
            missing = [code for code in event.get("codes", []) if code not in known]
            self.events.append({**event, "received_at": time.time()})
            self._changed.notify_all()
        return _Reply(200, {"success": True, **({"notExistCodes": missing} if missing else {})})

    def _upload(self, form: dict[str, list[str]]) -> _Reply:
        calls = _json_field(form, "calls")
        if calls is None:
            raise _error(400, "Parameter 'calls' is missing")
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise _error(400, "Errors in the entity format", {"calls": "This value should be a list of calls."})
        errors = {}
        for index, call in enumerate(calls):
            errors.update({f"calls[{index}][{name}]": text for name, text in _call_errors(call).items()})
        with self._lock:
            self.uploads.append(calls)
        if errors:
            raise _error(400, "Errors in the entity format", errors)
        with self._lock:
            stored = {c.get("externalId") for c in self.calls if c.get("externalId")}
            duplicates = []
            for call in calls:
                external = call.get("externalId")
                if external and external in stored:
                    duplicates.append(external)
                    continue
                self.calls.append(call)
                if external:
                    stored.add(external)
        return _Reply(200, {"success": True, "processedCallsCount": len(calls) - len(duplicates), "duplicateCalls": duplicates})


def _event_errors(event: dict[str, Any]) -> dict[str, str]:
    errors = {}
    if not isinstance(event.get("phone"), str) or not event["phone"]:
        errors["phone"] = "This value should not be blank."
    if event.get("type") not in EVENT_TYPES:
        errors["type"] = "The value you selected is not a valid choice."
    if "codes" in event and not (isinstance(event["codes"], list) and all(isinstance(c, str) for c in event["codes"])):
        errors["codes"] = "This value should be a list of strings."
    if "hangupStatus" in event and event["hangupStatus"] not in HANGUP_STATUSES:
        errors["hangupStatus"] = "The value you selected is not a valid choice."
    return errors


def _call_errors(call: dict[str, Any]) -> dict[str, str]:
    errors = {}
    try:
        datetime.strptime(str(call.get("date", "")), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        errors["date"] = "This value is not a valid datetime."
    if call.get("type") not in ("in", "out"):
        errors["type"] = "The value you selected is not a valid choice."
    if not isinstance(call.get("phone"), str) or not call["phone"]:
        errors["phone"] = "This value should not be blank."
    if call.get("result") not in CALL_RESULTS:
        errors["result"] = "The value you selected is not a valid choice."
    duration = call.get("duration", 0)
    if not isinstance(duration, int) or isinstance(duration, bool) or duration < 0:
        errors["duration"] = "This value should be greater than or equal to 0."
    if "recordUrl" in call and not _is_url(call["recordUrl"]):
        errors["recordUrl"] = "This value is not a valid URL."
    return errors


def _is_url(value: Any) -> bool:
    """An absolute http(s) address, as a URL check accepts it."""
    if not isinstance(value, str) or any(char.isspace() for char in value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _one(values: dict[str, list[str]], name: str) -> str:
    found = values.get(name)
    return found[0] if found else ""


def _json_field(form: dict[str, list[str]], name: str) -> Any:
    text = _one(form, name)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return "not json"
