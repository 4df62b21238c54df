"""The Zoho CRM backend: who owns this number?

For each module of the lookup order, first hit wins:

* ``Leads``: ``GET /crm/v8/Leads/search?phone=...`` searches every phone
  field; converted leads are left out by the search itself, and leads whose
  ``Lead_Status`` is one of ``closed_lead_statuses`` are skipped.
* ``Deals``: deals have no phone field; they are reached through the
  contacts that match (their ``Deals`` related list), or, when no contact
  matches, through the matching accounts. A deal counts when its stage's
  ``forecast_type`` in the pipeline settings is ``Open``.
* ``Contacts``, ``Accounts``: the phone search.

The number is searched in its compact forms (and, if configured, the forms
people type), fewest requests first: the search stops at the first form that
finds a usable record. Zoho answers 204 with no body when nothing matches.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence
from urllib.parse import quote

import httpx

from ..circuit import CircuitBreaker
from ..phone import PhoneNumber
from ..records import LookupResult, Match, Owner
from ..secrets import read_secret
from .api import ZohoApi
from .auth import TokenSource
from .http import clip
from .metadata import ActiveUsers, DealStages
from .records import lookup_name, more_records, owner, record_id, records_of, text
from .settings import ENV_PREFIX, ZohoSettings
from .token_file import TokenFile, default_token_file

logger = logging.getLogger("crmroute.zoho")

# Only what a decision needs is asked for.
SEARCH_FIELDS = {
    "Leads": "Full_Name,Lead_Status,Owner",
    "Contacts": "Full_Name,Account_Name,Owner",
    "Accounts": "Account_Name,Owner",
}
DEAL_FIELDS = "Deal_Name,Stage,Pipeline,Owner"
NAME_FIELD = {"Leads": "Full_Name", "Contacts": "Full_Name", "Accounts": "Account_Name", "Deals": "Deal_Name"}
# One page of the search: a phone number shared by more records than this is noted in the steps.
PER_PAGE = "200"
# Deals are looked for under this many matching contacts (or accounts) at most.
MAX_DEAL_PARENTS = 5


class ZohoBackend:
    """Looks callers up in Zoho CRM (API v8)."""

    name = "zoho"

    def __init__(self, api: ZohoApi, settings: ZohoSettings):
        self._api = api
        self._settings = settings
        self._closed_statuses = frozenset(status.casefold() for status in settings.closed_lead_statuses)
        self._stages = DealStages(api, settings.deal_layout_ids, settings.pipeline_ttl_s)
        # One copy of the org's users for the lookups and the call-logging writer (one /users fetch each users_ttl_s).
        self._active_users = ActiveUsers(api, settings.user_extension_field, settings.users_ttl_s)
        # Lookups read them only for the extension field.
        self._users = self._active_users if settings.user_extension_field else None

    @classmethod
    def open(cls, settings: ZohoSettings, environ: dict[str, str] | None = None) -> "ZohoBackend":
        """The backend with its one pooled HTTP client; credentials read now (errors name the key)."""
        secrets = {
            name: read_secret(f"zoho.{name}", getattr(settings, name), getattr(settings, f"{name}_file"), ENV_PREFIX + name.upper(), environ)
            for name in ("client_id", "client_secret", "refresh_token")
        }
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_ms / 1000,
            read=settings.read_timeout_ms / 1000,
            write=settings.read_timeout_ms / 1000,
            pool=None,  # waiting for a connection is bounded by our own semaphore
        )
        limits = httpx.Limits(max_connections=settings.max_concurrency + 2, max_keepalive_connections=settings.max_concurrency + 2)
        client = httpx.AsyncClient(timeout=timeout, limits=limits, headers={"Accept": "application/json"}, follow_redirects=False)
        tokens = TokenSource(
            client,
            settings.accounts_server,
            client_id=secrets["client_id"],
            client_secret=secrets["client_secret"],
            refresh_token=secrets["refresh_token"],
            default_api_domain=settings.default_api_domain,
            token_file=TokenFile(settings.token_cache_file or default_token_file()),
        )
        breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failures,
            open_s=settings.breaker_open_s,
            backoff_initial_s=settings.backoff_initial_ms / 1000,
            backoff_max_s=settings.backoff_max_ms / 1000,
        )
        api = ZohoApi(client, tokens, breaker, max_concurrency=settings.max_concurrency, api_domain_override=settings.api_domain)
        return cls(api, settings)

    @property
    def api(self) -> ZohoApi:
        """The authenticated API client, shared with the call-logging writer (one token, one pool)."""
        return self._api

    @property
    def settings(self) -> ZohoSettings:
        return self._settings

    @property
    def active_users(self) -> ActiveUsers:
        """The org's active users, shared with the call-logging writer."""
        return self._active_users

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        lookup = _Lookup(self, number)
        for module in modules:
            matches = await lookup.find(module)
            if matches:
                if self._users is not None:
                    matches = [await self._with_user(match, lookup.trace) for match in matches]
                return LookupResult(matches=matches, steps=lookup.trace)
        lookup.trace.append(f"zoho: no open record in {', '.join(modules)}")
        return LookupResult(matches=[], steps=lookup.trace, passed_over=list(dict.fromkeys(lookup.passed_over)))

    async def _with_user(self, match: Match, trace: list[str]) -> Match:
        """The owner with the extension(s) of the Users custom field (none if the user is inactive)."""
        if match.owner is None or self._users is None:
            return match
        user = await self._users.get(match.owner.id, trace)
        if user is None:
            trace.append(f"owner {match.owner.id} is not an active user: no extension from Zoho, and not rung")
            return dataclasses.replace(match, owner=dataclasses.replace(match.owner, active=False))
        enriched = Owner(match.owner.id, match.owner.name or user.name, match.owner.email or user.email, user.extensions)
        return dataclasses.replace(match, owner=enriched)

    async def aclose(self) -> None:
        await self._api.aclose()


class _Lookup:
    """One lookup: the searches made so far (a module is searched once) and the trace."""

    def __init__(self, backend: ZohoBackend, number: PhoneNumber):
        self.backend = backend
        self.api = backend._api
        forms = number.variants()
        if backend._settings.search_typed_formats:
            forms += number.typed_forms()
        self.forms = forms
        self.trace: list[str] = [f"zoho: phone forms to search, in order: {', '.join(forms)}"]
        self._found: dict[str, list[tuple[dict[str, Any], Match]]] = {}
        # Records that matched but do not count (a closed lead, a won or lost deal).
        self.passed_over: list[str] = []

    async def find(self, module: str) -> list[Match]:
        if module == "Deals":
            return await self._open_deals()
        return [match for _record, match in await self._search(module)]

    async def _search(self, module: str) -> list[tuple[dict[str, Any], Match]]:
        """The usable records of ``module`` for the first phone form that finds any."""
        if module in self._found:
            return self._found[module]
        usable: list[tuple[dict[str, Any], Match]] = []
        for form in self.forms:
            params = {"phone": form, "fields": SEARCH_FIELDS[module], "per_page": PER_PAGE}
            body = await self.api.get(f"/{module}/search", params, self.trace)
            records = records_of(body, f"{module} search")
            if more_records(body):
                self.trace.append(f"{module}: more than {PER_PAGE} records share {form}; reading the first page only")
            for record in records:
                match = self._match(module, record)
                if module == "Leads" and not match.is_open:
                    continue
                usable.append((record, match))
            if usable:
                self.trace.append(f"{module}: {len(usable)} record(s) found as {form!r}")
                break
        self._found[module] = usable
        return usable

    def _match(self, module: str, record: dict[str, Any]) -> Match:
        what = f"{module} record"
        rid = record_id(record, what)
        name = text(record, NAME_FIELD[module], what)
        is_open = True
        if module == "Leads":
            status = text(record, "Lead_Status", what)
            if status.casefold() in self.backend._closed_statuses:
                is_open = False
                self.trace.append(f"Leads {rid} skipped: Lead_Status {clip(status, 60)!r} counts as closed")
                self.passed_over.append(f"Leads {rid} is closed (Lead_Status {clip(status, 40)!r})")
        return Match(module, rid, name, owner(record, what), is_open)

    async def _open_deals(self) -> list[Match]:
        """Open deals of the matching contacts, else of the matching accounts."""
        parents = [("Contacts", record) for record, _match in await self._search("Contacts")]
        if not parents:
            parents = [("Accounts", record) for record, _match in await self._search("Accounts")]
        deals: list[Match] = []
        for parent_module, parent in parents[:MAX_DEAL_PARENTS]:
            parent_id = record_id(parent, f"{parent_module} record")
            path = f"/{parent_module}/{quote(parent_id, safe='')}/Deals"
            body = await self.api.get(path, {"fields": DEAL_FIELDS, "per_page": PER_PAGE}, self.trace)
            for record in records_of(body, f"{parent_module} {parent_id} deals"):
                match = await self._deal(record)
                if match is not None:
                    # The caller is the contact (or account) the deal hangs off: calls are logged on both.
                    parent_name = text(parent, NAME_FIELD[parent_module], f"{parent_module} record")
                    deals.append(dataclasses.replace(match, via_module=parent_module, via_id=parent_id, via_name=parent_name))
        return deals

    async def _deal(self, record: dict[str, Any]) -> Match | None:
        what = "Deals record"
        rid = record_id(record, what)
        stage = text(record, "Stage", what)
        pipeline = lookup_name(record, "Pipeline")
        forecast = await self.backend._stages.forecast_type(stage, pipeline, self.trace)
        if forecast is None:
            self.trace.append(f"Deals {rid}: stage {clip(stage, 60)!r} is in no pipeline's settings; counted as open")
        elif forecast != "open":
            self.trace.append(f"Deals {rid} skipped: stage {clip(stage, 60)!r} is {forecast}")
            self.passed_over.append(f"Deals {rid} is closed (stage {clip(stage, 40)!r})")
            return None
        return Match("Deals", rid, text(record, NAME_FIELD["Deals"], what), owner(record, what), True)
