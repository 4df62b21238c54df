"""Zoho CRM as the mirror's change feed: every record, then what changed.

* **Records**: ``GET /crm/v8/{module}?fields=...&sort_by=Modified_Time&sort_order=asc``,
  200 a page (1 API credit each), following ``info.next_page_token``. With
  ``If-Modified-Since`` only what changed since is listed, and Zoho answers
  304 when nothing did. Leads are listed with ``converted=both`` so a
  converted lead is seen (and stops deciding who owns the caller).
* **Deleted**: ``GET /crm/v8/{module}/deleted?type=all`` with ``If-Modified-Since``.
* **Users**: ``GET /crm/v8/users?type=AllUsers`` with ``If-Modified-Since``.
* **Phone fields**: from the fields metadata, custom ones included.

Why the records API and not COQL or Bulk Read: a COQL page of 2,000 records
costs 3 credits against 10 for the same records here, but a COQL query lists
at most 10,000 records and needs an extra scope; Bulk Read is an
asynchronous job (minutes) that returns a CSV. Listing costs 1 credit per 200
records once, at the first load and at each daily reconcile; what the mirror
spends every day is the refresh (one request per module, changes or not),
which no other API does for less. docs/zoho.md gives the arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any

from ..errors import CrmBadResponse
from ..mirror.feed import Page
from ..mirror.records import MirrorRecord, MirrorUser
from .api import ZohoApi
from .fields import STANDARD_PHONE_FIELDS, PhoneFields
from .metadata import DealStages, StageTable, users_of, user_extensions
from .records import lookup_id, lookup_name, modified_at, owner, record_id, records_of, text

MODULES = ("Leads", "Contacts", "Accounts", "Deals")
NAME_FIELD = {"Leads": "Full_Name", "Contacts": "Full_Name", "Accounts": "Account_Name", "Deals": "Deal_Name"}
# What the mirror reads of each module, besides the phone fields.
BASE_FIELDS = {
    "Leads": ("Full_Name", "Owner", "Lead_Status", "Converted__s", "Modified_Time"),
    "Contacts": ("Full_Name", "Owner", "Modified_Time"),
    "Accounts": ("Account_Name", "Owner", "Modified_Time"),
    "Deals": ("Deal_Name", "Owner", "Stage", "Pipeline", "Contact_Name", "Account_Name", "Modified_Time"),
}
# A deal is reached through these lookup fields: its contact's and its account's phones.
DEAL_PARENTS = (("Contact_Name", "Contacts"), ("Account_Name", "Accounts"))
PER_PAGE = "200"
# Zoho's answers to a page token it will not take (expired after 24 h, bound to
# other parameters, past the 100,000 records a token may list): the listing
# goes on from the last record read instead.
PAGE_TOKEN_REFUSALS = frozenset({"EXPIRED_VALUE", "TOKEN_BOUND_DATA_MISMATCH", "INVALID_DATA", "PAGINATION_LIMIT_EXCEEDED"})


@dataclass(frozen=True)
class ZohoOpenRule:
    """Zoho's rule for a record that no longer decides the owner: a converted or closed lead, a deal not open."""

    closed_statuses: frozenset[str]
    stages: StageTable = field(default_factory=StageTable)

    def is_open(self, module: str, status: str, pipeline: str, converted: bool) -> bool:
        if module == "Leads":
            return not converted and status.casefold() not in self.closed_statuses
        if module == "Deals":
            forecast = self.stages.forecast_type(status, pipeline)
            return forecast is None or forecast == "open"  # a stage no pipeline knows counts as open, as live
        return True

    def signature(self) -> str:
        return json.dumps([sorted(self.closed_statuses), self.stages.by_pipeline, self.stages.merged], sort_keys=True)


class ZohoFeed:
    """Reads Zoho CRM for the mirror (every request counted under the purpose ``mirror``)."""

    modules: tuple[str, ...] = MODULES
    cursor_refusals: frozenset[str] = PAGE_TOKEN_REFUSALS

    def __init__(
        self,
        api: ZohoApi,
        stages: DealStages,
        phone_fields: PhoneFields,
        *,
        closed_statuses: tuple[str, ...],
        extension_field: str,
        warned: dict[str, str] | None = None,
    ):
        self._api = api
        self._stages = stages
        self._phone_fields = phone_fields
        self._closed = frozenset(status.casefold() for status in closed_statuses)
        self._extension_field = extension_field
        # Users whose extension field is not a clean list, warned about once (shared with the live lookups).
        self._warned = warned if warned is not None else {}

    @property
    def api(self) -> ZohoApi:
        return self._api

    def retry_in(self) -> float:
        return self._api.retry_in()

    def requests_sent(self) -> dict[str, int]:
        return dict(self._api.sent)

    async def prepare(self, *, fresh: bool) -> ZohoOpenRule:
        """The phone fields and the deal stages (read again when ``fresh``); the open rule they make."""
        for module in STANDARD_PHONE_FIELDS:
            await self._phone_fields.get(module, None, fresh=fresh)
        table = await self._stages.table(None, fresh=fresh)
        return ZohoOpenRule(self._closed, table)

    def phone_fields_of(self, module: str) -> tuple[str, ...]:
        return self._phone_fields.current(module) if module in STANDARD_PHONE_FIELDS else ()

    def fields_of(self, module: str) -> tuple[str, ...]:
        return (*BASE_FIELDS[module], *self.phone_fields_of(module))

    async def list_page(self, module: str, *, since: datetime | None, token: str | None) -> Page:
        """One page of ``module``'s records, oldest change first (only those changed after ``since``)."""
        params = {"fields": ",".join(self.fields_of(module)), "per_page": PER_PAGE, "sort_by": "Modified_Time", "sort_order": "asc"}
        if module == "Leads":
            params["converted"] = "both"
        if token:
            params["page_token"] = token
        headers = {"If-Modified-Since": zoho_time(since)} if since is not None else None
        answer = await self._api.fetch("GET", f"/{module}", params=params, headers=headers, purpose="mirror")
        records = [self.record(module, item) for item in records_of(answer.body, f"{module} list")]
        info = (answer.body or {}).get("info")
        next_token = None
        if isinstance(info, dict) and info.get("more_records") is True:
            next_token = info.get("next_page_token")
            if not isinstance(next_token, str) or not next_token:
                raise CrmBadResponse(f"{module} list: more records but no next_page_token")
        newest = max((record.modified_at for record in records), default=0.0)
        return Page(records, next_token, answer.server_time, newest)

    def record(self, module: str, item: dict[str, Any]) -> MirrorRecord:
        """A Zoho record (from a listing or a search) as the mirror keeps it."""
        what = f"{module} record"
        rid = record_id(item, what)
        phones = tuple(value for name in self.phone_fields_of(module) if (value := text(item, name, what)))
        status = pipeline = ""
        converted = False
        parents: tuple[tuple[str, str], ...] = ()
        if module == "Leads":
            status = text(item, "Lead_Status", what)
            converted = item.get("Converted__s") is True or item.get("$converted") is True
        elif module == "Deals":
            status = text(item, "Stage", what)
            pipeline = lookup_name(item, "Pipeline")
            parents = tuple((parent, parent_id) for field_name, parent in DEAL_PARENTS if (parent_id := lookup_id(item, field_name, what)))
        return MirrorRecord(
            module, rid, text(item, NAME_FIELD[module], what), owner(item, what), phones,
            modified_at(item, what), status, pipeline, converted, parents,
        )

    async def deleted(self, module: str, since: datetime | None) -> list[str]:
        """Ids of ``module``'s records deleted after ``since`` (Zoho keeps 60 days of them)."""
        ids: list[str] = []
        headers = {"If-Modified-Since": zoho_time(since)} if since is not None else None
        for page in range(1, 1000):
            params = {"type": "all", "page": str(page), "per_page": PER_PAGE}
            answer = await self._api.fetch("GET", f"/{module}/deleted", params=params, headers=headers, purpose="mirror")
            items = records_of(answer.body, f"{module} deleted")
            ids += [record_id(item, f"{module} deleted record") for item in items]
            info = (answer.body or {}).get("info")
            if not (isinstance(info, dict) and info.get("more_records") is True):
                break
        return ids

    async def users(self, since: datetime | None) -> tuple[list[MirrorUser], datetime | None]:
        """Users changed after ``since`` (all of them without), active or not; and Zoho's clock."""
        found: list[MirrorUser] = []
        server_time = None
        headers = {"If-Modified-Since": zoho_time(since)} if since is not None else None
        for page in range(1, 100):
            params = {"type": "AllUsers", "page": str(page), "per_page": PER_PAGE}
            answer = await self._api.fetch("GET", "/users", params=params, headers=headers, purpose="mirror")
            server_time = server_time or answer.server_time
            if answer.body is None:
                break
            for user in users_of(answer.body):
                user_id = record_id(user, "user")
                active = text(user, "status", f"user {user_id}").casefold() == "active"
                found.append(MirrorUser(
                    user_id, text(user, "full_name", "user"), text(user, "email", "user"), active,
                    user_extensions(user, self._extension_field, self._warned) if active else (),
                ))
            info = answer.body.get("info")
            if not (isinstance(info, dict) and info.get("more_records") is True):
                break
        return found, server_time

    async def existing(self, module: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` (at most 100) are still records of ``module``."""
        params = {"ids": ",".join(ids), "fields": "id"}
        body = await self._api.get(f"/{module}", params, purpose="mirror")
        return {record_id(item, f"{module} record") for item in records_of(body, f"{module} by id")}


def zoho_time(moment: datetime) -> str:
    """``2019-07-25T15:26:49+00:00``: the form Zoho's If-Modified-Since takes."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()
