"""The caller's open Zoho Desk tickets, asked live in one round trip.

A lookup sends, at the same time (within ``max_concurrency``):

* ``GET /api/v1/tickets/search?phone=<every form of the number>&sortBy=-modifiedTime&limit=<search_limit>``:
  Desk compares the ticket's phone text, so the compact forms and the forms
  people type are all sent (at most 30 values, Desk's limit); 204 means no
  ticket has the number;
* ``GET /api/v1/contacts/search?phone=...`` (``search_contacts``): a
  contact with the number whose tickets have no phone of their own (raised
  by mail) has them asked for by ``contactId``, a second request made only
  then;
* the portal's agents and departments (``/agents``, ``/departments``), when
  the copy kept for ``agents_ttl_s`` is older than that;
* the agents' availability (``/agentAvailability?departmentId=-1``), when
  ``use_presence`` and the copy kept for ``presence_ttl_s`` is older.

Which ticket decides: the open ones (``statusType`` ``Open``, and ``On
Hold`` unless ``include_on_hold = false``), most recently modified first;
closed ones are passed over (named in the route's reason). A ticket's
``assigneeId`` is its agent: the agent's ``extn`` is what the CRM says the
extension is (``routing.owner_extensions`` by agent id or email wins), an
agent Desk lists as not ACTIVE never rings, one Desk says is OFFLINE is
passed over like a phone in use. An unassigned ticket names its department
(id and name), for the team that takes it.

The tickets are asked live (behind the lookup cache), not mirrored: a
support line's callers are few next to a CRM's records, and Desk's search
answers in one request (see ``benchmarks/desk_bench.py`` and the README).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from ..circuit import CircuitBreaker
from ..condition import Condition
from ..errors import CrmError
from ..http import clip, pooled_client
from ..phone import PhoneNumber
from ..records import LookupResult, Match, Owner
from ..stats import RequestStats
from ..zoho_common.tokens import open_token_source, read_credentials
from .api import DeskApi
from .settings import ENV_PREFIX, ZohoDeskSettings

logger = logging.getLogger("crmroute.zoho_desk")

TICKETS = "Tickets"
TOKEN_FILE = "zoho-desk-token.json"
# Desk takes at most 30 values of one search parameter.
MAX_PHONE_VALUES = 30
# Contacts one number may belong to, at most (a shared office line).
MAX_CONTACTS = 10
AGENTS_PAGE = 200
PRESENCE_PAGE = 50
# Pages read at most per listing (10,000 agents): a portal larger than that is not a support desk.
MAX_PAGES = 50


@dataclass(frozen=True)
class Agent:
    """A Desk agent, as a ticket's assignee needs them."""

    id: str
    name: str
    email: str
    extension: str
    active: bool


@dataclass
class _Kept:
    """A listing kept for a while, refreshed by one request at a time."""

    ttl_s: float
    value: dict[str, Any] = field(default_factory=dict)
    read_at: float | None = None
    flight: asyncio.Task[None] | None = None

    def stale(self, now: float) -> bool:
        return self.read_at is None or now - self.read_at >= self.ttl_s


class ZohoDeskBackend:
    """Looks callers' tickets up in one Zoho Desk portal; a :class:`~crmlookup.backend.CrmBackend` for ``Tickets``."""

    name = "zoho_desk"
    modules = (TICKETS,)

    def __init__(self, api: DeskApi, settings: ZohoDeskSettings, *, clock: Callable[[], float] = time.monotonic):
        self.api = api
        self.settings = settings
        self._clock = clock
        self._agents = _Kept(settings.agents_ttl_s)
        self._departments = _Kept(settings.agents_ttl_s)
        self._presence = _Kept(settings.presence_ttl_s)

    @classmethod
    def open(cls, settings: ZohoDeskSettings, environ: dict[str, str] | None = None) -> ZohoDeskBackend:
        """The backend with its own pooled HTTP client and token; credentials read now (errors name the key)."""
        if not settings.org_id:
            raise CrmError("zoho_desk.org_id is not set (the portal's organisation id, sent as the orgId header)")
        credentials = read_credentials(settings, section="zoho_desk", env_prefix=ENV_PREFIX, environ=environ)
        client = pooled_client(connect_timeout_ms=settings.connect_timeout_ms, read_timeout_ms=settings.read_timeout_ms,
                               max_concurrency=settings.max_concurrency)
        stats = RequestStats(cls.name)
        tokens = open_token_source(client, settings, credentials, token_file_name=TOKEN_FILE, default_api_domain=settings.desk_url, stats=stats)
        api = DeskApi(client, tokens, CircuitBreaker.from_settings(settings), org_id=settings.org_id, desk_url=settings.desk_url,
                      max_concurrency=settings.max_concurrency, stats=stats)
        return cls(api, settings)

    @property
    def conditions(self) -> dict[str, Condition]:
        """What may be in trouble, for the server's health notes: Desk reachable, its credentials accepted."""
        return {"zoho_desk": self.api.reachable, "zoho_desk_credentials": self.api.tokens.credentials}

    @property
    def request_stats(self) -> RequestStats:
        """The requests sent to Desk (searches, listings, writes, tokens), for the server's metrics."""
        return self.api.stats

    async def lookup(self, number: PhoneNumber, modules: Sequence[str]) -> LookupResult:
        """The caller's open tickets, most recently modified first; CrmError when the search fails."""
        if TICKETS not in modules:
            return LookupResult()
        steps: list[str] = []
        now = self._clock()
        side = [self._refresh(self._agents, self._read_agents, now, steps, "agents"),
                self._refresh(self._departments, self._read_departments, now, steps, "departments")]
        if self.settings.use_presence:
            side.append(self._refresh(self._presence, self._read_presence, now, steps, "agent availability"))
        tickets, *_ = await asyncio.gather(self._search(number, steps), *side)
        return self._result(tickets, steps)

    async def _search(self, number: PhoneNumber, steps: list[str]) -> list[dict[str, Any]]:
        """The tickets with the caller's number and, at the same time, the contacts with it: a
        contact's tickets that lack the number (raised by mail) take a second request."""
        phones = ",".join(list(dict.fromkeys([*number.variants(), *number.typed_forms()]))[:MAX_PHONE_VALUES])
        tickets: list[dict[str, Any]]
        contacts: list[str] = []
        if self.settings.search_contacts:
            tickets, contacts = await asyncio.gather(self._tickets({"phone": phones}, steps), self._contacts(phones, steps))
        else:
            tickets = await self._tickets({"phone": phones}, steps)
        seen = {_text(ticket.get("contactId")) for ticket in tickets}
        missing = [contact for contact in contacts if contact not in seen][:MAX_PHONE_VALUES]
        if missing:
            steps.append(f"{len(missing)} contact(s) with this number: their tickets asked for too")
            known = {_text(ticket.get("id")) for ticket in tickets}
            tickets += [t for t in await self._tickets({"contactId": ",".join(missing)}, steps) if _text(t.get("id")) not in known]
        return tickets

    async def _tickets(self, criteria: dict[str, str], steps: list[str]) -> list[dict[str, Any]]:
        params = {**criteria, "sortBy": "-modifiedTime", "limit": str(self.settings.search_limit)}
        rows, count = _rows(await self.api.get("/tickets/search", params, steps), "GET /api/v1/tickets/search")
        if count > len(rows):
            steps.append(f"{count} tickets match; the {len(rows)} most recently modified were read")
        return rows

    async def _contacts(self, phones: str, steps: list[str]) -> list[str]:
        """The ids of the contacts whose phone or mobile is the caller's number (a failure costs only this part)."""
        try:
            body = await self.api.get("/contacts/search", {"phone": phones, "limit": str(MAX_CONTACTS)}, steps)
        except CrmError as exc:
            steps.append(f"Zoho Desk contacts not searched ({exc}): tickets by their own phone only")
            return []
        rows, _count = _rows(body, "GET /api/v1/contacts/search")
        return [contact_id for contact_id in (_text(row.get("id")) for row in rows) if contact_id]

    async def _refresh(self, kept: _Kept, read: Callable[[list[str]], Awaitable[dict[str, Any]]], now: float,
                       steps: list[str], what: str) -> None:
        """Bring ``kept`` up to date if it is stale; a failure keeps the old copy (and is a step, not an error)."""
        if not kept.stale(now):
            return
        if kept.flight is None or kept.flight.done():
            kept.flight = asyncio.get_running_loop().create_task(self._fill(kept, read, what), name=f"read Desk {what}")
            # Its failure is told to whoever waits; one nobody waits for any more (the deadline) is not an unread error.
            kept.flight.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            await asyncio.shield(kept.flight)
        except CrmError as exc:
            steps.append(f"Zoho Desk {what} not read ({exc}): {'the copy read before' if kept.read_at is not None else 'none known'} used")

    async def _fill(self, kept: _Kept, read: Callable[[list[str]], Awaitable[dict[str, Any]]], what: str) -> None:
        trace: list[str] = []
        kept.value = await read(trace)
        kept.read_at = self._clock()
        logger.debug("Zoho Desk %s read: %d", what, len(kept.value))

    async def _pages(self, path: str, params: dict[str, str], size: int, trace: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            body = await self.api.get(path, {**params, "limit": str(size), "from": str(page * size)}, trace, purpose="directory")
            data = (body or {}).get("data")
            batch = [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []
            rows += batch
            more = (body or {}).get("hasMore")
            if len(batch) < size or more is False:
                break
        return rows

    async def departments(self) -> dict[str, str]:
        """The portal's departments, id -> name, read now (``check-config --online``)."""
        return {key: str(value) for key, value in (await self._read_departments([])).items()}

    async def _read_agents(self, trace: list[str]) -> dict[str, Any]:
        agents = {}
        for row in await self._pages("/agents", {}, AGENTS_PAGE, trace):
            agent_id = _text(row.get("id"))
            if agent_id:
                name = _text(row.get("name")) or " ".join(filter(None, (_text(row.get("firstName")), _text(row.get("lastName")))))
                agents[agent_id] = Agent(agent_id, name, _text(row.get("emailId")), _text(row.get("extn")),
                                         _text(row.get("status")).upper() in ("", "ACTIVE"))
        return agents

    async def _read_departments(self, trace: list[str]) -> dict[str, Any]:
        rows = await self._pages("/departments", {}, AGENTS_PAGE, trace)
        return {_text(row.get("id")): _text(row.get("name")) for row in rows if _text(row.get("id"))}

    async def _read_presence(self, trace: list[str]) -> dict[str, Any]:
        rows = await self._pages("/agentAvailability", {"departmentId": "-1"}, PRESENCE_PAGE, trace)
        return {_text(row.get("agentId")): _text(row.get("status")).upper() for row in rows if _text(row.get("agentId"))}

    def _result(self, tickets: list[dict[str, Any]], steps: list[str]) -> LookupResult:
        open_types = self.settings.open_status_types
        matches, passed_over = [], []
        for ticket in sorted(tickets, key=lambda t: _text(t.get("modifiedTime")), reverse=True):
            ticket_id = _text(ticket.get("id"))
            if not ticket_id:
                continue
            label = f"{TICKETS} #{clip(_text(ticket.get('ticketNumber')) or ticket_id, 20)}"
            status_type = _text(ticket.get("statusType"))
            if status_type not in open_types:
                passed_over.append(f"{label} is {clip(status_type or 'of unknown status', 20).lower()}")
                continue
            matches.append(self._match(ticket, ticket_id))
        return LookupResult(matches, steps, passed_over=passed_over, known=bool(tickets), source="live")

    def _match(self, ticket: dict[str, Any], ticket_id: str) -> Match:
        number = _text(ticket.get("ticketNumber")) or ticket_id
        name = clip(f"#{number} {_text(ticket.get('subject'))}".strip(), 120)
        department = _text(ticket.get("departmentId"))
        department_name = self._departments.value.get(department, "")
        found = ticket.get("contact")
        contact: dict[str, Any] = found if isinstance(found, dict) else {}
        contact_name = " ".join(filter(None, (_text(contact.get("firstName")), _text(contact.get("lastName")))))
        return Match(
            TICKETS, ticket_id, name, self._owner(_text(ticket.get("assigneeId"))), True,
            via_module="Contacts" if contact_name else "", via_id=_text(ticket.get("contactId")), via_name=clip(contact_name, 120),
            departments=tuple(filter(None, (department, department_name))),
        )

    def _owner(self, agent_id: str) -> Owner | None:
        if not agent_id:
            return None
        agent = self._agents.value.get(agent_id)
        away = "offline in Zoho Desk" if self._presence.value.get(agent_id) == "OFFLINE" else ""
        if agent is None:
            return Owner(agent_id, away=away)
        return Owner(agent.id, clip(agent.name, 120), agent.email, (agent.extension,) if agent.extension else (), agent.active, away)

    async def aclose(self) -> None:
        for kept in (self._agents, self._departments, self._presence):
            if kept.flight is not None and not kept.flight.done():
                kept.flight.cancel()
        await self.api.aclose()


def _rows(body: dict[str, Any] | None, label: str) -> tuple[list[dict[str, Any]], int]:
    """A search answer's rows and its count (204: none)."""
    if body is None:
        return [], 0
    data = body.get("data")
    if not isinstance(data, list):
        from ..errors import CrmBadResponse

        raise CrmBadResponse(f"{label}: the answer has no data list")
    count = body.get("count")
    return [row for row in data if isinstance(row, dict)], count if isinstance(count, int) else len(data)


def _text(value: object) -> str:
    """A Desk field as text: ids come as strings or numbers; null is empty."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (str, int)):
        return str(value).strip()
    return ""
