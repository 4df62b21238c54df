"""What the CRM knows about a recorded call: the caller's record, its owner, who answered.

Resolved once per outcome, when the worker first takes it up, and kept with
the outcome so every later attempt writes the same thing. A call that
``route`` could not finish (the caller hung up first, the CRM was slow) has no
``CRM_*`` values: the caller's record is looked up now instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping

from crmlookup.backend import CrmBackend
from crmlookup.phone import normalise
from crmlookup.records import Match, Owner
from crmlookup.writer import RecordRef

from ..outcome import CallOutcome
from ..policy_settings import LAST_AGENT, TICKETS
from ..settings import RoutingSettings

DEALS = "Deals"
# Statuses whose CRM_* values name the caller's record.
_ROUTED_TO_RECORD = frozenset({"OWNER", "SHARED", "UNMAPPED"})


@dataclass(frozen=True)
class CrmContext:
    """The caller as the CRM sees them, and who answered, for one outcome."""

    module: str = ""  # empty: the caller is not in the CRM
    record_id: str = ""
    record_name: str = ""
    owner_id: str = ""
    owner_name: str = ""
    owner_extensions: tuple[str, ...] = ()
    answerer_id: str = ""  # the CRM user whose extension answered, when known
    answerer_name: str = ""
    # When the context was resolved: task due times count from here.
    planned_at: float = 0.0
    # The owner of the lead planned for an unknown caller (so later calls from them find it).
    lead_owner_id: str = ""
    # The record's owner when the CRM says they are no longer an active user
    # ("Name (id)"): owner_id is then the fallback owner, or empty.
    inactive_owner: str = ""
    # For a deal: the contact (or account) it was found through, the person who called.
    via_module: str = ""
    via_id: str = ""
    via_name: str = ""
    # The Zoho Desk ticket that routed the call (the Tickets rule), and its agent:
    # the call is logged on it too. The fields above are then the CRM's record of the caller.
    ticket_id: str = ""
    ticket_agent_id: str = ""

    @property
    def record(self) -> RecordRef | None:
        return RecordRef(self.module, self.record_id) if self.module and self.record_id else None

    @property
    def who(self) -> RecordRef | None:
        """The person who called, when the record is not one (a deal's contact)."""
        return RecordRef(self.via_module, self.via_id) if self.via_module and self.via_id else None

    @property
    def caller_name(self) -> str:
        return self.via_name or self.record_name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrmContext:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["owner_extensions"] = tuple(values.get("owner_extensions", ()))
        return cls(**values)


class ExtensionDirectory:
    """Extension -> CRM user, from the CRM's users and ``routing.owner_extensions``.

    ``known``: ``users`` are the CRM's active users, so a user id not among
    them is not one (False when the CRM's users could not be read).
    """

    def __init__(self, users: Iterable[Owner], owner_extensions: Mapping[str, tuple[str, ...]], *, known: bool = True):
        self._by_id: dict[str, Owner] = {}
        by_email: dict[str, Owner] = {}
        for user in users:
            self._by_id[user.id] = user
            if user.email:
                by_email[user.email.lower()] = user
        self._crm_ids = frozenset(self._by_id)
        # A CRM always has a user (the one whose credentials we use): no users means none could be told.
        self.known = known and bool(self._crm_ids)
        self._by_extension: dict[str, Owner] = {}
        for user in self._by_id.values():
            for extension in user.extensions:
                self._by_extension.setdefault(extension, user)
        # The config map wins over what the CRM knows, as it does for routing.
        for key, extensions in owner_extensions.items():
            mapped = by_email.get(key.lower()) if "@" in key else self._by_id.get(key, Owner(key))
            if mapped is None:
                continue  # an email the CRM does not know: nobody to credit
            user_extensions = tuple(extensions)
            self._by_id[mapped.id] = Owner(mapped.id, mapped.name, mapped.email, user_extensions)
            for extension in user_extensions:
                self._by_extension[extension] = self._by_id[mapped.id]

    def by_extension(self, extension: str) -> Owner | None:
        return self._by_extension.get(extension) if extension else None

    def by_id(self, user_id: str) -> Owner | None:
        return self._by_id.get(user_id) if user_id else None

    def is_inactive(self, user_id: str) -> bool:
        """True when the CRM's users are known and ``user_id`` is not one of them (deactivated, deleted)."""
        return bool(user_id) and self.known and user_id not in self._crm_ids


async def resolve_context(
    outcome: CallOutcome, backend: CrmBackend, routing: RoutingSettings, users: ExtensionDirectory, now: float, *, fallback_owner: str = ""
) -> CrmContext:
    """The context of ``outcome``; raises :class:`~crmlookup.errors.CrmError` if the CRM must be asked and fails.

    A record owner the CRM no longer has as an active user would be refused
    as the owner of what is written: ``fallback_owner`` (or the CRM's default
    owner, when empty) takes their place.
    """
    return _without_inactive_owner(await _resolve(outcome, backend, routing, users, now), users, fallback_owner)


def _without_inactive_owner(context: CrmContext, users: ExtensionDirectory, fallback_owner: str) -> CrmContext:
    if not users.is_inactive(context.owner_id):
        return context
    fallback = users.by_id(fallback_owner)
    return replace(
        context,
        owner_id=fallback_owner,
        owner_name=fallback.name if fallback else "",
        owner_extensions=(),
        inactive_owner=f"{context.owner_name} ({context.owner_id})" if context.owner_name else context.owner_id,
    )


def crm_modules(routing: RoutingSettings) -> tuple[str, ...]:
    """The record kinds of the lookup order the CRM itself answers (not LastAgent, not Desk's Tickets)."""
    return tuple(rule for rule in routing.lookup_order if rule not in (LAST_AGENT, TICKETS))


async def _resolve(outcome: CallOutcome, backend: CrmBackend, routing: RoutingSettings, users: ExtensionDirectory, now: float) -> CrmContext:
    route = outcome.route
    if route.module == TICKETS and route.record_id:
        # Routed by a Desk ticket: the call goes on the ticket, and on the caller's CRM record as ever.
        unrouted = replace(outcome, route=replace(route, status="", module="", record_id=""))
        context = await _resolve(unrouted, backend, routing, users, now)
        return replace(context, ticket_id=route.record_id, ticket_agent_id=route.owner_id)
    answerer = users.by_extension(outcome.answered_extension)
    answer: dict[str, Any] = {"answerer_id": answerer.id, "answerer_name": answerer.name} if answerer else {}
    route = outcome.route
    if route.status in _ROUTED_TO_RECORD and route.has_record:
        owner = users.by_id(route.owner_id)
        extensions = tuple(owner.extensions) if owner else ()
        if route.extension and route.extension not in extensions:
            extensions += (route.extension,)
        context = CrmContext(
            module=route.module,
            record_id=route.record_id,
            record_name=route.record_name,
            owner_id=route.owner_id,
            owner_name=owner.name if owner else "",
            owner_extensions=extensions,
            planned_at=now,
            **answer,
        )
        return await _with_deal_contact(context, outcome, backend, routing) if route.module == DEALS else context
    if not outcome.caller_e164:
        return CrmContext(planned_at=now, **answer)
    # route never answered, timed out, or found nobody: ask the CRM now (the
    # caller may also have become known since, e.g. a lead from an earlier call).
    modules = crm_modules(routing)
    if not modules:
        return CrmContext(planned_at=now, **answer)
    result = await backend.lookup(normalise(outcome.caller_e164, routing.default_region), modules)
    best = result.best
    if best is None:
        return CrmContext(planned_at=now, **answer)
    owner = best.owner
    known = users.by_id(owner.id) if owner else None
    return CrmContext(
        module=best.module,
        record_id=best.record_id,
        record_name=best.name,
        via_module=best.via_module,
        via_id=best.via_id,
        via_name=best.via_name,
        owner_id=owner.id if owner else "",
        owner_name=owner.name if owner else "",
        owner_extensions=tuple(known.extensions if known else (owner.extensions if owner else ())),
        planned_at=now,
        **answer,
    )


async def _with_deal_contact(context: CrmContext, outcome: CallOutcome, backend: CrmBackend, routing: RoutingSettings) -> CrmContext:
    """A deal's context with the contact it was found through.

    The channel names the deal, not that contact: the caller is looked up
    (the lookup cache usually still holds the answer route had).
    """
    if not outcome.caller_e164:
        return context
    result = await backend.lookup(normalise(outcome.caller_e164, routing.default_region), routing.lookup_order)
    deal: Match | None = next((match for match in result.matches if match.record_id == context.record_id), None)
    if deal is None or not deal.via_id:
        return context
    # The channel's CRM_CALLER_NAME was the contact's name; the record's own is the deal's.
    return replace(context, record_name=deal.name, via_module=deal.via_module, via_id=deal.via_id, via_name=deal.via_name)
