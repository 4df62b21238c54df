"""The Zoho CRM backend: who owns this number, asked live in one round trip.

Every search a lookup needs is sent at once (within ``max_concurrency``),
and the lookup order's first hit still wins:

* ``Leads``, ``Contacts``, ``Accounts``: ``GET /crm/v8/{module}/search``
  with one ``criteria`` that asks every phone field of the module (custom
  ones too, from the fields metadata) for every form of the number:
  ``((Phone:in:+34928000000,928000000,...)or(Mobile:in:...))``. Converted
  leads are left out by the search itself; leads whose ``Lead_Status`` is one
  of ``closed_lead_statuses`` are skipped. Zoho answers 204 when nothing matches.
* ``Deals`` have no phone field: they are reached through the caller's
  contact or, when no contact matches, account. One COQL query (``POST
  /crm/v8/coql``, scope ``ZohoCRM.coql.READ``) finds them by their contact's
  and account's phones, in the same round trip. COQL may compare the text
  exactly, so it is asked for the forms people type as well
  (``928 00 00 00``, ``+34 928 000 000``...); a phone typed some other way
  finds its contact but not the contact's deal here (the mirror, which
  normalises every phone, does). Without the scope, or when COQL fails, the
  ``Deals`` related list of each matching contact (or account) is read: a
  second round trip. A deal counts when its stage's ``forecast_type`` in the
  pipeline settings is ``Open``.

Records found go to :attr:`ZohoBackend.on_found` (the mirror keeps them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Callable, Coroutine, Sequence
from urllib.parse import quote


from ..circuit import CircuitBreaker
from ..condition import Condition
from ..errors import CrmError
from ..mirror.records import MirrorRecord
from ..phone import PhoneNumber
from ..records import LookupResult, Match, Owner
from ..stats import RequestStats
from .api import ZohoApi
from .feed import BASE_FIELDS, NAME_FIELD, ZohoFeed
from .fields import PhoneFields
from ..http import pooled_client
from .http import clip
from .metadata import ActiveUsers, DealStages
from .query import MAX_CRITERIA, coql_any_of, criteria_any_of
from .records import lookup_id, lookup_name, more_records, owner, record_id, records_of, text
from .settings import ENV_PREFIX, ZohoSettings
from .token_file import TOKEN_FILE
from ..zoho_common.tokens import open_token_source, read_credentials

logger = logging.getLogger("crmroute.zoho")

# One page of a search: a phone number shared by more records than this is noted in the steps.
PER_PAGE = "200"
# Deals are looked for under this many matching contacts (or accounts) at most.
MAX_DEAL_PARENTS = 5
# COQL takes brackets in pairs; past this many conditions the query is left to the related lists.
MAX_COQL_CONDITIONS = 20
SEARCHED = ("Leads", "Contacts", "Accounts")
# What a deal is reached through, in order: contacts first, accounts only when no contact matches.
DEAL_PARENTS = (("Contacts", "Contact_Name"), ("Accounts", "Account_Name"))


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
        self.phone_fields = PhoneFields(api, settings.pipeline_ttl_s)
        # Called with the records each search found (the mirror stores them).
        self.on_found: Callable[[list[MirrorRecord]], None] | None = None
        self._feed = ZohoFeed(
            api, self._stages, self.phone_fields, closed_statuses=settings.closed_lead_statuses,
            extension_field=settings.user_extension_field, warned=self._active_users.warned,
        )
        self.coql_refused = ""  # why COQL is not used (a missing scope), once it was refused

    @classmethod
    def open(cls, settings: ZohoSettings, environ: dict[str, str] | None = None) -> ZohoBackend:
        """The backend with its one pooled HTTP client; credentials read now (errors name the key)."""
        credentials = read_credentials(settings, section="zoho", env_prefix=ENV_PREFIX, environ=environ)
        client = pooled_client(
            connect_timeout_ms=settings.connect_timeout_ms, read_timeout_ms=settings.read_timeout_ms, max_concurrency=settings.max_concurrency
        )
        stats = RequestStats(cls.name)
        tokens = open_token_source(
            client, settings, credentials, token_file_name=TOKEN_FILE, default_api_domain=settings.default_api_domain, stats=stats
        )
        breaker = CircuitBreaker.from_settings(settings)
        api = ZohoApi(client, tokens, breaker, max_concurrency=settings.max_concurrency, api_domain_override=settings.api_domain, stats=stats)
        return cls(api, settings)

    @property
    def api(self) -> ZohoApi:
        """The authenticated API client, shared with the call-logging writer (one token, one pool)."""
        return self._api

    @property
    def conditions(self) -> dict[str, Condition]:
        """What may be in trouble, by name, for the server's health: Zoho reachable, the credentials accepted."""
        return {"crm": self._api.reachable, "credentials": self._api.tokens.credentials}

    @property
    def request_stats(self) -> RequestStats:
        """The requests sent to Zoho (lookups, mirror, writes, tokens), for the server's metrics."""
        return self._api.stats

    @property
    def settings(self) -> ZohoSettings:
        return self._settings

    @property
    def feed(self) -> ZohoFeed:
        """This org as the mirror's change feed (the same client, token and metadata)."""
        return self._feed

    async def warm(self) -> None:
        """Read the metadata a lookup needs (phone fields, deal stages, users) before the first call needs it."""
        jobs: list[Coroutine[Any, Any, Any]] = [self.phone_fields.get(module, None) for module in SEARCHED]
        jobs.append(self._stages.table(None))
        if self._users is not None:
            jobs.append(self._users.all(None))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, CrmError):
                logger.info("zoho: metadata not read ahead (%s); the first lookups read it", outcome)

    @property
    def active_users(self) -> ActiveUsers:
        """The org's active users, shared with the call-logging writer."""
        return self._active_users

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        return await _Lookup(self, number, modules).run()

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

    def _found(self, module: str, items: list[dict[str, Any]]) -> None:
        if self.on_found is None or not items:
            return
        try:
            records = [self._feed.record(module, item) for item in items]
        except CrmError as exc:
            logger.debug("zoho: found %s records not kept: %s", module, exc)
            return
        self.on_found(records)

    async def aclose(self) -> None:
        await self._api.aclose()


Found = list[tuple[dict[str, Any], Match]]


class _Lookup:
    """One lookup: every search at once, then the lookup order's first usable hit."""

    def __init__(self, backend: ZohoBackend, number: PhoneNumber, modules: Sequence[str]):
        self.backend = backend
        self.api = backend.api
        self.number = number
        self.modules = list(modules)
        forms = number.variants()
        if backend.settings.search_typed_formats:
            forms += number.typed_forms()
        self.forms = forms
        # COQL may compare text exactly: the forms people type are asked too (a few more values, no more requests).
        self.coql_forms = list(dict.fromkeys([*forms, *number.typed_forms()]))
        self.trace: list[str] = [f"zoho: phone forms searched, all at once: {', '.join(forms)}"]
        # Records that matched but do not count (a closed lead, a won or lost deal).
        self.passed_over: list[str] = []

    async def run(self) -> LookupResult:
        wanted = set(self.modules)
        searches = [m for m in SEARCHED if m in wanted or ("Deals" in wanted and m != "Leads")]
        tasks: dict[str, asyncio.Task[Found]] = {m: asyncio.ensure_future(self._search(m)) for m in searches}
        if "Deals" in wanted:
            tasks["Deals"] = asyncio.ensure_future(self._deals(tasks["Contacts"], tasks["Accounts"]))
        try:
            for module in self.modules:
                if module not in tasks:
                    continue
                usable = [match for _record, match in await tasks[module]]
                if usable:
                    matches = [await self.backend._with_user(match, self.trace) for match in usable] if self.backend._users else usable
                    return LookupResult(matches=matches, steps=self.trace, source="live")
            self.trace.append(f"zoho: no open record in {', '.join(self.modules)}")
            return LookupResult(matches=[], steps=self.trace, source="live", passed_over=list(dict.fromkeys(self.passed_over)))
        except asyncio.CancelledError:
            # Cut short (the lookup was abandoned): what has not been sent yet is not sent.
            # A search that failed leaves the others to finish: they are on their way
            # already, and what they meet (Zoho's errors) is what opens the circuit breaker.
            for task in tasks.values():
                task.cancel()
            raise
        finally:
            for task in tasks.values():
                task.add_done_callback(_settled)  # searches not waited for finish for the mirror; their errors are read

    async def _search(self, module: str) -> Found:
        """The records of ``module`` any of whose phone fields holds any form of the number."""
        phone_fields = self.backend.phone_fields.current(module)
        fields = ",".join(dict.fromkeys((*BASE_FIELDS[module], *phone_fields)))
        chunks = [phone_fields[i:i + MAX_CRITERIA] for i in range(0, len(phone_fields), MAX_CRITERIA)]
        bodies = await asyncio.gather(*(
            self.api.get(f"/{module}/search", {"criteria": criteria_any_of(chunk, self.forms), "fields": fields, "per_page": PER_PAGE}, self.trace)
            for chunk in chunks
        ))
        records: dict[str, dict[str, Any]] = {}
        for body in bodies:
            if more_records(body):
                self.trace.append(f"{module}: more than {PER_PAGE} records share this number; reading the first page only")
            for record in records_of(body, f"{module} search"):
                records.setdefault(record_id(record, f"{module} record"), record)
        self.backend._found(module, list(records.values()))
        usable: Found = []
        for record in records.values():
            match = self._match(module, record)
            if module == "Leads" and not match.is_open:
                continue
            usable.append((record, match))
        if usable:
            self.trace.append(f"{module}: {len(usable)} record(s) found")
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

    # -- deals ----------------------------------------------------------------

    async def _deals(self, contacts: asyncio.Task[Found], accounts: asyncio.Task[Found]) -> Found:
        """Open deals of the matching contacts, else of the matching accounts."""
        by_coql = asyncio.ensure_future(self._coql_deals())
        try:
            parents = [("Contacts", record) for record, _match in await contacts]
            if not parents:
                parents = [("Accounts", record) for record, _match in await accounts]
            parents = parents[:MAX_DEAL_PARENTS]
            if not parents:
                return []
            listed = await self._deals_by_coql(by_coql)
        finally:
            by_coql.add_done_callback(_settled)
        records: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (parent module, parent, deal)
        for parent_module, parent in parents:
            parent_id = record_id(parent, f"{parent_module} record")
            if listed is None:
                found = await self._related_deals(parent_module, parent_id)
            else:
                lookup_field = dict(DEAL_PARENTS)[parent_module]
                found = [deal for deal in listed if lookup_id(deal, lookup_field, "Deals record") == parent_id]
            records += [(parent_module, parent, deal) for deal in found]
        deals: Found = []
        seen: set[str] = set()
        for parent_module, parent, record in records:
            match = await self._deal(record)
            if match is not None and match.record_id not in seen:
                seen.add(match.record_id)
                # The caller is the contact (or account) the deal hangs off: calls are logged on both.
                parent_name = text(parent, NAME_FIELD[parent_module], f"{parent_module} record")
                via = dataclasses.replace(match, via_module=parent_module, via_id=record_id(parent, "record"), via_name=parent_name)
                deals.append((record, via))
        return deals

    async def _coql_deals(self) -> list[dict[str, Any]] | None:
        """Deals whose contact or account holds a form of the number, by COQL; None when COQL cannot be used."""
        if self.backend.coql_refused:
            return None
        columns = [f"{lookup}.{name}" for module, lookup in DEAL_PARENTS for name in self.backend.phone_fields.current(module)]
        if len(columns) > MAX_COQL_CONDITIONS:
            return None
        query = f"select {', '.join(BASE_FIELDS['Deals'])} from Deals where {coql_any_of(columns, self.coql_forms)} limit {PER_PAGE}"
        body = await self.api.request("POST", "/coql", json_body={"select_query": query}, trace=self.trace, purpose="lookup")
        deals = records_of(body, "Deals by COQL")
        self.backend._found("Deals", deals)
        return deals

    async def _deals_by_coql(self, by_coql: asyncio.Future[list[dict[str, Any]] | None]) -> list[dict[str, Any]] | None:
        try:
            return await by_coql
        except CrmError as exc:
            if exc.code == "OAUTH_SCOPE_MISMATCH" and not self.backend.coql_refused:
                self.backend.coql_refused = str(exc)
                logger.warning(
                    "zoho: COQL refused (%s): deals are found through each contact's related list, a second request; "
                    "add the scope ZohoCRM.coql.READ to the refresh token (docs/zoho.md)", exc,
                )
            self.trace.append(f"Deals: COQL failed ({exc}); reading the related lists")
            return None

    async def _related_deals(self, parent_module: str, parent_id: str) -> list[dict[str, Any]]:
        path = f"/{parent_module}/{quote(parent_id, safe='')}/Deals"
        body = await self.api.get(path, {"fields": ",".join(BASE_FIELDS["Deals"]), "per_page": PER_PAGE}, self.trace)
        deals = records_of(body, f"{parent_module} {parent_id} deals")
        self.backend._found("Deals", deals)
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


def _settled(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("zoho: a search nobody waited for failed: %s", task.exception())
