"""A Zoho CRM simulator: a real HTTP server on loopback that answers like Zoho.

For tests, benchmarks and demos. It implements the parts of Zoho CRM API v8
and of Zoho Accounts that crmroute uses, as Zoho documents them:

* ``POST /oauth/v2/token`` (grant_type ``refresh_token``; credentials in the
  query or the form body): ``{"access_token", "expires_in", "api_domain",
  "token_type"}``; a wrong or revoked refresh token gets HTTP 200 and
  ``{"error": "invalid_code"}``; more than ``max_tokens_per_window`` tokens in
  ``token_window_s`` gets HTTP 400 ``{"error": "Access Denied", ...}``.
* ``GET /crm/v8/{module}/search`` with ``phone``, ``email``, ``word`` or
  ``criteria``; ``converted`` (Leads; default ``false``), ``page``,
  ``per_page`` (at most 200), ``fields``. No match: HTTP 204 and no body.
* ``GET /crm/v8/{module}`` (``fields`` required), ``/{module}/{id}``,
  ``/{module}/{id}/{related}`` (``fields`` required; 204 when empty).
* ``GET /crm/v8/settings/layouts?module=Deals``,
  ``/settings/pipeline?layout_id=`` (stages with their ``forecast_type``),
  ``/users?type=ActiveUsers|AllUsers``.
* ``POST /crm/v8/{module}`` with ``{"data": [...]}``: up to 100 records,
  stored and given ids; each record answered in Zoho's shape
  (``SUCCESS``/``record added``, or ``MANDATORY_NOT_FOUND``/``INVALID_DATA``
  with ``api_name`` and ``json_path``); 201 when all succeed, 207 when some
  do, 400 when none do.
* Errors in Zoho's envelope ``{"code", "details", "message", "status"}``:
  401 ``INVALID_TOKEN`` for an expired or revoked token, 401
  ``OAUTH_SCOPE_MISMATCH``, 429 ``TOO_MANY_REQUESTS`` past
  ``max_concurrency`` requests at once.

Two choices where Zoho's documentation is silent: the phone search compares
numbers with formatting characters (spaces, dashes, dots, parentheses,
slashes) removed, but does not know about country codes (``+34928000000``
does not find ``928000000``); ``phone_match="exact"`` compares the text as
stored instead. ``criteria`` supports ``equals`` (exact, case-insensitive),
``starts_with`` and ``not_equal`` joined by ``and``/``or``.

Tests inject latency and failures (:meth:`ZohoSimulator.add_fault`) and
count requests in :attr:`ZohoSimulator.log`.

Standalone, with demo data (see docs/zoho.md)::

    python -m tests.zoho_simulator --port 8900
"""

from __future__ import annotations

import argparse
from collections import Counter
import itertools
import json
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

API = "/crm/v8"
MODULES = ("Leads", "Contacts", "Accounts", "Deals", "Calls", "Tasks", "Events", "Notes")
PHONE_FIELDS = {
    "Leads": ("Phone", "Mobile"),
    "Contacts": ("Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone"),
    "Accounts": ("Phone",),
}
EMAIL_FIELDS = ("Email", "Secondary_Email")
MANDATORY = {
    "Leads": ("Last_Name",),
    "Contacts": ("Last_Name",),
    "Accounts": ("Account_Name",),
    "Deals": ("Deal_Name", "Stage"),
    "Calls": ("Subject", "Call_Type", "Call_Start_Time"),
    "Tasks": ("Subject",),
}
PICKLISTS = {
    ("Calls", "Call_Type"): ("Outbound", "Inbound", "Missed"),
    ("Tasks", "Status"): ("Not Started", "Deferred", "In Progress", "Completed", "Waiting for input"),
    ("Tasks", "Priority"): ("High", "Highest", "Low", "Lowest", "Normal"),
}
DATETIME_FIELDS = {("Calls", "Call_Start_Time")}
DATE_FIELDS = {("Tasks", "Due_Date")}
# Lookup fields: where they may point.
LOOKUPS = {"Who_Id": ("Contacts", "Leads"), "Contact_Name": ("Contacts",), "Account_Name": ("Accounts",)}
MAX_INSERT = 100
MAX_PER_PAGE = 200
MAX_BODY = 1024 * 1024

STANDARD_STAGES = (
    ("Qualification", "Open"),
    ("Needs Analysis", "Open"),
    ("Value Proposition", "Open"),
    ("Proposal/Price Quote", "Open"),
    ("Negotiation/Review", "Open"),
    ("Closed Won", "Closed Won"),
    ("Closed Lost", "Closed Lost"),
    ("Closed Lost to Competition", "Closed Lost"),
)

_FORMATTING = re.compile(r"[\s().\-/]")
_DURATION = re.compile(r"\d{1,3}:[0-5]\d(:[0-5]\d)?")


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Zoho's error envelope."""
    return {"code": code, "details": details or {}, "message": message, "status": "error"}


DEFAULT_ERRORS = {
    400: envelope("INVALID_DATA", "invalid data"),
    401: envelope("INVALID_TOKEN", "invalid oauth token"),
    403: envelope("NO_PERMISSION", "permission denied"),
    404: envelope("INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"),
    429: envelope("TOO_MANY_REQUESTS", "You have reached the concurrency limit of your edition"),
    500: envelope("INTERNAL_ERROR", "Internal Server Error"),
    502: envelope("INTERNAL_ERROR", "Bad Gateway"),
    503: envelope("INTERNAL_ERROR", "Service Unavailable"),
}


@dataclass
class Fault:
    """An injected misbehaviour for requests whose path matches ``path`` (a regular expression).

    ``body``: a dict (sent as JSON), bytes (sent as is: broken JSON...), or
    None (Zoho's error envelope for ``status``). ``close``: drop the connection
    without answering. ``times``: how many requests it hits (None: all).
    ``after``: the request is served first (an insert stores its records) and
    only its answer is lost: the fault replaces it (the uncertain write).
    ``headers``: sent with the answer (``{"Retry-After": "42"}`` with a 429).
    """

    path: str
    status: int = 500
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    method: str = ""
    times: int | None = None
    close: bool = False
    after: bool = False
    hits: int = 0


class Stall:
    """A CRM that stalls: requests whose path matches ``path`` (a regular
    expression) wait until the test lets them go, all at once or taking turns
    between clients (each client process has its own access token)."""

    def __init__(self, path: str):
        self.path = path
        self._changed = threading.Condition()
        self._waiting: list[tuple[str, threading.Event]] = []
        self._open = False

    def hold(self, client: str) -> None:
        with self._changed:
            if self._open:
                return
            released = threading.Event()
            self._waiting.append((client, released))
            self._changed.notify_all()
        released.wait()

    def waiting(self) -> Counter[str]:
        """Requests held, per client."""
        with self._changed:
            return Counter(client for client, _ in self._waiting)

    def release_taking_turns(self, pause_s: float = 0.001) -> None:
        """Let every request go, one client's then the next's in turn, and stop holding new ones."""
        with self._changed:
            self._open = True
            queues: dict[str, list[threading.Event]] = {}
            for client, released in self._waiting:
                queues.setdefault(client, []).append(released)
            self._waiting = []
        while any(queues.values()):
            for queue in queues.values():
                if queue:
                    queue.pop(0).set()
                    time.sleep(pause_s)


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    raw_query: str
    status: int
    ms: float

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.raw_query, keep_blank_values=True)


class _Reply(Exception):
    """Ends a request with this answer."""

    def __init__(self, status: int, body: dict[str, Any] | bytes | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.body = DEFAULT_ERRORS.get(status, envelope("INTERNAL_ERROR", "error")) if body is None and status >= 400 else body
        self.headers = headers or {}


@dataclass
class _Token:
    expires_at: float
    revoked: bool = False


class ZohoSimulator:
    """The simulator: data, behaviour switches, the server and its request log."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "1000.SIMCLIENTID",
        client_secret: str = "sim-client-secret-0123456789",
        refresh_token: str = "1000.sim-refresh-token.abcdef",
        token_ttl_s: int = 3600,
        max_concurrency: int | None = None,
        latency_s: float = 0.0,
        phone_match: str = "formatting",
        max_tokens_per_window: int = 10,
        token_window_s: float = 600.0,
    ):
        if phone_match not in ("formatting", "exact"):
            raise ValueError("phone_match is 'formatting' or 'exact'")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.token_ttl_s = token_ttl_s
        self.max_concurrency = max_concurrency
        self.latency_s = latency_s
        self.phone_match = phone_match
        self.max_tokens_per_window = max_tokens_per_window
        self.token_window_s = token_window_s
        self.scope_mismatch = False
        self.refresh_token_revoked = False
        self.log: list[LoggedRequest] = []
        self.tokens_issued: list[str] = []
        self.faults: list[Fault] = []
        self.max_in_flight_seen = 0
        # API requests whose path matches it wait until the test lets them go (see Stall).
        self.stall: Stall | None = None
        self._records: dict[str, dict[str, dict[str, Any]]] = {module: {} for module in MODULES}
        self._users: dict[str, dict[str, Any]] = {}
        self._layouts: dict[str, dict[str, Any]] = {}
        self._pipelines: dict[str, list[dict[str, Any]]] = {}
        self._tokens: dict[str, _Token] = {}
        self._mint_times: list[float] = []
        self._ids = itertools.count(5_725_767_000_001_000_001)
        self._lock = threading.RLock()
        self._in_flight = 0
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_layout("Standard", [("Standard", STANDARD_STAGES)])

    # -- life cycle -------------------------------------------------------

    def start(self) -> "ZohoSimulator":
        simulator = self

        class Handler(_Handler):
            sim = simulator

        server = _Server((self.host, self.port), Handler)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="zoho-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut the connections clients keep alive: the CRM is down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "ZohoSimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def zoho_config(self, **overrides: Any) -> dict[str, Any]:
        """The ``[zoho]`` section that points crmroute at this simulator."""
        return {
            "accounts_url": self.url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": self.refresh_token,
            **overrides,
        }

    # -- data -------------------------------------------------------------

    def new_id(self) -> str:
        return str(next(self._ids))

    def add_user(self, full_name: str, email: str, *, status: str = "active", **fields: Any) -> dict[str, Any]:
        with self._lock:
            user = {"id": fields.pop("id", None) or self.new_id(), "full_name": full_name, "email": email, "status": status, **fields}
            self._users[user["id"]] = user
            return user

    def add_record(self, module: str, owner: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Store a record as is (no validation: tests may store what Zoho would hold)."""
        with self._lock:
            record = {"id": fields.pop("id", None) or self.new_id(), **fields}
            if owner is not None:
                record["Owner"] = {"name": owner["full_name"], "id": owner["id"], "email": owner["email"]}
            self._records[module][str(record["id"])] = record
            return record

    def add_layout(self, name: str, pipelines: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> str:
        """A Deals layout and its pipelines: ``[(pipeline name, [(stage, forecast type), ...])]``."""
        with self._lock:
            layout_id = self.new_id()
            self._layouts[layout_id] = {"id": layout_id, "name": name, "status": "active", "api_name": name}
            self._pipelines[layout_id] = [
                {
                    "display_value": pipeline,
                    "actual_value": pipeline,
                    "default": index == 0,
                    "id": self.new_id(),
                    "child_available": False,
                    "parent": None,
                    "maps": [
                        {
                            "display_value": stage,
                            "actual_value": stage,
                            "id": self.new_id(),
                            "sequence_number": number,
                            "forecast_type": forecast,
                            "forecast_category": {"name": "Pipeline" if forecast == "Open" else forecast, "id": self.new_id()},
                            "colour_code": None,
                        }
                        for number, (stage, forecast) in enumerate(stages, start=1)
                    ],
                }
                for index, (pipeline, stages) in enumerate(pipelines)
            ]
            return layout_id

    def records(self, module: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._records[module].values()]

    # -- behaviour --------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as if its hour were up early)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = 0.0

    def revoke_refresh_token(self) -> None:
        with self._lock:
            self.refresh_token_revoked = True
            for token in self._tokens.values():
                token.revoked = True

    def add_fault(self, path: str, status: int = 500, **kwargs: Any) -> Fault:
        fault = Fault(path, status, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # -- observation ------------------------------------------------------

    def requests(self, path_prefix: str = "", method: str = "") -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if r.path.startswith(path_prefix) and (not method or r.method == method)]

    def api_requests(self) -> list[LoggedRequest]:
        """Requests to the CRM API (not the token endpoint)."""
        return self.requests(API)

    def token_requests(self) -> list[LoggedRequest]:
        return self.requests("/oauth/v2/token")

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- request handling (called from the server threads) ---------------

    def handle(self, method: str, path: str, raw_query: str, headers: dict[str, str], body: bytes) -> _Reply:
        query = {key: values[-1] for key, values in parse_qs(raw_query, keep_blank_values=True).items()}
        fault = self._fault_for(method, path)
        if fault is not None and fault.after:
            try:
                self._serve(method, path, query, headers, body)
            except _Reply:
                pass
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.close:
                raise ConnectionAbortedError("fault: connection dropped")
            return _Reply(fault.status, fault.body, fault.headers)
        return self._serve(method, path, query, headers, body)

    def _serve(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> _Reply:
        if path == "/oauth/v2/token" and method == "POST":
            return self._token(query, headers, body)
        if not path.startswith(API + "/"):
            return _Reply(404)
        stall = self.stall
        if stall is not None and re.search(stall.path, path):
            stall.hold(headers.get("authorization", ""))
        if self.latency_s:
            time.sleep(self.latency_s)
        self._authenticate(headers)
        return self._api(method, path[len(API):], query, body)

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (fault.method and fault.method != method) or not re.search(fault.path, path):
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                fault.hits += 1
                return fault
        return None

    def enter(self) -> bool:
        """Count a request in; False when it is over the concurrency limit."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self._in_flight)
            return self.max_concurrency is None or self._in_flight <= self.max_concurrency

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _token(self, query: dict[str, str], headers: dict[str, str], body: bytes) -> _Reply:
        params = dict(query)
        if "application/x-www-form-urlencoded" in headers.get("content-type", ""):
            params.update({key: values[-1] for key, values in parse_qs(body.decode("utf-8", "replace")).items()})
        if params.get("grant_type") != "refresh_token":
            return _Reply(200, {"error": "unsupported_grant_type"})
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            return _Reply(200, {"error": "invalid_client"})
        if params.get("refresh_token") != self.refresh_token or self.refresh_token_revoked:
            return _Reply(200, {"error": "invalid_code"})
        now = time.monotonic()
        with self._lock:
            self._mint_times = [t for t in self._mint_times if now - t < self.token_window_s]
            if len(self._mint_times) >= self.max_tokens_per_window:
                return _Reply(400, {
                    "error_description": "You have made too many requests continuously. Please try again after some time.",
                    "error": "Access Denied",
                    "status": "failure",
                })
            self._mint_times.append(now)
            token = "1000." + secrets.token_hex(16) + "." + secrets.token_hex(16)
            self._tokens[token] = _Token(now + self.token_ttl_s)
            self.tokens_issued.append(token)
        return _Reply(200, {
            "access_token": token,
            "scope": "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.users.READ ZohoSearch.securesearch.READ",
            "api_domain": self.url,
            "token_type": "Bearer",
            "expires_in": self.token_ttl_s,
        })

    def _authenticate(self, headers: dict[str, str]) -> None:
        header = headers.get("authorization", "")
        if not header.startswith("Zoho-oauthtoken "):
            raise _Reply(401, envelope("AUTHENTICATION_FAILURE", "Authentication failed"))
        with self._lock:
            token = self._tokens.get(header[len("Zoho-oauthtoken "):])
            valid = token is not None and not token.revoked and time.monotonic() < token.expires_at
        if not valid:
            raise _Reply(401, envelope("INVALID_TOKEN", "invalid oauth token"))
        if self.scope_mismatch:
            raise _Reply(401, envelope("OAUTH_SCOPE_MISMATCH", "Unauthorized"))

    def _api(self, method: str, path: str, query: dict[str, str], body: bytes) -> _Reply:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        with self._lock:
            if method == "GET" and parts == ["users"]:
                return self._list_users(query)
            if method == "GET" and parts == ["settings", "layouts"]:
                return self._layouts_of(query)
            if method == "GET" and parts == ["settings", "pipeline"]:
                return self._pipeline(query)
            module = parts[0]
            if module not in MODULES:
                return _Reply(400, envelope("INVALID_MODULE", "the module name given seems to be invalid", {"resource_path_index": 0}))
            if method == "GET" and len(parts) == 2 and parts[1] == "search":
                return self._search(module, query)
            if method == "GET" and len(parts) == 1:
                return self._list(module, query)
            if method == "GET" and len(parts) == 2:
                record = self._records[module].get(parts[1])
                return _Reply(204) if record is None else _Reply(200, {"data": [_project(record, query.get("fields"))]})
            if method == "GET" and len(parts) == 3:
                return self._related(module, parts[1], parts[2], query)
            if method == "POST" and len(parts) == 1:
                return self._insert(module, body)
        return _Reply(404)

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], key: str = "data") -> _Reply:
        try:
            page = int(query.get("page", "1"))
            per_page = int(query.get("per_page", str(MAX_PER_PAGE)))
        except ValueError:
            return _Reply(400, envelope("INVALID_DATA", "invalid data", {"param": "page"}))
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            return _Reply(400, envelope("INVALID_DATA", "invalid data", {"param": "per_page", "maximum": MAX_PER_PAGE}))
        chunk = items[(page - 1) * per_page: page * per_page]
        if not chunk:
            return _Reply(204)
        info = {"per_page": per_page, "count": len(chunk), "page": page, "more_records": page * per_page < len(items)}
        return _Reply(200, {key: [_project(item, query.get("fields")) for item in chunk], "info": info})

    def _search(self, module: str, query: dict[str, str]) -> _Reply:
        records = list(self._records[module].values())
        if module == "Leads":
            converted = query.get("converted", "false")
            if converted != "both":
                records = [r for r in records if bool(r.get("$converted")) == (converted == "true")]
        # Zoho uses one of them, in this order of preference.
        if "criteria" in query:
            try:
                matcher = _Criteria(query["criteria"]).parse()
            except ValueError as exc:
                return _Reply(400, envelope("INVALID_QUERY", "invalid query formed", {"reason": str(exc)}))
            found = [r for r in records if matcher(r)]
        elif "email" in query:
            wanted = query["email"].casefold()
            found = [r for r in records if any(str(r.get(f, "")).casefold() == wanted for f in EMAIL_FIELDS)]
        elif "phone" in query:
            wanted = self._phone_key(query["phone"])
            found = [r for r in records if wanted and any(self._phone_key(str(r.get(f) or "")) == wanted for f in PHONE_FIELDS.get(module, ()))]
        elif "word" in query:
            word = query["word"].casefold()
            found = [r for r in records if any(isinstance(v, str) and word in v.casefold() for v in r.values())]
        else:
            return _Reply(400, envelope("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param": "criteria"}))
        return self._page(found, query)

    def _phone_key(self, value: str) -> str:
        return value.strip() if self.phone_match == "exact" else _FORMATTING.sub("", value)

    def _list(self, module: str, query: dict[str, str]) -> _Reply:
        if not query.get("fields"):
            return _Reply(400, envelope("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param": "fields"}))
        return self._page(list(self._records[module].values()), query)

    def _related(self, module: str, record_id: str, related: str, query: dict[str, str]) -> _Reply:
        if record_id not in self._records[module]:
            return _Reply(400, envelope("INVALID_DATA", "the related id given seems to be invalid", {"resource_path_index": 1}))
        if related not in MODULES:
            return _Reply(400, envelope("INVALID_DATA", "the relation name given seems to be invalid", {"resource_path_index": 2}))
        if not query.get("fields"):
            return _Reply(400, envelope("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param": "fields"}))
        children = [r for r in self._records[related].values() if any(isinstance(v, dict) and str(v.get("id")) == record_id for v in r.values())]
        return self._page(children, query)

    def _list_users(self, query: dict[str, str]) -> _Reply:
        kind = query.get("type", "AllUsers")
        users = list(self._users.values())
        if kind == "ActiveUsers":
            users = [u for u in users if u.get("status") == "active"]
        elif kind == "DeactiveUsers":
            users = [u for u in users if u.get("status") != "active"]
        elif kind != "AllUsers":
            return _Reply(400, envelope("INVALID_DATA", "invalid data", {"param": "type"}))
        return self._page(users, query, key="users")

    def _layouts_of(self, query: dict[str, str]) -> _Reply:
        if not query.get("module"):
            return _Reply(400, envelope("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param": "module"}))
        if query["module"] != "Deals":
            return _Reply(200, {"layouts": [{"id": "1", "name": "Standard", "status": "active"}]})
        return _Reply(200, {"layouts": list(self._layouts.values())})

    def _pipeline(self, query: dict[str, str]) -> _Reply:
        layout_id = query.get("layout_id")
        if not layout_id:
            return _Reply(400, envelope("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param": "layout_id"}))
        if layout_id not in self._pipelines:
            return _Reply(400, envelope("INVALID_DATA", "invalid data", {"param": "layout_id"}))
        return _Reply(200, {"pipeline": self._pipelines[layout_id]})

    def _insert(self, module: str, body: bytes) -> _Reply:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _Reply(400, envelope("INVALID_DATA", "the input data is not a valid JSON", {}))
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return _Reply(400, envelope("MANDATORY_NOT_FOUND", "required field not found", {"api_name": "data", "json_path": "$.data"}))
        if len(data) > MAX_INSERT:
            return _Reply(400, envelope("LIMIT_EXCEEDED", "the data limit exceeded", {"limit": MAX_INSERT}))
        answers = [self._insert_one(module, index, record) for index, record in enumerate(data)]
        ok = sum(1 for answer in answers if answer["status"] == "success")
        status = 201 if ok == len(answers) and answers else 400 if ok == 0 else 207
        return _Reply(status, {"data": answers})

    def _insert_one(self, module: str, index: int, record: Any) -> dict[str, Any]:
        where = f"$.data[{index}]"
        if not isinstance(record, dict):
            return envelope("INVALID_DATA", "invalid data", {"api_name": "data", "json_path": where})
        for name in MANDATORY.get(module, ()):
            if record.get(name) in (None, ""):
                return envelope("MANDATORY_NOT_FOUND", "required field not found", {"api_name": name, "json_path": f"{where}.{name}"})
        for name, value in record.items():
            problem = self._field_problem(module, name, value, record)
            if problem:
                return envelope("INVALID_DATA", "invalid data", {"api_name": name, "json_path": f"{where}.{name}", **problem})
        stored = {key: value for key, value in record.items() if key != "id"}
        now = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
        creator = next(iter(self._users.values()), {"full_name": "Simulator", "id": "1", "email": "sim@example.com"})
        by = {"name": creator["full_name"], "id": creator["id"]}
        record_id = self.new_id()
        stored.update({"id": record_id, "Created_Time": now, "Modified_Time": now, "Created_By": by, "Modified_By": by})
        stored.setdefault("Owner", {**by, "email": creator["email"]})
        self._records[module][record_id] = stored
        details = {"Modified_Time": now, "Modified_By": by, "Created_Time": now, "id": record_id, "Created_By": by}
        return {"code": "SUCCESS", "details": details, "message": "record added", "status": "success"}

    def _field_problem(self, module: str, name: str, value: Any, record: dict[str, Any]) -> dict[str, Any] | None:
        if (module, name) in PICKLISTS:
            if value not in PICKLISTS[(module, name)]:
                return {"expected_data_type": "picklist"}
        elif (module, name) in DATETIME_FIELDS:
            if not isinstance(value, str) or not _is_datetime(value):
                return {"expected_data_type": "datetime"}
        elif (module, name) in DATE_FIELDS:
            if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                return {"expected_data_type": "date"}
        elif name == "Call_Duration":
            if not isinstance(value, str) or not _DURATION.fullmatch(value):
                return {"expected_data_type": "text"}
        elif name == "Owner":
            if not isinstance(value, dict) or str(value.get("id")) not in self._users:
                return {"expected_data_type": "lookup"}
        elif name == "What_Id":
            target = record.get("$se_module")
            if not isinstance(value, dict) or target not in MODULES or str(value.get("id")) not in self._records[target]:
                return {"expected_data_type": "lookup"}
        elif name in LOOKUPS:
            if not isinstance(value, dict) or not any(str(value.get("id")) in self._records[m] for m in LOOKUPS[name]):
                return {"expected_data_type": "lookup"}
        elif name == "$se_module":
            if value not in MODULES:
                return {"expected_data_type": "text"}
        elif isinstance(value, str) and len(value) > 32_000:
            return {"maximum_length": 32_000}
        return None


def _project(record: dict[str, Any], fields: str | None) -> dict[str, Any]:
    if not fields:
        return dict(record)
    wanted = {name.strip() for name in fields.split(",")}
    return {key: value for key, value in record.items() if key == "id" or key in wanted}


def _is_datetime(value: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}([+-]\d{2}:\d{2}|Z)", value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class _Criteria:
    """``((A:equals:x)and(B:starts_with:y))`` -> a predicate. ``\\`` escapes ``( ) , :`` in values."""

    OPERATORS = ("equals", "starts_with", "not_equal")

    def __init__(self, text: str):
        self.text = text
        self.at = 0

    def parse(self):
        predicate = self._expression()
        if self.at != len(self.text):
            raise ValueError(f"unexpected text at {self.at}")
        return predicate

    def _expression(self):
        terms = [self._term()]
        joins = []
        while self.text.startswith("and", self.at) or self.text.startswith("or", self.at):
            join = "and" if self.text.startswith("and", self.at) else "or"
            self.at += len(join)
            joins.append(join)
            terms.append(self._term())
        if len(terms) > 10:
            raise ValueError("more than 10 conditions")

        def predicate(record: dict[str, Any]) -> bool:
            result = terms[0](record)
            for join, term in zip(joins, terms[1:]):
                result = (result and term(record)) if join == "and" else (result or term(record))
            return result

        return predicate

    def _term(self):
        self._skip_spaces()
        if not self.text.startswith("(", self.at):
            raise ValueError(f"expected ( at {self.at}")
        self.at += 1
        self._skip_spaces()
        if self.text.startswith("(", self.at):
            inner = self._expression()
        else:
            inner = self._condition()
        self._skip_spaces()
        if not self.text.startswith(")", self.at):
            raise ValueError(f"expected ) at {self.at}")
        self.at += 1
        self._skip_spaces()
        return inner

    def _condition(self):
        field_name, operator, value = self._part(), None, None
        operator = self._part()
        value = self._part(last=True)
        if operator not in self.OPERATORS:
            raise ValueError(f"unsupported operator {operator!r}")
        wanted = value.casefold()

        def predicate(record: dict[str, Any]) -> bool:
            actual: Any = record
            for step in field_name.split("."):
                actual = actual.get(step) if isinstance(actual, dict) else None
            text = "" if actual is None else str(actual).casefold()
            if operator == "equals":
                return text == wanted
            if operator == "not_equal":
                return text != wanted
            return text.startswith(wanted)

        return predicate

    def _part(self, last: bool = False) -> str:
        out = []
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and self.at + 1 < len(self.text):
                out.append(self.text[self.at + 1])
                self.at += 2
                continue
            if char == ")" or (char == ":" and not last):
                break
            out.append(char)
            self.at += 1
        if not last:
            if not self.text.startswith(":", self.at):
                raise ValueError(f"expected : at {self.at}")
            self.at += 1
        return "".join(out).strip()

    def _skip_spaces(self) -> None:
        while self.at < len(self.text) and self.text[self.at] == " ":
            self.at += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A connection cut by stop() or by the client is part of the script, not news.
        if not isinstance(sys.exc_info()[1], (OSError, ValueError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    sim: ZohoSimulator
    protocol_version = "HTTP/1.1"
    server_version = "ZohoSimulator"
    # Headers and body leave in one segment (the base class flushes after each request).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass

    def setup(self) -> None:
        super().setup()
        with self.sim._lock:
            self.sim._connections.add(self.connection)

    def finish(self) -> None:
        with self.sim._lock:
            self.sim._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        started = time.perf_counter()
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self._write(_Reply(413, envelope("INVALID_DATA", "request body too large")), method, parts, started)
            return
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        counted = parts.path.startswith(API)
        admitted = self.sim.enter() if counted else True
        try:
            if not admitted:
                reply = _Reply(429)
            else:
                try:
                    reply = self.sim.handle(method, parts.path, parts.query, headers, body)
                except _Reply as answer:
                    reply = answer
        except ConnectionAbortedError:
            self.close_connection = True
            self._record(method, parts, 0, started)
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        finally:
            if counted:
                self.sim.leave()
        self._write(reply, method, parts, started)

    def _write(self, reply: _Reply, method: str, parts: Any, started: float) -> None:
        payload = b""
        if isinstance(reply.body, bytes):
            payload = reply.body
        elif reply.body is not None:
            payload = json.dumps(reply.body).encode("utf-8")
        self._record(method, parts, reply.status, started)
        try:
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if reply.status != 204:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if reply.status != 204:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _record(self, method: str, parts: Any, status: int, started: float) -> None:
        with self.sim._lock:
            self.sim.log.append(LoggedRequest(method, parts.path, parts.query, status, (time.perf_counter() - started) * 1000))


def load_demo_data(sim: ZohoSimulator) -> None:
    """A small org: the numbers of the local demo directory, stored the way people type them."""
    ana = sim.add_user("Ana García", "ana.garcia@example.com", Extension="101")
    beatriz = sim.add_user("Beatriz Soto", "beatriz.soto@example.com", Extension="102")
    carlos = sim.add_user("Carlos Díaz", "carlos.diaz@example.com", Extension="103")
    dolores = sim.add_user("Dolores Vega", "dolores.vega@example.com")
    sim.add_user("Former Rep", "former@example.com", status="disabled", Extension="199")
    sim.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone="928 00 00 00", Lead_Status="Contacted")
    sim.add_record("Leads", beatriz, Full_Name="Old Prospect", Last_Name="Prospect", Phone="928000001", Lead_Status="Junk Lead")
    sim.add_record("Contacts", carlos, Full_Name="Pedro Gil", Last_Name="Gil", Mobile="+34-928-000-001")
    lucia = sim.add_record("Contacts", carlos, Full_Name="Lucía Romero", Last_Name="Romero", Phone="0034928000002")
    sim.add_record("Deals", beatriz, Deal_Name="Ampliación oficinas", Stage="Negotiation/Review", Contact_Name={"name": "Lucía Romero", "id": lucia["id"]})
    sim.add_record("Deals", ana, Deal_Name="Renovación 2023", Stage="Closed Won", Contact_Name={"name": "Lucía Romero", "id": lucia["id"]})
    sim.add_record("Accounts", dolores, Account_Name="Hotel Las Palmas", Phone="+34 928 00 00 04")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Zoho CRM simulator on loopback, with demo data.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only makes sense)")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay every CRM API answer by this much")
    parser.add_argument("--token-ttl-s", type=int, default=3600)
    parser.add_argument("--max-concurrency", type=int, default=None, help="answer 429 past this many requests at once")
    parser.add_argument("--no-demo-data", action="store_true")
    args = parser.parse_args(argv)
    sim = ZohoSimulator(host=args.host, port=args.port, latency_s=args.latency_ms / 1000, token_ttl_s=args.token_ttl_s, max_concurrency=args.max_concurrency)
    if not args.no_demo_data:
        load_demo_data(sim)
    sim.start()
    config = sim.zoho_config(user_extension_field="Extension")
    print(f"Zoho CRM simulator on {sim.url}. A crmroute.toml to use it:\n")
    print('[crm]\nbackend = "zoho"\n\n[routing]\ndefault_region = "ES"\n\n[zoho]')
    for key, value in config.items():
        print(f'{key} = "{value}"')
    print("\nCtrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
