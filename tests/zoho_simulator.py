"""A Zoho CRM simulator: a real HTTP server on loopback that answers like Zoho.

For tests, benchmarks and demos. It implements the parts of Zoho CRM API v8
and of Zoho Accounts that crmroute uses, as Zoho documents them:

* ``POST /oauth/v2/token`` (grant_type ``refresh_token``; credentials in the
  query or the form body): ``{"access_token", "expires_in", "api_domain",
  "token_type", "scope"}``; a wrong or revoked refresh token gets HTTP 200 and
  ``{"error": "invalid_code"}``; more than ``max_tokens_per_window`` tokens in
  ``token_window_s`` gets HTTP 400 ``{"error": "Access Denied", ...}``. A token
  carries the scopes of :attr:`ZohoSimulator.granted_scopes` when it was
  minted, and keeps them when that attribute changes later.
* ``GET /crm/v8/{module}`` (Get Records): ``fields`` (required, at most 50),
  ``per_page`` (at most 200), ``page`` (1 to 10, at most 2,000 records without
  a token), ``page_token`` (from ``info.next_page_token``; bound to the other
  parameters and to ``If-Modified-Since``; valid 24 hours; at most 100,000
  records through tokens), ``sort_by`` (``id``, ``Created_Time``,
  ``Modified_Time``; default ``id``), ``sort_order`` (default ``desc``),
  ``converted`` (Leads: ``false`` by default, ``true``, ``both``), header
  ``If-Modified-Since`` (only records modified strictly later; none: HTTP 304).
  Errors ``LIMIT_EXCEEDED``, ``DISCRETE_PAGINATION_LIMIT_EXCEEDED``,
  ``AMBIGUITY_DURING_PROCESSING``, ``TOKEN_BOUND_DATA_MISMATCH``,
  ``INVALID_DATA`` (unknown token), ``EXPIRED_VALUE``,
  ``PAGINATION_LIMIT_EXCEEDED``. No record at all: HTTP 204.
* ``GET /crm/v8/{module}/deleted``: ``type`` ``all``/``recycle``/``permanent``
  (else ``PATTERN_NOT_MATCHED``), ``page``, ``per_page``, ``If-Modified-Since``
  (deleted after it); nothing: HTTP 204.
* ``GET /crm/v8/{module}/search`` with ``phone``, ``email``, ``word`` or
  ``criteria`` (``equals``, ``not_equal``, ``starts_with``, ``in``; at most 10
  conditions); ``converted`` (Leads), ``page``, ``per_page``, ``fields``; at most
  2,000 records (``LIMIT_REACHED``). No match: HTTP 204 and no body.
* ``POST /crm/v8/coql`` with ``{"select_query": ...}``: columns, dotted lookup
  paths (at most two relations), ``where`` (mandatory) with ``=``, ``!=``,
  ``<``, ``<=``, ``>``, ``>=``, ``[not] in``, ``[not] like``, ``[not] between``,
  ``is [not] null`` joined by ``and``/``or`` two at a time (Zoho's brackets
  rule), ``order by``, ``limit N``, ``limit O, N``, ``offset O``. Errors
  ``SYNTAX_ERROR``, ``INVALID_QUERY``, ``LIMIT_EXCEEDED``, ``DUPLICATE_DATA``.
* ``GET /crm/v8/{module}/{id}``, ``/{module}/{id}/{related}`` (``fields``
  required; 204 when empty); ``GET /crm/v8/settings/fields?module=``
  (``{"fields": [...]}``, custom phone fields included),
  ``/settings/layouts?module=Deals``, ``/settings/pipeline?layout_id=`` (stages
  with their ``forecast_type``), ``/users`` (``type`` ``AllUsers``,
  ``ActiveUsers``, ``DeactiveUsers``, ``DeletedUsers``; ``If-Modified-Since``).
* ``POST /crm/v8/{module}`` with ``{"data": [...]}``: up to 100 records,
  stored and given ids; each record answered in Zoho's shape
  (``SUCCESS``/``record added``, or ``MANDATORY_NOT_FOUND``/``INVALID_DATA``
  with ``api_name`` and ``json_path``); 201 when all succeed, 207 when some
  do, 400 when none do.
* ``PUT /crm/v8/{module}/{id}`` with ``{"data": [{...}]}``: the record's
  fields updated, answered like an insert (``SUCCESS``/``record updated``;
  ``INVALID_DATA`` for an unknown id or a bad value).
* ``POST /crm/v8/{module}/{id}/Attachments``, ``multipart/form-data`` with the
  file in the part ``file``: stored on the record, answered 200 with
  ``{"data": [{"code": "SUCCESS", "details": {"id", ...}, "message":
  "attachment uploaded successfully", "status": "success"}]}``; a file over
  :attr:`ZohoSimulator.attachment_limit_bytes` (20 MB, as Zoho's help on record
  attachments says) is a 413 ``FILE_SIZE_MORE_THAN_ALLOWED_SIZE``; a body that
  is not multipart, or has no ``file`` part, a 400 ``MANDATORY_NOT_FOUND``; an
  unknown record a 400 ``INVALID_DATA`` (``resource_path_index`` 1).
  ``GET /crm/v8/{module}/{id}/Attachments`` (``fields`` required) lists them
  (``id``, ``File_Name``, ``Size``, ``Created_Time``), 204 when there is none.
* Errors in Zoho's envelope ``{"code", "details", "message", "status"}``:
  401 ``INVALID_TOKEN`` for an expired or revoked token, 401
  ``OAUTH_SCOPE_MISMATCH`` when the token lacks the endpoint's documented
  scope (or :attr:`ZohoSimulator.scope_mismatch` is set), 429
  ``TOO_MANY_REQUESTS`` past ``max_concurrency`` requests at once.
* API credits (:attr:`ZohoSimulator.credits_used`, :meth:`credits_by_path`):
  one per CRM API request whatever its answer, except 429 and requests refused
  for their token or scope; a COQL query by its LIMIT (1-200: 1, 201-1000: 2,
  1001-2000: 3). Token requests cost nothing.

Choices where Zoho's documentation is silent:

* Phone numbers are compared with formatting characters (spaces, dashes,
  dots, parentheses, slashes) removed, but country codes are not known
  (``+34928000000`` does not find ``928000000``); ``phone_match="exact"``
  compares the text as stored instead. This holds for the ``phone=`` search
  (every phone field of the module, custom ones included), for ``equals``,
  ``not_equal`` and ``in`` on a phone field in ``criteria``, and for ``=``,
  ``!=``, ``in`` and ``not in`` on a phone field in COQL, directly or through
  a lookup (``Contact_Name.Phone``).
* ``criteria``: ``equals`` is exact and case-insensitive on other fields (real
  Zoho matches longer values too when conditions are joined); ``and``/``or``
  apply left to right; ``in`` takes at most 100 values (else
  ``INVALID_QUERY``); values are split on unescaped commas.
* COQL: text comparisons and ``like`` are case-insensitive; a missing, null or
  empty field never matches ``=``, ``in``, ``like`` or a range, and always
  matches their negations. Leads converted are left out of a query on Leads
  unless its condition names ``Converted__s``. The limits are those of the
  COQL reference page (at most 50 columns, 50 values in ``in``, LIMIT 2000,
  OFFSET + LIMIT 10,000, 25 conditions); newer pages allow more, so a client
  within these works on both. A lookup column comes back as ``{"name", "id"}``
  (the display name, as the page says Zoho does from v7; ``last_name`` for
  users), or ``{"id"}`` alone with ``coql_lookup_names = False``; joined
  columns as flat keys (``"Contact_Name.Phone"``). An unknown module is
  ``INVALID_QUERY``; a column is known when the field metadata lists it or a
  stored record has it. A query with more than two conditions at one bracket
  level (``A and B or C``, ``A and B and C``) is a ``SYNTAX_ERROR``, as Zoho
  asks for ``(A and B) or C``.
* Get Records: a page token's listing is a snapshot of the matching ids taken
  by the request that made the first token (records changed later show their
  current fields; deleted ones drop out of their page). ``info.page`` counts
  pages from the start of the listing. A malformed ``If-Modified-Since`` is a
  400 ``INVALID_DATA``; so are a bad ``sort_by``, ``sort_order``,
  ``converted``, ``page`` or ``per_page``. Requested fields a record lacks come
  back as null. The newest 64 listings and 200,000 tokens are kept; an older
  token is answered as expired (its listing) or unknown (the token).
* Deleted records: entries come newest first; a permanent deletion keeps only
  the id, type and time (``display_name``, ``deleted_by`` and ``created_by``
  null), as in the documentation's sample.
* Users: ``DeactiveUsers`` are the ``disabled`` (or ``inactive``) ones,
  ``DeletedUsers`` the ``deleted`` ones; other documented types are refused.
* Times are ISO 8601 at second resolution with the offset of
  :attr:`ZohoSimulator.now` (the local zone by default).
* Duplicate select columns are a 400 ``DUPLICATE_DATA`` (one line of the
  reference says 401); an ``OAUTH_SCOPE_MISMATCH`` lists the scopes that would
  have done in ``details.permissions``; ``GET /coql`` is a 400
  ``INVALID_REQUEST_METHOD``.
* :meth:`ZohoSimulator.latency_for` delays matching requests, the token
  endpoint included, on top of ``latency_s`` (which only CRM API requests
  wait); several matching delays add up.

Tests inject failures (:meth:`ZohoSimulator.add_fault`) and delays that keep
the answer (:meth:`ZohoSimulator.latency_for`), change data while the server
runs (:meth:`update_record`, :meth:`delete_record`, :meth:`convert_lead`,
:meth:`update_user`, :meth:`add_phone_field`) and count requests in
:attr:`ZohoSimulator.log`.

Standalone, with demo data (see docs/zoho.md)::

    python -m tests.zoho_simulator --port 8900
    python -m tests.zoho_simulator --records 100000    # a large generated org
"""

from __future__ import annotations

import argparse
import collections
import functools
from collections import Counter
import itertools
import json
import random
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

API = "/crm/v8"
MODULES = ("Leads", "Contacts", "Accounts", "Deals", "Calls", "Tasks", "Events", "Notes")
USERS = "users"  # lookup target of Owner, Created_By and Modified_By
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
MAX_INSERT = 100
MAX_PER_PAGE = 200
# Get Records by ``ids``: at most this many in one request.
MAX_IDS_PARAM = 100
MAX_BODY = 1024 * 1024
ATTACHMENT_LIMIT = 20 * 1024 * 1024
# Multipart framing around an attachment (boundaries, part headers), at most.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FIELDS_PARAM = 50
DISCRETE_MAX_PAGE = 10
DISCRETE_MAX_RECORDS = 2000
SEARCH_MAX_RECORDS = 2000
CRITERIA_MAX_CONDITIONS = 10
CRITERIA_MAX_IN_VALUES = 100
PAGE_TOKEN_TTL_S = 24 * 3600
MAX_LISTED_RECORDS = 100_000
KEPT_LISTINGS = 64
KEPT_PAGE_TOKENS = 200_000
COQL_DEFAULT_LIMIT = 200
COQL_MAX_LIMIT = 2000
COQL_MAX_ROWS = 10_000
COQL_MAX_COLUMNS = 50
COQL_MAX_IN_VALUES = 50
COQL_MAX_CONDITIONS = 25
COQL_MAX_RELATIONS = 2
COQL_MAX_ORDER_FIELDS = 10
MAX_BRACKET_DEPTH = 50  # deeper nesting is refused before it can exhaust the parser's stack
DEFAULT_SCOPES = "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.users.READ ZohoSearch.securesearch.READ ZohoCRM.coql.READ"

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
LEAD_STATUSES = (
    "Attempted to Contact", "Contact in Future", "Contacted", "Junk Lead",
    "Lost Lead", "Not Contacted", "Pre-Qualified", "Not Qualified",
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


# -- field metadata ---------------------------------------------------------

# (api_name, label, data type[, lookup targets]) per module, before the system
# fields every module has. Labels and types as Zoho's field metadata gives them.
_Spec = tuple
_SYSTEM_FIELDS: tuple[_Spec, ...] = (
    ("Created_By", "Created By", "ownerlookup", (USERS,)),
    ("Modified_By", "Modified By", "ownerlookup", (USERS,)),
    ("Created_Time", "Created Time", "datetime"),
    ("Modified_Time", "Modified Time", "datetime"),
    ("id", "Record Id", "bigint"),
)
_PERSON_FIELDS: tuple[_Spec, ...] = (
    ("First_Name", "First Name", "text"),
    ("Last_Name", "Last Name", "text"),
    ("Full_Name", "Full Name", "text"),
    ("Email", "Email", "email"),
    ("Secondary_Email", "Secondary Email", "email"),
)
STANDARD_FIELDS: dict[str, tuple[_Spec, ...]] = {
    "Leads": (
        ("Owner", "Lead Owner", "ownerlookup", (USERS,)),
        ("Company", "Company", "text"),
        *_PERSON_FIELDS,
        ("Designation", "Title", "text"),
        ("Phone", "Phone", "phone"),
        ("Mobile", "Mobile", "phone"),
        ("Fax", "Fax", "text"),
        ("Website", "Website", "website"),
        ("Lead_Source", "Lead Source", "picklist"),
        ("Lead_Status", "Lead Status", "picklist"),
        ("Industry", "Industry", "picklist"),
        ("Description", "Description", "textarea"),
        ("Converted__s", "Is Converted", "boolean"),
        ("Converted_Date_Time", "Converted Date Time", "datetime"),
        ("Converted_Account", "Converted Account", "lookup", ("Accounts",)),
        ("Converted_Contact", "Converted Contact", "lookup", ("Contacts",)),
        ("Converted_Deal", "Converted Deal", "lookup", ("Deals",)),
    ),
    "Contacts": (
        ("Owner", "Contact Owner", "ownerlookup", (USERS,)),
        *_PERSON_FIELDS,
        ("Account_Name", "Account Name", "lookup", ("Accounts",)),
        ("Phone", "Phone", "phone"),
        ("Mobile", "Mobile", "phone"),
        ("Home_Phone", "Home Phone", "phone"),
        ("Other_Phone", "Other Phone", "phone"),
        ("Asst_Phone", "Asst Phone", "phone"),
        ("Assistant", "Assistant", "text"),
        ("Title", "Title", "text"),
        ("Department", "Department", "text"),
        ("Fax", "Fax", "text"),
        ("Lead_Source", "Lead Source", "picklist"),
        ("Description", "Description", "textarea"),
    ),
    "Accounts": (
        ("Owner", "Account Owner", "ownerlookup", (USERS,)),
        ("Account_Name", "Account Name", "text"),
        ("Parent_Account", "Parent Account", "lookup", ("Accounts",)),
        ("Phone", "Phone", "phone"),
        ("Fax", "Fax", "text"),
        ("Website", "Website", "website"),
        ("Account_Type", "Account Type", "picklist"),
        ("Industry", "Industry", "picklist"),
        ("Description", "Description", "textarea"),
    ),
    "Deals": (
        ("Owner", "Deal Owner", "ownerlookup", (USERS,)),
        ("Deal_Name", "Deal Name", "text"),
        ("Account_Name", "Account Name", "lookup", ("Accounts",)),
        ("Contact_Name", "Contact Name", "lookup", ("Contacts",)),
        ("Stage", "Stage", "picklist"),
        ("Pipeline", "Pipeline", "picklist"),
        ("Amount", "Amount", "currency"),
        ("Closing_Date", "Closing Date", "date"),
        ("Probability", "Probability (%)", "integer"),
        ("Type", "Type", "picklist"),
        ("Lead_Source", "Lead Source", "picklist"),
        ("Description", "Description", "textarea"),
    ),
    "Calls": (
        ("Owner", "Call Owner", "ownerlookup", (USERS,)),
        ("Subject", "Subject", "text"),
        ("Call_Type", "Call Type", "picklist"),
        ("Call_Start_Time", "Call Start Time", "datetime"),
        ("Call_Duration", "Call Duration", "text"),
        ("Who_Id", "Contact Name", "lookup", ("Contacts", "Leads")),
        ("What_Id", "Related To", "lookup", ("Deals", "Accounts", "Leads", "Contacts")),
        ("Description", "Description", "textarea"),
    ),
    "Tasks": (
        ("Owner", "Task Owner", "ownerlookup", (USERS,)),
        ("Subject", "Subject", "text"),
        ("Due_Date", "Due Date", "date"),
        ("Status", "Status", "picklist"),
        ("Priority", "Priority", "picklist"),
        ("Who_Id", "Contact Name", "lookup", ("Contacts", "Leads")),
        ("What_Id", "Related To", "lookup", ("Deals", "Accounts", "Leads", "Contacts")),
        ("Description", "Description", "textarea"),
    ),
    "Events": (
        ("Owner", "Host", "ownerlookup", (USERS,)),
        ("Event_Title", "Title", "text"),
        ("Start_DateTime", "From", "datetime"),
        ("End_DateTime", "To", "datetime"),
        ("Who_Id", "Contact Name", "lookup", ("Contacts", "Leads")),
        ("What_Id", "Related To", "lookup", ("Deals", "Accounts", "Leads", "Contacts")),
        ("Description", "Description", "textarea"),
    ),
    "Notes": (
        ("Owner", "Note Owner", "ownerlookup", (USERS,)),
        ("Note_Title", "Note Title", "text"),
        ("Note_Content", "Note Content", "textarea"),
        ("Parent_Id", "Parent ID", "lookup", ("Leads", "Contacts", "Accounts", "Deals")),
    ),
}
USER_FIELDS: tuple[_Spec, ...] = (
    ("id", "User Id", "bigint"),
    ("full_name", "Full Name", "text"),
    ("first_name", "First Name", "text"),
    ("last_name", "Last Name", "text"),
    ("email", "Email", "email"),
    ("status", "Status", "text"),
    ("created_time", "Created Time", "datetime"),
    ("Modified_Time", "Modified Time", "datetime"),
)
# The field whose value names a record (the lookup's "name", the deleted record's display name).
DISPLAY_FIELDS = {
    "Leads": ("Full_Name", "Last_Name"), "Contacts": ("Full_Name", "Last_Name"), "Accounts": ("Account_Name",),
    "Deals": ("Deal_Name",), "Calls": ("Subject",), "Tasks": ("Subject",), "Events": ("Event_Title",),
    "Notes": ("Note_Title",), USERS: ("last_name", "full_name"),
}
_JSON_TYPES = {
    "ownerlookup": "jsonobject", "lookup": "jsonobject", "boolean": "boolean", "integer": "integer",
    "currency": "double", "double": "double", "percent": "double",
}
_LOOKUP_TYPES = ("lookup", "ownerlookup")
_NUMBER_TYPES = ("bigint", "integer", "currency", "double", "percent")
_TIME_TYPES = ("datetime", "date")
_READ_ONLY = {"id", "Converted__s", "Converted_Account", "Converted_Contact", "Converted_Deal", "Created_Time", "Modified_Time", "Created_By", "Modified_By"}
_PICKLIST_VALUES = {
    **{key: values for key, values in PICKLISTS.items()},
    ("Leads", "Lead_Status"): LEAD_STATUSES,
    ("Deals", "Stage"): tuple(stage for stage, _forecast in STANDARD_STAGES),
    ("Deals", "Pipeline"): ("Standard",),
}


@dataclass(frozen=True)
class FieldDef:
    """One field of a module, as the field metadata describes it."""

    module: str
    api_name: str
    label: str
    data_type: str
    targets: tuple[str, ...] = ()
    custom: bool = False
    id: str = ""

    @property
    def is_lookup(self) -> bool:
        return self.data_type in _LOOKUP_TYPES

    def metadata(self) -> dict[str, Any]:
        """The entry of ``GET /settings/fields``."""
        read_only = self.api_name in _READ_ONLY
        entry: dict[str, Any] = {
            "api_name": self.api_name,
            "id": self.id,
            "field_label": self.label,
            "display_label": self.label,
            "data_type": self.data_type,
            "json_type": _JSON_TYPES.get(self.data_type, "string"),
            "custom_field": self.custom,
            "visible": True,
            "read_only": read_only,
            "field_read_only": read_only,
            "system_mandatory": self.api_name in MANDATORY.get(self.module, ()),
            "type": "used",
            "created_source": "user" if self.custom else "default",
            "searchable": True,
            "sortable": True,
            "filterable": True,
            "length": 30 if self.data_type == "phone" else 255,
            "lookup": {},
            "pick_list_values": [
                {"display_value": value, "actual_value": value}
                for value in _PICKLIST_VALUES.get((self.module, self.api_name), ())
            ],
        }
        if self.data_type == "lookup":
            entry["lookup"] = {"api_name": None, "display_label": None, "id": None, "module": {"api_name": self.targets[0], "id": None}}
        return entry


def _field_defs(module: str, specs: Iterable[_Spec], ids: Iterator[int]) -> dict[str, FieldDef]:
    return {
        spec[0]: FieldDef(module, spec[0], spec[1], spec[2], tuple(spec[3]) if len(spec) > 3 else (), id=str(next(ids)))
        for spec in specs
    }


# -- time -------------------------------------------------------------------


def _local_now() -> datetime:
    return datetime.now(UTC).astimezone()


def zoho_time(moment: datetime) -> str:
    """``2024-05-06T10:15:00+02:00``: seconds and the offset, as Zoho writes times."""
    if moment.tzinfo is None:
        raise ValueError("Zoho's times carry an offset: the clock must give aware datetimes")
    return moment.replace(microsecond=0).isoformat()


@functools.lru_cache(maxsize=1 << 18)
def _epoch(text: str) -> float | None:
    """Seconds since 1970 of an ISO 8601 time with an offset; None when it is none."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _time_of(value: Any) -> float | None:
    return _epoch(value) if isinstance(value, str) else None


def _date_of(value: Any) -> float | None:
    """A date (``2024-05-06``) as the epoch of its midnight UTC, or a date-time's epoch."""
    if not isinstance(value, str):
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC).timestamp()
        except ValueError:
            return None
    return _epoch(value)


def _is_datetime(value: str) -> bool:
    return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}([+-]\d{2}:\d{2}|Z)", value)) and _epoch(value) is not None


def _id_key(record_id: Any) -> tuple[int, Any]:
    """Ids sort as numbers (Zoho's are digits); others after them, as text."""
    text = str(record_id)
    return (0, int(text)) if text.isdigit() else (1, text)


def _is_converted(record: dict[str, Any]) -> bool:
    return bool(record.get("Converted__s") or record.get("$converted"))


def _lookup_id(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("id") not in (None, ""):
        return str(value["id"])
    return None


def _digits_key(value: str) -> str:
    """The key of the phone index: the number without formatting characters."""
    return _FORMATTING.sub("", value)


@dataclass
class Fault:
    """An injected misbehaviour for requests whose path matches ``path`` (a regular expression).

    ``body``: a dict (sent as JSON), bytes (sent as is: broken JSON...), or
    None (Zoho's error envelope for ``status``). ``close``: drop the connection
    without answering. ``times``: how many requests it hits (None: all).
    ``after``: the request is served first (an insert stores its records) and
    only its answer is lost: the fault replaces it (the uncertain write).
    ``skip``: so many matching requests are served normally before it hits
    (the fourth page of a listing fails: ``skip=3``).
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
    skip: int = 0
    hits: int = 0
    skipped: int = 0


@dataclass
class PathLatency:
    """An extra delay for requests whose path matches ``path``; the answer is the usual one."""

    path: str
    seconds: float
    method: str = ""

    def applies(self, method: str, path: str) -> bool:
        return (not self.method or self.method == method) and re.search(self.path, path) is not None


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
    body: bytes = b""  # what a POST sent (a COQL query, records)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.raw_query, keep_blank_values=True)


class _Reply(Exception):
    """Ends a request with this answer; ``credits`` is what Zoho would charge for it."""

    def __init__(self, status: int, body: dict[str, Any] | bytes | None = None, headers: dict[str, str] | None = None, credits: int = 1):
        self.status = status
        self.body = DEFAULT_ERRORS.get(status, envelope("INTERNAL_ERROR", "error")) if body is None and status >= 400 else body
        self.headers = headers or {}
        self.credits = credits


def _bad(code: str, message: str, **details: Any) -> _Reply:
    return _Reply(400, envelope(code, message, details))


def _too_large() -> _Reply:
    return _Reply(413, envelope("FILE_SIZE_MORE_THAN_ALLOWED_SIZE", "Please check if the size of the file is in the correct range"))


def _multipart_file(content_type: str, body: bytes) -> tuple[str, bytes] | None:
    """The ``file`` part of a ``multipart/form-data`` body: (its file name, its bytes); None without one."""
    kind, _, params = content_type.partition(";")
    found = re.search(r'boundary="?([^";]+)"?', params)
    if kind.strip().lower() != "multipart/form-data" or found is None:
        return None
    delimiter = b"--" + found.group(1).encode("latin-1")
    if not body.startswith(delimiter):
        return None
    for segment in body[len(delimiter):].split(b"\r\n" + delimiter):
        if segment.startswith(b"--"):
            break  # the closing delimiter
        head, separator, content = segment.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            return None
        disposition = next((line for line in head.decode("latin-1").split("\r\n") if line.lower().startswith("content-disposition:")), "")
        name = re.search(r';\s*name="([^"]*)"', disposition)
        filename = re.search(r';\s*filename="([^"]*)"', disposition)
        if name is not None and name.group(1) == "file":
            return (filename.group(1) if filename else "file"), content
    return None


def _missing(param: str) -> _Reply:
    return _bad("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", param=param)


@dataclass
class _Token:
    expires_at: float
    scopes: frozenset[str]
    revoked: bool = False


@dataclass
class _Listing:
    """The ordered ids of one Get Records listing (a snapshot); ``ids`` is None once dropped."""

    module: str
    ids: list[str] | None


@dataclass
class _PageToken:
    listing: _Listing
    offset: int
    bound: tuple[Any, ...]
    expires_at: datetime
    expired: bool = False


@dataclass(frozen=True)
class _ListSpec:
    """A Get Records request's parameters, checked."""

    module: str
    fields: str
    per_page: int
    sort_by: str
    sort_order: str
    converted: str
    since: float | None
    bound: tuple[Any, ...]


# -- conditions (criteria and COQL share them) ------------------------------


@dataclass(frozen=True)
class Cond:
    """``path op values``: ``op`` one of ``= != < <= > >= in not_in like not_like
    between not_between starts_with is_null not_null``."""

    path: tuple[str, ...]
    op: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Join:
    op: str  # "and" or "or"
    left: Cond | Join
    right: Cond | Join


_NEGATIONS = {"!=": "=", "not_in": "in", "not_like": "like", "not_between": "between"}
_RANGE_OPS = ("<", "<=", ">", ">=", "between", "not_between")


def conditions(node: Cond | Join) -> Iterator[Cond]:
    if isinstance(node, Join):
        yield from conditions(node.left)
        yield from conditions(node.right)
    else:
        yield node


class _CriteriaParser:
    """``((A:equals:x)and(B:in:y,z))`` -> a condition tree. ``\\`` escapes ``( ) , : \\`` in values."""

    OPERATORS = {"equals": "=", "not_equal": "!=", "starts_with": "starts_with", "in": "in"}

    def __init__(self, text: str):
        self.text = text
        self.at = 0
        self.depth = 0

    def parse(self) -> Cond | Join:
        node = self._expression()
        if self.at != len(self.text):
            raise ValueError(f"unexpected text at {self.at}")
        count = sum(1 for _ in conditions(node))
        if count > CRITERIA_MAX_CONDITIONS:
            raise ValueError(f"more than {CRITERIA_MAX_CONDITIONS} conditions ({count})")
        return node

    def _expression(self) -> Cond | Join:
        node = self._term()
        while self.text.startswith("and", self.at) or self.text.startswith("or", self.at):
            join = "and" if self.text.startswith("and", self.at) else "or"
            self.at += len(join)
            node = Join(join, node, self._term())
        return node

    def _term(self) -> Cond | Join:
        self._skip_spaces()
        self._expect("(")
        self.depth += 1
        if self.depth > MAX_BRACKET_DEPTH:
            raise ValueError(f"brackets nested deeper than {MAX_BRACKET_DEPTH}")
        self._skip_spaces()
        inner = self._expression() if self.text.startswith("(", self.at) else self._condition()
        self._skip_spaces()
        self._expect(")")
        self.depth -= 1
        self._skip_spaces()
        return inner

    def _condition(self) -> Cond:
        field_name = "".join(self._value_parts(stop=":")).strip()
        self._expect(":")
        operator = "".join(self._value_parts(stop=":")).strip()
        self._expect(":")
        if operator not in self.OPERATORS:
            raise ValueError(f"unsupported operator {operator!r}")
        parts = [part.strip() for part in self._value_parts(stop=")", split=True)]
        if operator != "in":
            parts = [",".join(parts)]
        if len(parts) > CRITERIA_MAX_IN_VALUES:
            raise ValueError(f"more than {CRITERIA_MAX_IN_VALUES} values for in")
        return Cond(tuple(field_name.split(".")), self.OPERATORS[operator], tuple(parts))

    def _value_parts(self, stop: str, split: bool = False) -> list[str]:
        """Characters up to an unescaped ``stop`` (or ``)``), unescaped; split on unescaped commas."""
        parts, out = [], []
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and self.at + 1 < len(self.text):
                out.append(self.text[self.at + 1])
                self.at += 2
                continue
            if char in (stop, ")"):
                break
            if char == "," and split:
                parts.append("".join(out))
                out = []
            else:
                out.append(char)
            self.at += 1
        parts.append("".join(out))
        return parts

    def _expect(self, char: str) -> None:
        if not self.text.startswith(char, self.at):
            raise ValueError(f"expected {char} at {self.at}")
        self.at += 1

    def _skip_spaces(self) -> None:
        while self.at < len(self.text) and self.text[self.at] == " ":
            self.at += 1


class QueryError(Exception):
    """A COQL query Zoho would refuse: its error code, message and details."""

    def __init__(self, code: str, message: str, **details: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def reply(self) -> _Reply:
        return _Reply(400, envelope(self.code, self.message, self.details))


@dataclass(frozen=True)
class Query:
    """A parsed COQL select."""

    columns: tuple[str, ...]  # as written: the keys of the answer
    module: str
    where: Cond | Join
    order: tuple[tuple[tuple[str, ...], bool], ...]  # (path, descending)
    limit: int
    offset: int

    @property
    def paths(self) -> Iterator[tuple[str, ...]]:
        yield from (tuple(column.split(".")) for column in self.columns)
        yield from (condition.path for condition in conditions(self.where))
        yield from (path for path, _descending in self.order)


_COQL_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
    | (?P<number>-?\d+(?:\.\d+)?)(?![\w$])
    | (?P<name>[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)
    | (?P<symbol>!=|<>|<=|>=|=|<|>|\(|\)|,|\*)
    )""",
    re.VERBOSE,
)
_COMPARISONS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass(frozen=True)
class _Tok:
    kind: str  # string, number, name, symbol, end
    text: str
    at: int

    @property
    def word(self) -> str:
        return self.text.lower() if self.kind == "name" else ""

    @property
    def value(self) -> str:
        """A literal's value: quotes removed and doubled quotes undone."""
        if self.kind == "string":
            quote = self.text[0]
            return self.text[1:-1].replace(quote * 2, quote)
        return self.text


def _coql_tokens(text: str) -> list[_Tok]:
    tokens, at = [], 0
    while at < len(text):
        if not text[at:].strip():
            break
        match = _COQL_TOKEN.match(text, at)
        if match is None or match.lastgroup is None:
            spot = len(text) - len(text[at:].lstrip())
            raise QueryError("SYNTAX_ERROR", f"unexpected character at column {spot + 1}", near=text[spot:spot + 20], column=spot + 1)
        tokens.append(_Tok(match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup)))
        at = match.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


class CoqlParser:
    """``select ... from Module where ... [order by ...] [limit ...] [offset ...]`` -> :class:`Query`."""

    def __init__(self, text: str):
        self.tokens = _coql_tokens(text)
        self.at = 0
        self.conditions = 0
        self.depth = 0

    def parse(self) -> Query:
        self._keyword("select", "only a select query is supported")
        columns = self._columns()
        self._keyword("from", "the from clause is missing")
        module = self._take_name("a module name after from")
        if self._peek().word != "where":
            raise self._error("the where clause is mandatory")
        self.at += 1
        where = self._expression()
        if self.conditions > COQL_MAX_CONDITIONS:
            raise QueryError("LIMIT_EXCEEDED", f"at most {COQL_MAX_CONDITIONS} criteria in the where clause", limit=COQL_MAX_CONDITIONS)
        order = self._order_by()
        limit, offset = self._limit_offset()
        if self._peek().kind != "end":
            raise self._error("unexpected text after the query")
        return Query(tuple(columns), module, where, tuple(order), limit, offset)

    # -- clauses

    def _columns(self) -> list[str]:
        columns = [self._column()]
        while self._peek().text == ",":
            self.at += 1
            columns.append(self._column())
        return columns

    def _column(self) -> str:
        token = self._peek()
        if token.kind == "name" and token.word not in ("from", "where"):
            self.at += 1
            return token.text
        if token.kind == "string" and token.value:
            self.at += 1
            return token.value
        raise self._error("a field API name is expected in the select column")

    def _order_by(self) -> list[tuple[tuple[str, ...], bool]]:
        if self._peek().word != "order":
            return []
        self.at += 1
        self._keyword("by", "order is followed by by")
        order = [self._order_item()]
        while self._peek().text == ",":
            self.at += 1
            order.append(self._order_item())
        return order

    def _order_item(self) -> tuple[tuple[str, ...], bool]:
        path = tuple(self._take_name("a field to order by").split("."))
        descending = False
        if self._peek().word in ("asc", "desc"):
            descending = self._peek().word == "desc"
            self.at += 1
        return path, descending

    def _limit_offset(self) -> tuple[int, int]:
        limit, offset = COQL_DEFAULT_LIMIT, 0
        if self._peek().word == "limit":
            self.at += 1
            limit = self._count("limit")
            if self._peek().text == ",":
                self.at += 1
                offset, limit = limit, self._count("limit")
        if self._peek().word == "offset":
            self.at += 1
            offset = self._count("offset")
        if limit < 1:
            raise self._error("the limit must be a positive number")
        return limit, offset

    def _count(self, what: str) -> int:
        token = self._peek()
        if token.kind != "number" or not token.text.isdigit():
            raise self._error(f"a whole number is expected after {what}")
        self.at += 1
        return int(token.text)

    # -- conditions: at most two operands per bracket level

    def _expression(self) -> Cond | Join:
        left = self._operand()
        if self._peek().word not in ("and", "or"):
            return left
        join = self._peek().word
        self.at += 1
        right = self._operand()
        if self._peek().word in ("and", "or"):
            raise self._error("criteria must be enclosed in brackets: more than two at one level, as in (A and B) or C")
        return Join(join, left, right)

    def _operand(self) -> Cond | Join:
        if self._peek().text == "(":
            self.at += 1
            self.depth += 1
            if self.depth > MAX_BRACKET_DEPTH:
                raise self._error(f"the query is too complex: brackets nested deeper than {MAX_BRACKET_DEPTH}")
            node = self._expression()
            if self._peek().text != ")":
                raise self._error("unbalanced parentheses")
            self.at += 1
            self.depth -= 1
            return node
        return self._condition()

    def _condition(self) -> Cond:
        path = tuple(self._take_name("a field API name in the where clause").split("."))
        self.conditions += 1
        token = self._peek()
        self.at += 1
        if token.text in _COMPARISONS:
            return Cond(path, _COMPARISONS[token.text], (self._literal(),))
        negated = token.word == "not"
        if negated:
            token = self._peek()
            self.at += 1
        return self._word_condition(path, token, negated)

    def _word_condition(self, path: tuple[str, ...], token: _Tok, negated: bool) -> Cond:
        prefix = "not_" if negated else ""
        if token.word == "in":
            return Cond(path, prefix + "in", self._value_list())
        if token.word == "like":
            return Cond(path, prefix + "like", (self._literal(),))
        if token.word == "between":
            low = self._literal()
            self._keyword("and", "between needs two values joined by and")
            return Cond(path, prefix + "between", (low, self._literal()))
        if token.word == "is" and not negated:
            is_not = self._peek().word == "not"
            self.at += 1 if is_not else 0
            self._keyword("null", "is is followed by null or not null")
            return Cond(path, "not_null" if is_not else "is_null")
        self.at -= 1
        raise self._error("an operator is expected")

    def _value_list(self) -> tuple[str, ...]:
        if self._peek().text != "(":
            raise self._error("in is followed by a list in parentheses")
        self.at += 1
        values = [self._literal()]
        while self._peek().text == ",":
            self.at += 1
            values.append(self._literal())
        if self._peek().text != ")":
            raise self._error("unbalanced parentheses in the value list")
        self.at += 1
        if len(values) > COQL_MAX_IN_VALUES:
            raise QueryError("LIMIT_EXCEEDED", f"at most {COQL_MAX_IN_VALUES} values for in or not in", limit=COQL_MAX_IN_VALUES)
        return tuple(values)

    def _literal(self) -> str:
        token = self._peek()
        if token.kind in ("string", "number") or (token.kind == "name" and token.word not in ("and", "or", "null")):
            self.at += 1
            return token.value
        raise self._error("a value is expected")

    # -- tokens

    def _peek(self) -> _Tok:
        return self.tokens[min(self.at, len(self.tokens) - 1)]

    def _keyword(self, word: str, message: str) -> None:
        if self._peek().word != word:
            raise self._error(message)
        self.at += 1

    def _take_name(self, what: str) -> str:
        token = self._peek()
        if token.kind != "name":
            raise self._error(f"{what} is expected")
        self.at += 1
        return token.text

    def _error(self, message: str) -> QueryError:
        token = self._peek()
        return QueryError("SYNTAX_ERROR", message, near=token.text or "end of query", column=token.at + 1)


def _is_null(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _data_type(field_def: FieldDef | None) -> str:
    return field_def.data_type if field_def is not None else "text"


def _rank(value: Any, data_type: str) -> float | str | None:
    """A value as ranges and ordering compare it: times and numbers as numbers, text folded."""
    if isinstance(value, dict):
        value = value.get("id")
    if data_type in _TIME_TYPES:
        return _date_of(value)
    if data_type in _NUMBER_TYPES:
        try:
            return int(value) if str(value).isdigit() else float(value)
        except (TypeError, ValueError):
            return None
    return str(value).casefold()


def _like_pattern(pattern: str) -> re.Pattern[str]:
    """``%`` is any text; everything else literal; case folded."""
    return re.compile(".*".join(re.escape(part) for part in pattern.casefold().split("%")), re.DOTALL)


class _Matcher:
    """Evaluates a condition tree on one module's records, following lookups to other modules."""

    def __init__(self, sim: ZohoSimulator, module: str):
        self.sim = sim
        self.module = module
        self._prepared: dict[Cond, tuple[FieldDef | None, Any]] = {}

    def test(self, record: dict[str, Any], node: Cond | Join) -> bool:
        if isinstance(node, Join):
            if node.op == "and":
                return self.test(record, node.left) and self.test(record, node.right)
            return self.test(record, node.left) or self.test(record, node.right)
        return self._test(record, node)

    def candidates(self, node: Cond | Join) -> set[str] | None:
        """Ids that may match (a superset), from the phone index; None: any record may."""
        if isinstance(node, Join):
            left, right = self.candidates(node.left), self.candidates(node.right)
            if node.op == "or":
                return None if left is None or right is None else left | right
            if left is None or right is None:
                return right if left is None else left
            return left & right
        if node.op not in ("=", "in"):
            return None
        return self.sim._phone_candidates(self.module, node.path, node.values)

    def _test(self, record: dict[str, Any], condition: Cond) -> bool:
        field_def, wanted = self._prepare(condition)
        value = self.sim._resolve(self.module, record, condition.path)[0]
        if condition.op in ("is_null", "not_null"):
            return _is_null(value) == (condition.op == "is_null")
        positive = _NEGATIONS.get(condition.op, condition.op)
        if _is_null(value):
            return positive != condition.op
        outcome = self._holds(positive, value, field_def, wanted)
        return outcome if positive == condition.op else not outcome

    def _holds(self, op: str, value: Any, field_def: FieldDef | None, wanted: Any) -> bool:
        if op in ("=", "in"):
            return self._key(value, field_def) in wanted
        if op == "starts_with":
            return self._text(value).startswith(wanted)
        if op == "like":
            return wanted.fullmatch(self._text(value)) is not None
        rank = _rank(value, _data_type(field_def))
        if rank is None or None in wanted:
            return False
        if op == "between":
            return wanted[0] <= rank <= wanted[1]
        return {"<": rank < wanted[0], "<=": rank <= wanted[0], ">": rank > wanted[0], ">=": rank >= wanted[0]}[op]

    def _prepare(self, condition: Cond) -> tuple[FieldDef | None, Any]:
        prepared = self._prepared.get(condition)
        if prepared is None:
            field_def = self.sim._path_field(self.module, condition.path)
            op = _NEGATIONS.get(condition.op, condition.op)
            if op in ("=", "in"):
                wanted: Any = frozenset(self._key(value, field_def) for value in condition.values)
            elif op == "starts_with":
                wanted = condition.values[0].casefold()
            elif op == "like":
                wanted = _like_pattern(condition.values[0])
            else:
                wanted = tuple(_rank(value, _data_type(field_def)) for value in condition.values)
            prepared = self._prepared[condition] = (field_def, wanted)
        return prepared

    def _key(self, value: Any, field_def: FieldDef | None) -> str:
        """What ``=`` and ``in`` compare: lookups by id, booleans as true/false, phones by number."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if field_def is not None and field_def.data_type == "phone":
            return self.sim._phone_key(str(value))
        return self._text(value)

    @staticmethod
    def _text(value: Any) -> str:
        if isinstance(value, dict):
            value = value.get("id")
        return str(value).casefold()


def _module_scopes(module: str, operation: str) -> tuple[str, ...]:
    """Scopes that allow ``operation`` (READ, CREATE) on ``module``: org-wide or the module's own."""
    operations = ("ALL", operation, "WRITE") if operation == "CREATE" else ("ALL", operation)
    return tuple(f"ZohoCRM.modules.{op}" for op in operations) + tuple(f"ZohoCRM.modules.{module.lower()}.{op}" for op in operations)


def _settings_scopes(name: str) -> tuple[str, ...]:
    return ("ZohoCRM.settings.ALL", "ZohoCRM.settings.READ", f"ZohoCRM.settings.{name}.READ", f"ZohoCRM.settings.{name}.ALL")


def _required_scopes(method: str, parts: list[str]) -> list[tuple[str, ...]]:
    """Each group: one of its scopes is needed. COQL's module scope is checked once the query is read."""
    head = parts[0]
    if head == "users":
        return [("ZohoCRM.users.READ", "ZohoCRM.users.ALL")]
    if head == "settings":
        return [_settings_scopes(parts[1] if len(parts) > 1 else "")]
    if head == "coql":
        return [("ZohoCRM.coql.READ",)]
    if head not in MODULES:
        return []
    operation = {"POST": "CREATE", "PUT": "UPDATE"}.get(method, "READ")
    groups = [_module_scopes(head, operation)]
    if parts[2:] == ["Attachments"]:
        groups.append(tuple(f"ZohoCRM.modules.{op}" for op in ("ALL", operation)) + tuple(f"ZohoCRM.modules.attachments.{op}" for op in ("ALL", operation)))
    if parts[1:] == ["search"]:
        groups.append(("ZohoSearch.securesearch.READ", "ZohoSearch.securesearch.ALL"))
    return groups


def _coql_credits(limit: int) -> int:
    """Zoho's rule: LIMIT 1-200 costs 1 credit, 201-1000 costs 2, 1001-2000 costs 3."""
    return 1 if limit <= 200 else 2 if limit <= 1000 else 3


def _int_param(query: dict[str, str], name: str, default: int, maximum: int | None = None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad("INVALID_DATA", "invalid data", param=name) from None
    if value < 1 or (maximum is not None and value > maximum):
        raise _bad("INVALID_DATA", "invalid data", param=name, **({"maximum": maximum} if maximum else {}))
    return value


def _project(record: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """The record with only ``id`` and the requested fields (null when it has none), as Zoho answers."""
    if not fields:
        return dict(record)
    projected = {"id": record.get("id")}
    for name in fields.split(","):
        name = name.strip()
        if name:
            projected[name] = record.get(name)
    return projected


def _person(user: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"name", "id"}`` of a user or of a stored user lookup."""
    if not isinstance(user, dict) or user.get("id") is None:
        return None
    return {"name": user.get("full_name", user.get("name")), "id": str(user["id"])}


_USER_TYPES: dict[str, tuple[str, ...] | None] = {
    "AllUsers": None,
    "CurrentUser": None,  # the user the token belongs to: here, the first one added
    "ActiveUsers": ("active",),
    "DeactiveUsers": ("disabled", "inactive"),
    "DeletedUsers": ("deleted",),
}
_TEXT_TYPES = ("text", "textarea", "email", "phone", "website", "picklist", "autonumber")
_SORTABLE = ("id", "Created_Time", "Modified_Time")


class ZohoSimulator:
    """The simulator: data, behaviour switches, the server and its request log.

    Control methods (``add_*``, ``update_*``, ``delete_record``,
    ``convert_lead``...) are safe to call while the server answers: every
    change and every answer holds the same lock.
    """

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
        self.granted_scopes = DEFAULT_SCOPES
        self.scope_mismatch = False
        self.refresh_token_revoked = False
        self.now: Callable[[], datetime] = _local_now
        self.coql_lookup_names = True
        self.page_token_ttl_s = PAGE_TOKEN_TTL_S
        self.max_listed_records = MAX_LISTED_RECORDS
        self.credits_used = 0
        self.log: list[LoggedRequest] = []
        self.tokens_issued: list[str] = []
        self.faults: list[Fault] = []
        self.latencies: list[PathLatency] = []
        self.max_in_flight_seen = 0
        self.attachment_limit_bytes = ATTACHMENT_LIMIT
        # Attachments by (module, record id), in upload order, content included.
        self._attachments: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._credits: collections.Counter[str] = collections.Counter()
        # API requests whose path matches it wait until the test lets them go (see Stall).
        self.stall: Stall | None = None
        self._records: dict[str, dict[str, dict[str, Any]]] = {module: {} for module in MODULES}
        self._deleted: dict[str, dict[str, dict[str, Any]]] = {module: {} for module in MODULES}
        self._order: dict[str, dict[str, int]] = {module: {} for module in MODULES}
        self._phone_index: dict[str, dict[str, set[str]]] = {module: {} for module in MODULES}
        self._refs: dict[str, dict[str, dict[str, set[str]]]] = {module: {} for module in MODULES}
        self._seen: dict[str, set[str]] = {module: set() for module in MODULES}
        self._version: dict[str, int] = {module: 0 for module in MODULES}
        self._field_ids = itertools.count(5_725_767_000_000_002_001)
        self._fields: dict[str, dict[str, FieldDef]] = {
            module: _field_defs(module, (*STANDARD_FIELDS[module], *_SYSTEM_FIELDS), self._field_ids) for module in MODULES
        }
        self._fields[USERS] = _field_defs(USERS, USER_FIELDS, self._field_ids)
        self._phone_names: dict[str, list[str]] = {module: list(PHONE_FIELDS.get(module, ())) for module in MODULES}
        self._lookup_names = {module: [f.api_name for f in self._fields[module].values() if f.data_type == "lookup"] for module in MODULES}
        self._listings: collections.OrderedDict[tuple[Any, ...], _Listing] = collections.OrderedDict()
        self._page_tokens: collections.OrderedDict[str, _PageToken] = collections.OrderedDict()
        self._users: dict[str, dict[str, Any]] = {}
        self._layouts: dict[str, dict[str, Any]] = {}
        self._pipelines: dict[str, list[dict[str, Any]]] = {}
        self._tokens: dict[str, _Token] = {}
        self._mint_times: list[float] = []
        self._ids = itertools.count(5_725_767_000_001_000_001)
        self._sequence = itertools.count()
        self._lock = threading.RLock()
        self._in_flight = 0
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_layout("Standard", [("Standard", STANDARD_STAGES)])

    # -- life cycle -------------------------------------------------------

    def start(self) -> ZohoSimulator:
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

    def __enter__(self) -> ZohoSimulator:
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
        """A CRM user (status ``active``, ``disabled`` or ``deleted``), created and modified now."""
        with self._lock:
            stamp = zoho_time(self.now())
            first, _space, last = full_name.rpartition(" ")
            user = {
                "id": str(fields.pop("id", None) or self.new_id()), "full_name": full_name, "first_name": first or None,
                "last_name": last, "email": email, "status": status, "confirm": True, "created_time": stamp,
                "Modified_Time": stamp, **fields,
            }
            self._users[user["id"]] = user
            return user

    def update_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Change a user's fields; its ``Modified_Time`` becomes now (unless given)."""
        with self._lock:
            user = self._users[str(user_id)]
            user.update({"Modified_Time": zoho_time(self.now()), **fields})
            return dict(user)

    def add_record(self, module: str, owner: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Store a record as is (no validation: tests may store what Zoho would hold).

        ``Created_Time`` and ``Modified_Time`` are now unless given; a lead carries
        ``Converted__s`` (true when ``$converted`` or ``Converted__s`` says so).
        """
        with self._lock:
            record = {"id": str(fields.pop("id", None) or self.new_id()), **fields}
            if owner is not None:
                record["Owner"] = {"name": owner["full_name"], "id": owner["id"], "email": owner["email"]}
            stamp = zoho_time(self.now()) if "Created_Time" not in record or "Modified_Time" not in record else ""
            record.setdefault("Created_Time", stamp)
            record.setdefault("Modified_Time", stamp)
            if module == "Leads":
                record["Converted__s"] = record["$converted"] = _is_converted(record)
            self._store(module, record)
            return dict(record)

    def update_record(self, module: str, record_id: str, **fields: Any) -> dict[str, Any]:
        """Change a record's fields; its ``Modified_Time`` becomes now (unless given)."""
        with self._lock:
            record = self._records[module][str(record_id)]
            updated = {**record, "Modified_Time": zoho_time(self.now()), **fields, "id": record["id"]}
            if module == "Leads" and ("Converted__s" in fields or "$converted" in fields):
                updated["Converted__s"] = updated["$converted"] = bool(fields.get("Converted__s", fields.get("$converted")))
            self._store(module, updated)
            return dict(updated)

    def delete_record(self, module: str, record_id: str, *, permanent: bool = False, deleted_by: dict[str, Any] | None = None) -> dict[str, Any]:
        """Delete a record (to the recycle bin, or for good); a recycled one may be deleted for good later.

        Returns its entry in ``GET /{module}/deleted``.
        """
        with self._lock:
            record_id = str(record_id)
            record = self._records[module].get(record_id)
            entry = self._deleted[module].get(record_id)
            if record is None and (entry is None or not permanent):
                raise KeyError(f"no {module} record {record_id}")
            entry = {"deleted_by": None, "id": record_id, "display_name": None, "type": "permanent", "created_by": None, "deleted_time": zoho_time(self.now())}
            if record is not None:
                self._unstore(module, record_id)
                if not permanent:
                    entry.update(
                        deleted_by=_person(deleted_by or self._acting_user()),
                        display_name=self._display_name(module, record),
                        type="recycle",
                        created_by=_person(record.get("Created_By") or record.get("Owner")),
                    )
            self._deleted[module][record_id] = entry
            return dict(entry)

    def convert_lead(self, lead_id: str, *, contact_fields: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Mark a lead converted now; with ``contact_fields``, create and return the Contact it became."""
        with self._lock:
            lead = self._records["Leads"][str(lead_id)]
            contact = None
            if contact_fields is not None:
                values = dict(contact_fields)
                if "Owner" not in values and isinstance(lead.get("Owner"), dict):
                    values["Owner"] = dict(lead["Owner"])
                contact = self.add_record("Contacts", **values)
            stamp = zoho_time(self.now())
            changes: dict[str, Any] = {"$converted": True, "Converted__s": True, "Converted_Date_Time": stamp, "Modified_Time": stamp}
            if contact is not None:
                changes["Converted_Contact"] = {"name": self._display_name("Contacts", contact), "id": contact["id"]}
            self.update_record("Leads", lead["id"], **changes)
            return contact

    def add_phone_field(self, module: str, api_name: str, *, label: str | None = None) -> dict[str, Any]:
        """A custom field of data type phone: in the field metadata, the ``phone=`` search, criteria and COQL."""
        with self._lock:
            if module not in MODULES:
                raise ValueError(f"unknown module {module!r}")
            if api_name in self._fields[module]:
                raise ValueError(f"{module} already has a field {api_name!r}")
            field_def = FieldDef(module, api_name, label or api_name.replace("_", " "), "phone", custom=True, id=str(next(self._field_ids)))
            self._fields[module][api_name] = field_def
            self._phone_names[module].append(api_name)
            for record in self._records[module].values():
                self._index_phones(module, record, (api_name,))
            return field_def.metadata()

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

    def attachments(self, module: str, record_id: str) -> list[dict[str, Any]]:
        """The attachments of a record, in upload order; each with its ``content`` (bytes)."""
        with self._lock:
            return [dict(item) for item in self._attachments.get((module, str(record_id)), [])]

    def deleted_records(self, module: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._deleted[module].values()]

    def clear_deleted(self) -> None:
        """Forget every deleted record, as Zoho does after 60 days (recycle bin) or 120 (permanent)."""
        with self._lock:
            for entries in self._deleted.values():
                entries.clear()

    def fields(self, module: str) -> list[dict[str, Any]]:
        """The field metadata of a module, as ``GET /settings/fields`` gives it."""
        with self._lock:
            return [field_def.metadata() for field_def in self._fields[module].values()]

    # -- storage and indexes (under the lock) ----------------------------

    def _store(self, module: str, record: dict[str, Any]) -> None:
        records = self._records[module]
        record_id = record["id"]
        old = records.get(record_id)
        if old is not None:
            self._unindex(module, old)
        else:
            self._order[module][record_id] = next(self._sequence)
        records[record_id] = record
        self._index_phones(module, record, self._phone_names[module])
        refs = self._refs[module]
        for name in self._lookup_names[module]:
            target = _lookup_id(record.get(name))
            if target is not None:
                refs.setdefault(name, {}).setdefault(target, set()).add(record_id)
        self._seen[module].update(record)
        self._version[module] += 1

    def _unstore(self, module: str, record_id: str) -> dict[str, Any]:
        record = self._records[module].pop(record_id)
        self._unindex(module, record)
        self._order[module].pop(record_id, None)
        self._version[module] += 1
        return record

    def _index_phones(self, module: str, record: dict[str, Any], names: Iterable[str]) -> None:
        index = self._phone_index[module]
        for name in names:
            value = record.get(name)
            key = _digits_key(value) if isinstance(value, str) else ""
            if key:
                index.setdefault(key, set()).add(record["id"])

    def _unindex(self, module: str, record: dict[str, Any]) -> None:
        record_id = record["id"]
        index = self._phone_index[module]
        for name in self._phone_names[module]:
            value = record.get(name)
            ids = index.get(_digits_key(value)) if isinstance(value, str) else None
            if ids is not None:
                ids.discard(record_id)
        refs = self._refs[module]
        for name in self._lookup_names[module]:
            target = _lookup_id(record.get(name))
            if target is not None:
                refs.get(name, {}).get(target, set()).discard(record_id)

    def _pool(self, module: str, ids: set[str] | None) -> list[dict[str, Any]]:
        """The records of ``ids`` (all when None), in the order they were stored."""
        records = self._records[module]
        if ids is None:
            return list(records.values())
        order = self._order[module]
        return [records[record_id] for record_id in sorted((i for i in ids if i in records), key=order.__getitem__)]

    def _phone_candidates(self, module: str, path: tuple[str, ...], values: tuple[str, ...]) -> set[str] | None:
        """Ids of ``module`` whose phone at ``path`` (direct or through lookups) may equal one of ``values``."""
        if module not in self._records:
            return None
        head = path[0]
        if len(path) == 1:
            if head not in self._phone_names[module]:
                return None
            index = self._phone_index[module]
            return set().union(*(index.get(_digits_key(value), ()) for value in values))
        field_def = self._fields[module].get(head)
        if field_def is None or field_def.data_type != "lookup":
            return None
        targets: set[str] = set()
        for target_module in field_def.targets:
            found = self._phone_candidates(target_module, path[1:], values)
            if found is None:
                return None
            targets |= found
        refs = self._refs[module].get(head, {})
        return set().union(*(refs.get(target, ()) for target in targets))

    def _phone_key(self, value: str) -> str:
        return value.strip() if self.phone_match == "exact" else _digits_key(value)

    def _acting_user(self) -> dict[str, Any]:
        """Who creates and deletes through the API: the first user (the token's owner)."""
        return next(iter(self._users.values()), {"full_name": "Simulator", "id": "1", "email": "sim@example.com"})

    def _display_name(self, module: str, record: dict[str, Any]) -> Any:
        for name in DISPLAY_FIELDS.get(module, ()):
            if record.get(name):
                return record[name]
        return None

    def _known_field(self, module: str, name: str) -> FieldDef | None:
        """The field's metadata; a plain text field when only stored records have it."""
        field_def = self._fields[module].get(name)
        if field_def is None:
            seen = set().union(*self._users.values()) if module == USERS else self._seen[module]
            if name in seen:
                field_def = FieldDef(module, name, name, "text")
        return field_def

    def _path_field(self, module: str, path: tuple[str, ...]) -> FieldDef | None:
        """The field a dotted path ends on (following lookups), or None when unknown."""
        for step in path[:-1]:
            field_def = self._fields[module].get(step)
            if field_def is None or not field_def.targets:
                return None
            module = field_def.targets[0]
        return self._known_field(module, path[-1])

    def _resolve(self, module: str, record: dict[str, Any], path: tuple[str, ...]) -> tuple[Any, str, dict[str, Any]]:
        """The value at ``path``, the module and record that hold it; lookups are followed by id."""
        current, current_module = record, module
        for depth, step in enumerate(path[:-1]):
            link = current.get(step)
            target, target_module = self._follow(current_module, step, link, current)
            if target is None:
                rest = path[depth + 1:]
                value = link.get(rest[0]) if isinstance(link, dict) and len(rest) == 1 else None
                return value, current_module, current
            current, current_module = target, target_module
        return current.get(path[-1]), current_module, current

    def _follow(self, module: str, name: str, link: Any, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        target_id = _lookup_id(link)
        field_def = self._fields.get(module, {}).get(name)
        targets = field_def.targets if field_def is not None else ()
        if name == "What_Id" and record.get("$se_module") in self._records:
            targets = (record["$se_module"],)
        for target_module in targets if target_id is not None else ():
            found = self._users.get(target_id) if target_module == USERS else self._records[target_module].get(target_id)
            if found is not None:
                return found, target_module
        return None, ""

    # -- behaviour --------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as if its hour were up early)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = 0.0

    def expire_page_tokens(self) -> None:
        """Every Get Records page token issued so far is expired (as if its 24 hours were up)."""
        with self._lock:
            for token in self._page_tokens.values():
                token.expired = True

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

    def latency_for(self, path: str, seconds: float, *, method: str = "") -> PathLatency:
        """Requests whose path matches ``path`` (a regular expression) wait ``seconds`` more, then get their usual answer."""
        latency = PathLatency(path, seconds, method)
        with self._lock:
            self.latencies.append(latency)
        return latency

    def clear_latencies(self) -> None:
        with self._lock:
            self.latencies.clear()

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

    def credits_by_path(self) -> dict[str, int]:
        """API credits spent per request path (``/crm/v8/Leads/search``...)."""
        with self._lock:
            return dict(self._credits)

    def reset_credits(self) -> None:
        with self._lock:
            self.credits_used = 0
            self._credits.clear()

    # -- request handling (called from the server threads) ---------------

    def handle(self, method: str, path: str, raw_query: str, headers: dict[str, str], body: bytes) -> _Reply:
        try:
            reply = self._answer(method, path, raw_query, headers, body)
        except ConnectionAbortedError:
            self._charge(path, 200, 1)
            raise
        self._charge(path, reply.status, reply.credits)
        return reply

    def _charge(self, path: str, status: int, credits: int) -> None:
        """Zoho counts every API request but those refused for their token or scope, or for concurrency."""
        if not path.startswith(API + "/") or status in (401, 429):
            return
        with self._lock:
            self.credits_used += credits
            self._credits[path] += credits

    def _answer(self, method: str, path: str, raw_query: str, headers: dict[str, str], body: bytes) -> _Reply:
        query = {key: values[-1] for key, values in parse_qs(raw_query, keep_blank_values=True).items()}
        fault = self._fault_for(method, path)
        if fault is None:
            return self._served(method, path, query, headers, body)
        if fault.after:
            self._served(method, path, query, headers, body)
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.close:
            raise ConnectionAbortedError("fault: connection dropped")
        return _Reply(fault.status, fault.body, fault.headers)

    def _served(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> _Reply:
        try:
            return self._serve(method, path, query, headers, body)
        except _Reply as reply:
            return reply

    def _serve(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> _Reply:
        with self._lock:
            extra = sum(latency.seconds for latency in self.latencies if latency.applies(method, path))
        if extra:
            time.sleep(extra)
        if path == "/oauth/v2/token" and method == "POST":
            return self._token(query, headers, body)
        if not path.startswith(API + "/"):
            return _Reply(404)
        stall = self.stall
        if stall is not None and re.search(stall.path, path):
            stall.hold(headers.get("authorization", ""))
        if self.latency_s:
            time.sleep(self.latency_s)
        token = self._authenticate(headers)
        return self._api(method, path[len(API):], query, headers, body, token)

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (fault.method and fault.method != method) or not re.search(fault.path, path):
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                if fault.skipped < fault.skip:
                    fault.skipped += 1
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
            scopes = self.granted_scopes
            self._tokens[token] = _Token(now + self.token_ttl_s, frozenset(s.lower() for s in re.split(r"[\s,]+", scopes) if s))
            self.tokens_issued.append(token)
        return _Reply(200, {
            "access_token": token,
            "scope": scopes,
            "api_domain": self.url,
            "token_type": "Bearer",
            "expires_in": self.token_ttl_s,
        })

    def _authenticate(self, headers: dict[str, str]) -> _Token:
        header = headers.get("authorization", "")
        if not header.startswith("Zoho-oauthtoken "):
            raise _Reply(401, envelope("AUTHENTICATION_FAILURE", "Authentication failed"))
        with self._lock:
            token = self._tokens.get(header[len("Zoho-oauthtoken "):])
            valid = token is not None and not token.revoked and time.monotonic() < token.expires_at
        if not valid or token is None:
            raise _Reply(401, envelope("INVALID_TOKEN", "invalid oauth token"))
        if self.scope_mismatch:
            raise _Reply(401, envelope("OAUTH_SCOPE_MISMATCH", "Unauthorized"))
        return token

    @staticmethod
    def _require(groups: Iterable[tuple[str, ...]], token: _Token) -> None:
        for group in groups:
            if not any(scope.lower() in token.scopes for scope in group):
                raise _Reply(401, envelope("OAUTH_SCOPE_MISMATCH", "Unauthorized", {"permissions": list(group)}))

    def _api(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes, token: _Token) -> _Reply:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        self._require(_required_scopes(method, parts), token)
        with self._lock:
            head = parts[0]
            if head == "users" and method == "GET" and len(parts) == 1:
                return self._list_users(query, headers)
            if head == "settings" and method == "GET" and len(parts) == 2:
                return self._settings(parts[1], query)
            if head == "coql":
                if method != "POST" or len(parts) != 1:
                    return _bad("INVALID_REQUEST_METHOD", "The http request method type is not a valid one")
                return self._coql(body, token)
            if head not in MODULES:
                return _Reply(400, envelope("INVALID_MODULE", "the module name given seems to be invalid", {"resource_path_index": 0}))
            return self._module_api(method, head, parts[1:], query, headers, body)

    def _module_api(self, method: str, module: str, rest: list[str], query: dict[str, str], headers: dict[str, str], body: bytes) -> _Reply:
        if len(rest) == 2 and rest[1] == "Attachments":
            return self._attachment_api(method, module, rest[0], query, headers, body)
        if method == "PUT" and len(rest) == 1:
            return self._update(module, rest[0], body)
        if method == "POST":
            return self._insert(module, body) if not rest else _Reply(404)
        if method != "GET" or len(rest) > 2:
            return _Reply(404)
        if not rest:
            return self._list(module, query, headers)
        if rest == ["search"]:
            return self._search(module, query)
        if rest == ["deleted"]:
            return self._deleted_list(module, query, headers)
        if len(rest) == 2:
            return self._related(module, rest[0], rest[1], query)
        record = self._records[module].get(rest[0])
        return _Reply(204) if record is None else _Reply(200, {"data": [_project(record, query.get("fields"))]})

    def _settings(self, name: str, query: dict[str, str]) -> _Reply:
        handlers = {"fields": self._fields_meta, "layouts": self._layouts_of, "pipeline": self._pipeline}
        return handlers[name](query) if name in handlers else _Reply(404)

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], key: str = "data") -> _Reply:
        page = _int_param(query, "page", 1)
        per_page = _int_param(query, "per_page", MAX_PER_PAGE, maximum=MAX_PER_PAGE)
        chunk = items[(page - 1) * per_page: page * per_page]
        if not chunk:
            return _Reply(204)
        info = {"per_page": per_page, "count": len(chunk), "page": page, "more_records": page * per_page < len(items)}
        return _Reply(200, {key: [_project(item, query.get("fields")) for item in chunk], "info": info})

    def _since(self, headers: dict[str, str]) -> float | None:
        """The ``If-Modified-Since`` header as an epoch; Zoho's form is ISO 8601 with the offset."""
        raw = headers.get("if-modified-since")
        if raw is None:
            return None
        since = _epoch(raw.strip())
        if since is None:
            raise _bad("INVALID_DATA", "the If-Modified-Since header is not an ISO 8601 date-time with its offset", header="If-Modified-Since")
        return since

    # -- search -----------------------------------------------------------

    def _search(self, module: str, query: dict[str, str]) -> _Reply:
        page = _int_param(query, "page", 1)
        per_page = _int_param(query, "per_page", MAX_PER_PAGE, maximum=MAX_PER_PAGE)
        if page * per_page > SEARCH_MAX_RECORDS:
            return _bad("LIMIT_REACHED", "Maximum response iteration limit reached", limit=SEARCH_MAX_RECORDS)
        converted = query.get("converted", "false") if module == "Leads" else "both"
        found = [
            record for record in self._search_matches(module, query)
            if converted == "both" or _is_converted(record) == (converted == "true")
        ]
        return self._page(found, query)

    def _search_matches(self, module: str, query: dict[str, str]) -> list[dict[str, Any]]:
        # Zoho uses one of them, in this order of preference.
        if "criteria" in query:
            try:
                node = _CriteriaParser(query["criteria"]).parse()
            except ValueError as exc:
                raise _bad("INVALID_QUERY", "invalid query formed", reason=str(exc)) from None
            matcher = _Matcher(self, module)
            return [record for record in self._pool(module, matcher.candidates(node)) if matcher.test(record, node)]
        if "email" in query:
            wanted = query["email"].casefold()
            return [r for r in self._records[module].values() if any(str(r.get(f, "")).casefold() == wanted for f in EMAIL_FIELDS)]
        if "phone" in query:
            wanted = self._phone_key(query["phone"])
            pool = self._pool(module, set(self._phone_index[module].get(_digits_key(query["phone"]), ())))
            return [r for r in pool if wanted and any(self._phone_key(str(r.get(f) or "")) == wanted for f in self._phone_names[module])]
        if "word" in query:
            word = query["word"].casefold()
            return [r for r in self._records[module].values() if any(isinstance(v, str) and word in v.casefold() for v in r.values())]
        raise _missing("criteria")

    def _related(self, module: str, record_id: str, related: str, query: dict[str, str]) -> _Reply:
        if record_id not in self._records[module]:
            return _Reply(400, envelope("INVALID_DATA", "the related id given seems to be invalid", {"resource_path_index": 1}))
        if related not in MODULES:
            return _Reply(400, envelope("INVALID_DATA", "the relation name given seems to be invalid", {"resource_path_index": 2}))
        if not query.get("fields"):
            return _missing("fields")
        children = [r for r in self._records[related].values() if any(isinstance(v, dict) and str(v.get("id")) == record_id for v in r.values())]
        return self._page(children, query)

    # -- Get Records --------------------------------------------------------

    def _list(self, module: str, query: dict[str, str], headers: dict[str, str]) -> _Reply:
        if "ids" in query:
            return self._list_ids(module, query)
        if "page_token" in query:
            if "page" in query:
                return _bad("AMBIGUITY_DURING_PROCESSING", "You cannot use both page and page_token", params=["page", "page_token"])
            return self._list_by_token(module, query, headers)
        spec = self._list_spec(module, query, headers)
        page = _int_param(query, "page", 1)
        if page > DISCRETE_MAX_PAGE or page * spec.per_page > DISCRETE_MAX_RECORDS:
            return _bad(
                "DISCRETE_PAGINATION_LIMIT_EXCEEDED", "You can only get the first 2000 records without using page_token param",
                limit=DISCRETE_MAX_RECORDS,
            )
        return self._list_page(spec, self._listing(spec), (page - 1) * spec.per_page, from_token=False)

    def _list_ids(self, module: str, query: dict[str, str]) -> _Reply:
        """``ids=1,2,3``: those records that exist (at most 100 ids), in the order asked."""
        if not query.get("fields"):
            raise _missing("fields")
        ids = [part.strip() for part in query["ids"].split(",") if part.strip()]
        if not ids or len(ids) > MAX_IDS_PARAM:
            return _bad("INVALID_DATA", "invalid data", param="ids", limit=MAX_IDS_PARAM)
        found = [self._records[module][record_id] for record_id in ids if record_id in self._records[module]]
        if not found:
            return _Reply(204)
        data = [_project(record, query["fields"]) for record in found]
        return _Reply(200, {"data": data, "info": {"per_page": len(data), "count": len(data), "page": 1, "more_records": False}})

    def _list_spec(self, module: str, query: dict[str, str], headers: dict[str, str]) -> _ListSpec:
        fields = query.get("fields")
        if not fields:
            raise _missing("fields")
        if len([name for name in fields.split(",") if name.strip()]) > MAX_FIELDS_PARAM:
            raise _bad("LIMIT_EXCEEDED", "fields limit exceeded", param="fields", limit=MAX_FIELDS_PARAM)
        per_page = _int_param(query, "per_page", MAX_PER_PAGE, maximum=MAX_PER_PAGE)
        sort_by, sort_order = query.get("sort_by", "id"), query.get("sort_order", "desc")
        converted = query.get("converted", "false") if module == "Leads" else "both"
        for name, value, allowed in (("sort_by", sort_by, _SORTABLE), ("sort_order", sort_order, ("asc", "desc")), ("converted", converted, ("true", "false", "both"))):
            if value not in allowed:
                raise _bad("INVALID_DATA", "invalid data", param=name, expected=list(allowed))
        bound = (module, *(query.get(name) for name in ("fields", "sort_by", "sort_order", "converted", "per_page")), headers.get("if-modified-since"))
        return _ListSpec(module, fields, per_page, sort_by, sort_order, converted, self._since(headers), bound)

    def _list_by_token(self, module: str, query: dict[str, str], headers: dict[str, str]) -> _Reply:
        token = self._page_tokens.get(query["page_token"])
        if token is None:
            return _bad("INVALID_DATA", "The token given seems to be invalid", param="page_token")
        spec = self._list_spec(module, query, headers)
        if token.expired or token.listing.ids is None or self.now() >= token.expires_at:
            return _bad("EXPIRED_VALUE", "The token given has expired", param="page_token")
        if token.bound != spec.bound:
            return _bad("TOKEN_BOUND_DATA_MISMATCH", "The page_token given seems to be invalid or input param is added, altered, or deleted", param="page_token")
        if token.offset >= self.max_listed_records:
            return _bad("PAGINATION_LIMIT_EXCEEDED", "You can only get up to first 100000 records using page_token param", limit=self.max_listed_records)
        return self._list_page(spec, token.listing, token.offset, from_token=True)

    def _listing(self, spec: _ListSpec) -> _Listing:
        """The ordered ids the request lists; reused while the module is unchanged."""
        key = (spec.module, spec.sort_by, spec.sort_order, spec.converted, spec.since, self._version[spec.module])
        listing = self._listings.get(key)
        if listing is not None:
            self._listings.move_to_end(key)
            return listing
        listing = _Listing(spec.module, self._ordered_ids(spec))
        self._listings[key] = listing
        while len(self._listings) > KEPT_LISTINGS:
            _key, dropped = self._listings.popitem(last=False)
            dropped.ids = None
        return listing

    def _ordered_ids(self, spec: _ListSpec) -> list[str]:
        records: Iterable[dict[str, Any]] = self._records[spec.module].values()
        if spec.converted != "both":
            wanted = spec.converted == "true"
            records = [r for r in records if _is_converted(r) == wanted]
        if spec.since is not None:
            since = spec.since
            records = [r for r in records if (_time_of(r.get("Modified_Time")) or 0.0) > since]
        if spec.sort_by == "id":
            ordered = sorted(records, key=lambda r: _id_key(r["id"]), reverse=spec.sort_order == "desc")
        else:
            ordered = sorted(records, key=lambda r: (_time_of(r.get(spec.sort_by)) or 0.0, _id_key(r["id"])), reverse=spec.sort_order == "desc")
        return [record["id"] for record in ordered]

    def _list_page(self, spec: _ListSpec, listing: _Listing, offset: int, *, from_token: bool) -> _Reply:
        ids = listing.ids or []
        if not ids:
            return _Reply(304 if spec.since is not None else 204)
        chunk = ids[offset: offset + spec.per_page]
        if not chunk:
            return _Reply(204)
        records = self._records[spec.module]
        data = [_project(records[record_id], spec.fields) for record_id in chunk if record_id in records]
        more = offset + spec.per_page < len(ids)
        next_token = self._mint(listing, offset + spec.per_page, spec) if more else None
        previous = self._mint(listing, max(0, offset - spec.per_page), spec) if from_token and offset > 0 else None
        expiry = (next_token or previous or (None, None))[1]
        info = {
            "per_page": spec.per_page, "count": len(data), "page": offset // spec.per_page + 1,
            "sort_by": spec.sort_by, "sort_order": spec.sort_order, "more_records": more,
            "next_page_token": next_token[0] if next_token else None,
            "previous_page_token": previous[0] if previous else None,
            "page_token_expiry": zoho_time(expiry) if expiry else None,
        }
        return _Reply(200, {"data": data, "info": info})

    def _mint(self, listing: _Listing, offset: int, spec: _ListSpec) -> tuple[str, datetime]:
        expires_at = self.now() + timedelta(seconds=self.page_token_ttl_s)
        token = secrets.token_hex(20)
        self._page_tokens[token] = _PageToken(listing, offset, spec.bound, expires_at)
        while len(self._page_tokens) > KEPT_PAGE_TOKENS:
            self._page_tokens.popitem(last=False)
        return token, expires_at

    # -- deleted records, fields, users, layouts ---------------------------

    def _deleted_list(self, module: str, query: dict[str, str], headers: dict[str, str]) -> _Reply:
        kind = query.get("type", "all")
        if kind not in ("all", "recycle", "permanent"):
            return _bad("PATTERN_NOT_MATCHED", "Please check whether the input values are correct", param="type")
        since = self._since(headers)
        entries = [
            entry for entry in self._deleted[module].values()
            if kind in ("all", entry["type"]) and (since is None or (_time_of(entry["deleted_time"]) or 0.0) > since)
        ]
        entries.sort(key=lambda entry: (_time_of(entry["deleted_time"]) or 0.0, _id_key(entry["id"])), reverse=True)
        return self._page(entries, {key: value for key, value in query.items() if key != "fields"})

    def _fields_meta(self, query: dict[str, str]) -> _Reply:
        module = query.get("module")
        if not module:
            return _missing("module")
        if module not in MODULES:
            return _bad("INVALID_MODULE", "the module name given seems to be invalid", param="module")
        return _Reply(200, {"fields": [field_def.metadata() for field_def in self._fields[module].values()]})

    def _list_users(self, query: dict[str, str], headers: dict[str, str]) -> _Reply:
        kind = query.get("type", "AllUsers")
        if kind not in _USER_TYPES:
            return _bad("INVALID_DATA", "invalid data", param="type", supported=list(_USER_TYPES))
        statuses = _USER_TYPES[kind]
        since = self._since(headers)
        users = [user for user in self._users.values() if statuses is None or user.get("status") in statuses]
        if kind == "CurrentUser":
            users = users[:1]
        if since is not None:
            users = [user for user in users if (_time_of(user.get("Modified_Time")) or 0.0) > since]
            if not users:
                return _Reply(304)
        return self._page(users, query, key="users")

    def _layouts_of(self, query: dict[str, str]) -> _Reply:
        if not query.get("module"):
            return _missing("module")
        if query["module"] != "Deals":
            return _Reply(200, {"layouts": [{"id": "1", "name": "Standard", "status": "active"}]})
        return _Reply(200, {"layouts": list(self._layouts.values())})

    def _pipeline(self, query: dict[str, str]) -> _Reply:
        layout_id = query.get("layout_id")
        if not layout_id:
            return _missing("layout_id")
        if layout_id not in self._pipelines:
            return _Reply(400, envelope("INVALID_DATA", "invalid data", {"param": "layout_id"}))
        return _Reply(200, {"pipeline": self._pipelines[layout_id]})

    # -- COQL -------------------------------------------------------------

    def _coql(self, body: bytes, token: _Token) -> _Reply:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _bad("INVALID_DATA", "the input data is not a valid JSON")
        text = payload.get("select_query") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text.strip():
            return _bad("MANDATORY_NOT_FOUND", "required field not found", api_name="select_query", json_path="$.select_query")
        try:
            query = CoqlParser(text).parse()
            self._check_query(query)
        except QueryError as error:
            return error.reply()
        self._require([_module_scopes(query.module, "READ")], token)
        return self._run_query(query)

    def _check_query(self, query: Query) -> None:
        if query.module not in MODULES:
            raise QueryError("INVALID_QUERY", "invalid query formed", reason=f"the module {query.module} is not supported", module=query.module)
        checks = (
            (len(query.columns) > COQL_MAX_COLUMNS, f"at most {COQL_MAX_COLUMNS} columns in select", COQL_MAX_COLUMNS),
            (query.limit > COQL_MAX_LIMIT, f"the limit is at most {COQL_MAX_LIMIT}", COQL_MAX_LIMIT),
            (query.offset + query.limit > COQL_MAX_ROWS, f"Max records limit exceeded: offset + limit at most {COQL_MAX_ROWS}", COQL_MAX_ROWS),
            (len(query.order) > COQL_MAX_ORDER_FIELDS, f"at most {COQL_MAX_ORDER_FIELDS} fields in order by", COQL_MAX_ORDER_FIELDS),
        )
        for exceeded, message, limit in checks:
            if exceeded:
                raise QueryError("LIMIT_EXCEEDED", message, limit=limit)
        if len(set(query.columns)) != len(query.columns):
            raise QueryError("DUPLICATE_DATA", "duplicate select columns", columns=sorted({c for c in query.columns if query.columns.count(c) > 1}))
        relations = {path[:depth] for path in query.paths for depth in range(1, len(path))}
        if len(relations) > COQL_MAX_RELATIONS:
            raise QueryError("LIMIT_EXCEEDED", f"at most {COQL_MAX_RELATIONS} relations (joins) in a query", relations=sorted(".".join(r) for r in relations))
        for path in query.paths:
            self._coql_field(query.module, path)
        for condition in conditions(query.where):
            self._check_operator(query.module, condition)

    def _coql_field(self, module: str, path: tuple[str, ...]) -> FieldDef:
        for step in path[:-1]:
            field_def = self._known_field(module, step)
            if field_def is None or not field_def.targets:
                raise QueryError("INVALID_QUERY", "invalid query formed", reason=f"{step} is not a lookup field of {module}", column_name=".".join(path))
            module = field_def.targets[0]
        field_def = self._known_field(module, path[-1])
        if field_def is None:
            raise QueryError("INVALID_QUERY", "invalid query formed", reason="invalid column name", column_name=".".join(path))
        return field_def

    def _check_operator(self, module: str, condition: Cond) -> None:
        data_type = self._coql_field(module, condition.path).data_type
        op = _NEGATIONS.get(condition.op, condition.op)
        wrong = (op == "like" and data_type not in _TEXT_TYPES) or (op in _RANGE_OPS and data_type not in _NUMBER_TYPES + _TIME_TYPES)
        if wrong:
            raise QueryError("INVALID_QUERY", "invalid query formed", reason=f"the operator {condition.op} is not supported for {data_type} fields", column_name=".".join(condition.path))
        typed = data_type in _NUMBER_TYPES + _TIME_TYPES and op not in ("is_null", "not_null")
        if typed and any(_rank(value, data_type) is None for value in condition.values):
            raise QueryError("INVALID_QUERY", "invalid query formed", reason=f"the value is not a valid {data_type}", column_name=".".join(condition.path))

    def _run_query(self, query: Query) -> _Reply:
        matcher = _Matcher(self, query.module)
        hide_converted = query.module == "Leads" and not any(c.path == ("Converted__s",) for c in conditions(query.where))
        matched = [
            record for record in self._pool(query.module, matcher.candidates(query.where))
            if not (hide_converted and _is_converted(record)) and matcher.test(record, query.where)
        ]
        for path, descending in reversed(query.order or ((("id",), False),)):
            field_def = self._coql_field(query.module, path)
            matched.sort(key=lambda record: self._order_key(query.module, record, path, field_def), reverse=descending)
        page = matched[query.offset: query.offset + query.limit]
        credits = _coql_credits(query.limit)
        if not page:
            return _Reply(204, credits=credits)
        rows = [self._row(query, record) for record in page]
        info = {"count": len(rows), "more_records": len(matched) > query.offset + query.limit}
        return _Reply(200, {"data": rows, "info": info}, credits=credits)

    def _order_key(self, module: str, record: dict[str, Any], path: tuple[str, ...], field_def: FieldDef) -> tuple[int, Any, str]:
        value = self._resolve(module, record, path)[0]
        rank = None if _is_null(value) else _id_key(value)[1] if path[-1] == "id" else _rank(value, field_def.data_type)
        if rank is None:
            return (0, 0, "")
        return (1, rank, "") if not isinstance(rank, str) else (2, 0, rank)

    def _row(self, query: Query, record: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for column in query.columns:
            path = tuple(column.split("."))
            value, module, holder = self._resolve(query.module, record, path)
            row[column] = self._coql_value(module, holder, path[-1], value)
        row["id"] = record["id"]
        return row

    def _coql_value(self, module: str, holder: dict[str, Any], name: str, value: Any) -> Any:
        """A lookup as ``{"name", "id"}`` (or ``{"id"}``); other values as stored."""
        field_def = self._fields.get(module, {}).get(name)
        if field_def is None or not field_def.is_lookup:
            return value
        target_id = _lookup_id(value)
        if target_id is None:
            return None
        if not self.coql_lookup_names:
            return {"id": target_id}
        target, target_module = self._follow(module, name, value, holder)
        display = self._display_name(target_module, target) if target is not None else value.get("name")
        return {"name": display, "id": target_id}

    # -- attachments and updates -------------------------------------------

    def _attachment_api(self, method: str, module: str, record_id: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> _Reply:
        if record_id not in self._records[module]:
            return _Reply(400, envelope("INVALID_DATA", "the related id given seems to be invalid", {"resource_path_index": 1}))
        if method == "GET":
            if not query.get("fields"):
                return _missing("fields")
            return self._page(self._attachments.get((module, record_id), []), query)
        if method != "POST":
            return _Reply(405, envelope("INVALID_REQUEST_METHOD", "The http request method type is not a valid one"))
        if len(body) > self.attachment_limit_bytes + MULTIPART_OVERHEAD:
            return _too_large()
        part = _multipart_file(headers.get("content-type", ""), body)
        if part is None:
            return _Reply(400, envelope("MANDATORY_NOT_FOUND", "required field not found", {"api_name": "file"}))
        name, content = part
        if len(content) > self.attachment_limit_bytes:
            return _too_large()
        now = zoho_time(self.now())
        creator = self._acting_user()
        by = {"name": creator["full_name"], "id": creator["id"]}
        attachment_id = self.new_id()
        self._attachments.setdefault((module, record_id), []).append({
            "id": attachment_id, "File_Name": name, "Size": str(len(content)), "Created_Time": now, "Modified_Time": now,
            "Created_By": by, "Owner": by, "Parent_Id": {"id": record_id, "module": {"api_name": module}}, "$file_id": secrets.token_hex(16),
            "content": content,
        })
        details = {"Modified_Time": now, "Modified_By": by, "Created_Time": now, "id": attachment_id, "Created_By": by}
        return _Reply(200, {"data": [{"code": "SUCCESS", "details": details, "message": "attachment uploaded successfully", "status": "success"}]})

    def _update(self, module: str, record_id: str, body: bytes) -> _Reply:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _Reply(400, envelope("INVALID_DATA", "the input data is not a valid JSON", {}))
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            return _Reply(400, envelope("MANDATORY_NOT_FOUND", "required field not found", {"api_name": "data", "json_path": "$.data"}))
        record = self._records[module].get(record_id)
        if record is None:
            answer = envelope("INVALID_DATA", "the id given seems to be invalid", {"api_name": "id", "json_path": "$.data[0].id"})
            return _Reply(400, {"data": [answer]})
        changes = {key: value for key, value in data[0].items() if key != "id"}
        for name, value in changes.items():
            problem = self._format_problem(module, name, value) or self._reference_problem(module, name, value, {**record, **changes})
            if problem:
                answer = envelope("INVALID_DATA", "invalid data", {"api_name": name, "json_path": f"$.data[0].{name}", **problem})
                return _Reply(400, {"data": [answer]})
        now = zoho_time(self.now())
        creator = self._acting_user()
        by = {"name": creator["full_name"], "id": creator["id"]}
        self._store(module, {**record, **changes, "Modified_Time": now, "Modified_By": by})
        details = {"Modified_Time": now, "Modified_By": by, "Created_Time": record.get("Created_Time"), "id": record_id, "Created_By": record.get("Created_By")}
        return _Reply(200, {"data": [{"code": "SUCCESS", "details": details, "message": "record updated", "status": "success"}]})

    # -- inserts ----------------------------------------------------------

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
            problem = self._format_problem(module, name, value) or self._reference_problem(module, name, value, record)
            if problem:
                return envelope("INVALID_DATA", "invalid data", {"api_name": name, "json_path": f"{where}.{name}", **problem})
        stored = {key: value for key, value in record.items() if key != "id"}
        now = zoho_time(self.now())
        creator = self._acting_user()
        by = {"name": creator["full_name"], "id": creator["id"]}
        record_id = self.new_id()
        stored.update({"id": record_id, "Created_Time": now, "Modified_Time": now, "Created_By": by, "Modified_By": by})
        stored.setdefault("Owner", {**by, "email": creator["email"]})
        if module == "Leads":
            stored["Converted__s"] = stored["$converted"] = False
        self._store(module, stored)
        details = {"Modified_Time": now, "Modified_By": by, "Created_Time": now, "id": record_id, "Created_By": by}
        return {"code": "SUCCESS", "details": details, "message": "record added", "status": "success"}

    @staticmethod
    def _format_problem(module: str, name: str, value: Any) -> dict[str, Any] | None:
        if (module, name) in PICKLISTS:
            return None if value in PICKLISTS[(module, name)] else {"expected_data_type": "picklist"}
        if (module, name) in DATETIME_FIELDS:
            return None if isinstance(value, str) and _is_datetime(value) else {"expected_data_type": "datetime"}
        if (module, name) in DATE_FIELDS:
            return None if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else {"expected_data_type": "date"}
        if name == "Call_Duration":
            return None if isinstance(value, str) and _DURATION.fullmatch(value) else {"expected_data_type": "text"}
        if isinstance(value, str) and len(value) > 32_000:
            return {"maximum_length": 32_000}
        return None

    def _reference_problem(self, module: str, name: str, value: Any, record: dict[str, Any]) -> dict[str, Any] | None:
        """Lookups must name a stored record (``What_Id`` one of the module in ``$se_module``)."""
        if name == "Owner":
            # A deactivated user cannot own a record: Zoho answers INVALID_DATA on Owner.
            user = self._users.get(str(value.get("id"))) if isinstance(value, dict) else None
            valid = user is not None and user.get("status") == "active"
        elif name == "What_Id":
            target = record.get("$se_module")
            valid = isinstance(value, dict) and target in MODULES and str(value.get("id")) in self._records[target]
        elif name == "$se_module":
            return None if value in MODULES else {"expected_data_type": "text"}
        else:
            field_def = self._fields[module].get(name)
            if field_def is None or field_def.data_type != "lookup":
                return None
            valid = isinstance(value, dict) and any(str(value.get("id")) in self._records[target] for target in field_def.targets)
        return None if valid else {"expected_data_type": "lookup"}


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

    def log_message(self, format: str, *args: Any) -> None:
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
        if parts.path.endswith("/Attachments") and length > self.sim.attachment_limit_bytes + MULTIPART_OVERHEAD:
            self.close_connection = True
            self._write(_too_large(), method, parts, started)
            return
        if length > MAX_BODY and not parts.path.endswith("/Attachments"):
            self.close_connection = True
            self._write(_Reply(413, envelope("INVALID_DATA", "request body too large")), method, parts, started)
            return
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        counted = parts.path.startswith(API)
        admitted = self.sim.enter() if counted else True
        try:
            reply = self.sim.handle(method, parts.path, parts.query, headers, body) if admitted else _Reply(429)
        except ConnectionAbortedError:
            self.close_connection = True
            self._record(method, parts, 0, started, body)
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        finally:
            if counted:
                self.sim.leave()
        self._write(reply, method, parts, started, body)

    def _write(self, reply: _Reply, method: str, parts: Any, started: float, sent: bytes = b"") -> None:
        payload = b""
        if isinstance(reply.body, bytes):
            payload = reply.body
        elif reply.body is not None:
            payload = json.dumps(reply.body).encode("utf-8")
        bodiless = reply.status in (204, 304)
        self._record(method, parts, reply.status, started, sent)
        try:
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if not bodiless:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not bodiless:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _record(self, method: str, parts: Any, status: int, started: float, body: bytes = b"") -> None:
        with self.sim._lock:
            self.sim.log.append(LoggedRequest(method, parts.path, parts.query, status, (time.perf_counter() - started) * 1000, body))


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


@dataclass(frozen=True)
class OrgSummary:
    """What :func:`generate_org` made: numbers (E.164) by the kind of record that owns them.

    ``deals``: numbers of contacts with an open deal (the call goes to the deal's
    owner); ``contacts``: contacts without one; ``owner_of``: the id of the user a
    number's call should reach.
    """

    leads: tuple[str, ...]
    deals: tuple[str, ...]
    contacts: tuple[str, ...]
    accounts: tuple[str, ...]
    owner_of: dict[str, str] = field(hash=False)
    users: tuple[dict[str, Any], ...] = field(hash=False)

    def kinds(self) -> dict[str, tuple[str, ...]]:
        return {"lead": self.leads, "deal": self.deals, "contact": self.contacts, "account": self.accounts}


_NUMBER_LAYOUTS = ("{cc} {a} {b} {c}", "{cc}-{a}-{b}-{c}", "{cc}{a}{b}{c}", "({cc}) {a} {b} {c}", "{cc} {a}.{b}.{c}")
_OPEN_STAGES = tuple(stage for stage, forecast in STANDARD_STAGES if forecast == "Open")


class _OrgMaker:
    """Records for :func:`generate_org`: unique numbers, typed with spaces, dashes, dots or brackets."""

    def __init__(self, sim: ZohoSimulator, seed: int, users: int):
        self.sim = sim
        self.rng = random.Random(seed)
        self.numbers = itertools.count(600_000_001)
        self.owners = [sim.add_user(f"Rep {n:03d}", f"rep{n:03d}@example.com", Extension=str(200 + n)) for n in range(users)]
        self.owner_links = [{"name": owner["full_name"], "id": owner["id"], "email": owner["email"]} for owner in self.owners]
        now = sim.now()
        self.stamps = sorted(zoho_time(now - timedelta(seconds=self.rng.randrange(365 * 86400))) for _ in range(4096))
        self.owner_of: dict[str, str] = {}

    def pick(self, choices: Any) -> Any:
        # random.choice costs three times as much; 100,000 records draw this 400,000 times.
        return choices[int(self.rng.random() * len(choices))]

    def number(self) -> tuple[str, str]:
        """A new number: (E.164, as typed)."""
        digits = str(next(self.numbers))
        layout = self.pick(_NUMBER_LAYOUTS)
        return "+34" + digits, layout.format(cc="+34", a=digits[:3], b=digits[3:6], c=digits[6:])

    def common(self) -> dict[str, Any]:
        """Owner and times of a new record."""
        first = int(self.rng.random() * len(self.stamps))
        last = first + int(self.rng.random() * (len(self.stamps) - first))
        return {"Owner": dict(self.pick(self.owner_links)), "Created_Time": self.stamps[first], "Modified_Time": self.stamps[last]}

    def add(self, module: str, phone_field: str, **fields: Any) -> tuple[dict[str, Any], str]:
        """A new record with a new number in ``phone_field``: the record and its number (E.164)."""
        e164, typed = self.number()
        fields.update(self.common())
        fields[phone_field] = typed
        return self.sim.add_record(module, **fields), e164

    def owns(self, numbers: list[str], number: str, record: dict[str, Any]) -> None:
        numbers.append(number)
        self.owner_of[number] = record["Owner"]["id"]


def generate_org(sim: ZohoSimulator, records: int, *, seed: int = 0, users: int = 20) -> OrgSummary:
    """Add ``records`` records to ``sim``: 40% leads, 30% contacts, 10% accounts, 20% deals.

    Every lead, contact and account has its own number; a deal has none but
    names a contact and that contact's account, and the contact's number
    counts as the deal's. The same ``seed`` makes the same org.
    """
    maker = _OrgMaker(sim, seed, users)
    accounts_n, contacts_n = records // 10, records * 3 // 10
    deals_n = min(records // 5, contacts_n)
    leads_n = records - accounts_n - contacts_n - deals_n
    leads: list[str] = []
    deals: list[str] = []
    contacts: list[str] = []
    accounts: list[str] = []
    with sim._lock:
        account_records = []
        for n in range(accounts_n):
            account, number = maker.add("Accounts", "Phone", Account_Name=f"Account {n}")
            account_records.append(account)
            maker.owns(accounts, number, account)
        for n in range(contacts_n):
            account = account_records[n % len(account_records)] if account_records else None
            link = {"Account_Name": {"name": account["Account_Name"], "id": account["id"]}} if account else {}
            phone_field = maker.pick(("Phone", "Phone", "Mobile", "Home_Phone"))
            contact, number = maker.add("Contacts", phone_field, Last_Name=f"Contact {n}", Full_Name=f"Contact {n}", **link)
            if n >= deals_n:
                maker.owns(contacts, number, contact)
                continue
            deal = sim.add_record(
                "Deals", **maker.common(), Deal_Name=f"Deal {n}", Stage=maker.pick(_OPEN_STAGES),
                Contact_Name={"name": contact["Full_Name"], "id": contact["id"]}, **link,
            )
            maker.owns(deals, number, deal)
        for n in range(leads_n):
            lead, number = maker.add(
                "Leads", maker.pick(("Phone", "Mobile")), Last_Name=f"Lead {n}", Full_Name=f"Lead {n}",
                Company=f"Company {n}", Lead_Status="Not Contacted",
            )
            maker.owns(leads, number, lead)
    return OrgSummary(tuple(leads), tuple(deals), tuple(contacts), tuple(accounts), maker.owner_of, tuple(maker.owners))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Zoho CRM simulator on loopback, with demo data.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only makes sense)")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay every CRM API answer by this much")
    parser.add_argument("--token-ttl-s", type=int, default=3600)
    parser.add_argument("--max-concurrency", type=int, default=None, help="answer 429 past this many requests at once")
    parser.add_argument("--no-demo-data", action="store_true")
    parser.add_argument("--records", type=int, default=0, help="also generate this many leads, contacts, accounts and deals")
    parser.add_argument("--seed", type=int, default=0, help="the generated org's seed")
    args = parser.parse_args(argv)
    sim = ZohoSimulator(host=args.host, port=args.port, latency_s=args.latency_ms / 1000, token_ttl_s=args.token_ttl_s, max_concurrency=args.max_concurrency)
    if not args.no_demo_data:
        load_demo_data(sim)
    if args.records > 0:
        summary = generate_org(sim, args.records, seed=args.seed)
        counts = ", ".join(f"{len(numbers)} {kind} numbers" for kind, numbers in summary.kinds().items())
        print(f"Generated {args.records} records: {counts} (from +34600000001 up).")
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
