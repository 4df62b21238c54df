"""The routing policy: from a caller's number to a dial target, within a deadline.

One decision, in order: the DID picks a policy; the caller's number is
normalised; the CRM (and, for the LastAgent rule, our own call history) is
asked; the candidates of the lookup order are walked, with hours and device
states, then the fallbacks. The deadline covers all of it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Sequence

from crmlookup.backend import CrmBackend
from crmlookup.errors import CrmError
from crmlookup.phone import InvalidNumber, PhoneNumber, normalise
from crmlookup.records import LookupResult, Match

from .availability import DeviceStateProbe, NoDeviceStates
from .call import InboundCall
from .candidates import SENIOR_MANAGER, TEAM, rule_candidates
from .chooser import Chooser, Ring, StateChecker
from .deadlines import LOOP_DEADLINES, Deadlines
from .decision import RouteDecision, RouteStatus, Trace
from .history import CallHistory
from .hours import utc_now
from .policy import Policy
from .policy_settings import LAST_AGENT, TICKETS
from .settings import RoutingSettings

_NO_PROBE = NoDeviceStates("no device-state probe given")


@dataclass
class Found:
    """What the sources said about the caller."""

    result: LookupResult
    failure: RouteStatus | None = None  # TIMEOUT or ERROR when the CRM could not answer
    failure_reason: str = ""
    last_extension: str | None = None


class Router:
    """Decides where an inbound call goes. Never raises for CRM trouble.

    ``history`` serves the LastAgent rule and ``tickets`` (Zoho Desk, behind
    its cache) the Tickets rule; a configuration that uses a rule without its
    source is refused here, naming the key. ``clock`` gives the current time
    for business hours (aware datetimes). ``deadlines`` keeps the routing
    deadline: the running event loop's by default (see :mod:`.deadlines`).
    ``explain=False``: decisions carry no ``steps`` (the --explain detail), which
    are then not even formatted; the reason and the chain are the same.
    """

    def __init__(
        self,
        settings: RoutingSettings,
        backend: CrmBackend,
        *,
        history: CallHistory | None = None,
        tickets: CrmBackend | None = None,
        clock: Callable[[], datetime] = utc_now,
        deadlines: Deadlines = LOOP_DEADLINES,
        explain: bool = True,
    ):
        self.settings = settings
        self.backend = backend
        self.history = history
        self.tickets = tickets
        self.book = settings.book
        self._clock = clock
        self._deadlines = deadlines
        self._explain = explain
        self._deadline_s = settings.deadline_ms / 1000
        self._fresh = _fresh_answers(backend)
        self._fresh_tickets = _fresh_answers(tickets) if tickets is not None else None
        require_history(settings, history)
        require_tickets(settings, tickets)

    async def decide(self, call: InboundCall, probe: DeviceStateProbe | None = None) -> RouteDecision:
        """The decision for ``call``, always within ``deadline_ms``.

        ``probe`` answers device-state questions over the call's own channel;
        without one no state is known and every candidate is presumed free.
        A slow CRM gives ``TIMEOUT``, a failing one ``ERROR``, an unusable
        caller ID ``NOMATCH``; the caller is never kept waiting past the deadline.
        """
        started = time.perf_counter()
        deadline_at = self._deadlines.now() + self._deadline_s
        decision = await self._decide(call, probe or _NO_PROBE, deadline_at)
        decision.lookup_ms = int((time.perf_counter() - started) * 1000)
        return decision

    async def _decide(self, call: InboundCall, probe: DeviceStateProbe, deadline_at: float) -> RouteDecision:
        policy = self.book.for_did(call.did)
        trace = Trace(self._explain)
        explain = trace.explain  # the steps' text is only made where someone reads it (see Trace)
        if explain:
            trace.step(f"DID {call.did!r}: policy {policy.name}")
        caller = policy.rewrite.apply(call.caller)
        if caller != call.caller and explain:
            trace.step(f"caller {call.caller!r} rewritten to {caller!r} ({policy.rewrite.describe()})")
        try:
            number = normalise(caller, self.settings.default_region)
        except InvalidNumber as exc:
            trace.step(f"caller {caller!r}: {exc} (numbers without a country code are read in region {self.settings.default_region})")
            trace.note(str(exc))
            return self._decision(RouteStatus.NOMATCH, policy, trace)
        if explain:
            trace.step(f"caller {caller!r} normalised to {number.e164} (region {self.settings.default_region})")
        found = await self._find(policy, number, deadline_at, trace)
        candidates = rule_candidates(policy, found.result.matches, found.last_extension)
        checker = None
        if policy.states is not None:
            checker = StateChecker(probe, policy.states, deadline_at, self._deadlines)
        else:
            trace.step("availability: not checked (check_availability = false)")
        ring = await Chooser(policy, checker, self._clock(), trace).choose(candidates)
        if checker is not None and checker.stopped:
            trace.step(f"device state: not asked further ({checker.stopped})")
            if ring is not None and ring.unchecked:
                trace.note(f"state unchecked ({checker.stopped})")
        decision = self._conclude(policy, found, ring, trace)
        decision.normalised_number = number.e164
        decision.from_cache = found.result.from_cache
        decision.source = "cache" if found.result.from_cache else found.result.source
        decision.source_age_s = found.result.age_s
        decision.device_states = dict(checker.states) if checker else {}
        return decision

    async def _find(self, policy: Policy, number: PhoneNumber, deadline_at: float, trace: Trace) -> Found:
        """Ask the CRM and, if the policy uses them, the call history and Zoho Desk: at the same time, within the one deadline."""
        if not policy.uses_last_agent and not policy.uses_tickets:
            found = await self._lookup(policy, number, deadline_at)
        else:
            import asyncio  # the call history and Desk are the server's: only it (on its event loop) has them

            found, last_extension, tickets = await asyncio.gather(
                self._lookup(policy, number, deadline_at),
                self._last_agent(policy, number, deadline_at, trace) if policy.uses_last_agent else _nothing(),
                self._tickets(number, deadline_at) if policy.uses_tickets else _nothing(),
            )
            found.last_extension = last_extension
            if tickets is not None:
                _merge_tickets(found, tickets, bool(policy.modules))
        for step in found.result.steps:
            trace.step(step)
        if found.result.note:
            trace.note(found.result.note)
        if found.failure is not None:
            trace.step(found.failure_reason)
        elif policy.modules and not found.result.matches:
            trace.step("no open record matches")
        if trace.explain:
            for match in found.result.matches:
                trace.step(f"matched {match.module} {match.record_id} ({match.name!r}), owner {_owner_text(match)}")
        return found

    async def _lookup(self, policy: Policy, number: PhoneNumber, deadline_at: float) -> Found:
        if not policy.modules:
            return Found(LookupResult())
        return await self._ask(self.backend, self._fresh, "CRM", number, policy.modules, deadline_at)

    async def _tickets(self, number: PhoneNumber, deadline_at: float) -> Found:
        """The caller's open tickets, within the same deadline; a Desk that fails or is slow is a reason, not an error."""
        assert self.tickets is not None  # checked at construction
        return await self._ask(self.tickets, self._fresh_tickets, f"{TICKETS}: Zoho Desk", number, (TICKETS,), deadline_at)

    async def _ask(
        self,
        source: CrmBackend,
        fresh: Callable[[PhoneNumber, Sequence[str]], LookupResult | None] | None,
        what: str,
        number: PhoneNumber,
        modules: Sequence[str],
        deadline_at: float,
    ) -> Found:
        """``source``'s answer for ``modules``, from its cache's memory when it has one there,
        else within the deadline; ``what`` names the source in the reason when it fails."""
        if fresh is not None:
            # Most calls are answered from memory, without waiting: no deadline
            # timer for those (arming and cancelling one cost more than the
            # whole cache lookup: about 39,000 instructions of 1,140,000 per call).
            answer = fresh(number, modules)
            if answer is not None:
                return Found(answer)
        try:
            async with self._deadlines.within(deadline_at):
                return Found(await source.lookup(number, modules))
        except TimeoutError:
            return Found(LookupResult(), RouteStatus.TIMEOUT, f"{what} did not answer within {self.settings.deadline_ms} ms")
        except CrmError as exc:
            return Found(LookupResult(), RouteStatus.ERROR, f"{what} lookup failed: {exc}")

    async def _last_agent(self, policy: Policy, number: PhoneNumber, deadline_at: float, trace: Trace) -> str | None:
        assert self.history is not None  # checked at construction
        age = policy.last_agent_max_age_s
        try:
            async with self._deadlines.within(deadline_at):
                extension = await self.history.last_answered_extension(number.e164, age)
        except TimeoutError:
            trace.link(f"{LAST_AGENT}: the call history did not answer in time")
            return None
        except Exception as exc:  # the history is our own store: its failure must never cost the route
            trace.link(f"{LAST_AGENT}: the call history failed ({type(exc).__name__}: {exc})")
            return None
        if extension is None:
            trace.link(f"{LAST_AGENT}: no answered call from {number.e164} in the last {_age_text(age)}")
            return None
        if not policy.targets.is_valid(extension):
            trace.link(f"{LAST_AGENT}: recorded extension {extension!r} is not a valid extension, ignored")
            return None
        trace.link(f"{LAST_AGENT}: {extension} answered {number.e164} within the last {_age_text(age)}")
        return extension

    def _conclude(self, policy: Policy, found: Found, ring: Ring | None, trace: Trace) -> RouteDecision:
        """The route decision from what the lookup found and whom (if anyone) to ring."""
        best = found.result.best
        if ring is None:
            if found.failure is not None:
                trace.note(found.failure_reason)
                return self._decision(found.failure, policy, trace, match=best)
            if best is None:
                trace.note(_not_found(found.result))
                return self._decision(RouteStatus.NOMATCH, policy, trace)
            trace.note("no one to ring")
            return self._decision(RouteStatus.UNMAPPED, policy, trace, match=best)
        candidate = ring.candidate
        if found.failure is not None:
            trace.note(found.failure_reason)
        if candidate.rule == SENIOR_MANAGER:
            status = RouteStatus.UNMAPPED
        elif candidate.rule == TEAM or len(_users(policy, ring)) > 1:
            status = RouteStatus.SHARED
        else:
            status = RouteStatus.OWNER
        decision = self._decision(status, policy, trace, match=candidate.match or best)
        decision.rule = candidate.rule
        decision.extensions = ring.extensions
        decision.target = policy.targets.dial_string(ring.extensions)
        if trace.explain:
            trace.step(f"{status.value}: target {decision.target}")
        return decision

    @staticmethod
    def _decision(status: RouteStatus, policy: Policy, trace: Trace, match: Match | None = None) -> RouteDecision:
        return RouteDecision(status, reason=trace.reason(), match=match, steps=trace.steps, policy=policy.name, chain=trace.chain)


def _fresh_answers(backend: CrmBackend) -> Callable[[PhoneNumber, Sequence[str]], LookupResult | None] | None:
    """The cache's answer-from-memory, when ``backend`` is the lookup cache.

    The cache's module is not imported to find out: a backend can only be a
    :class:`~crmlookup.cache.CachedBackend` once that module is loaded, and the
    classic AGI's route path, which has no cache, thus never loads it (nor the
    asyncio it needs).
    """
    cache = sys.modules.get("crmlookup.cache")
    if cache is not None and isinstance(backend, cache.CachedBackend):
        fresh: Callable[[PhoneNumber, Sequence[str]], LookupResult | None] = backend.fresh
        return fresh
    return None


def last_agent_keys(settings: RoutingSettings) -> list[str]:
    """The ``lookup_order`` keys that use the LastAgent rule (which reads the call history)."""
    uses = [("lookup_order", settings.lookup_order)]
    uses += [(f"policies.{name}.lookup_order", p.lookup_order or ()) for name, p in settings.policies.items()]
    return [f"routing.{key}" for key, rules in uses if LAST_AGENT in rules]


def ticket_keys(settings: RoutingSettings) -> list[str]:
    """The ``lookup_order`` keys that use the Tickets rule (which asks Zoho Desk)."""
    uses = [("lookup_order", settings.lookup_order)]
    uses += [(f"policies.{name}.lookup_order", p.lookup_order or ()) for name, p in settings.policies.items()]
    return [f"routing.{key}" for key, rules in uses if TICKETS in rules]


def require_tickets(settings: RoutingSettings, tickets: CrmBackend | None) -> None:
    """Refuse a policy that uses the Tickets rule when Zoho Desk is not configured."""
    keys = ticket_keys(settings)
    if tickets is None and keys:
        raise ValueError(f"{keys[0]}: {TICKETS} needs Zoho Desk ([zoho_desk] org_id and credentials), which is not configured")


async def _nothing() -> None:
    return None


def _merge_tickets(found: Found, tickets: Found, crm_asked: bool) -> None:
    """The tickets' matches beside the CRM's (the lookup order puts each rule's in its place).

    A Desk that could not answer leaves its reason in the steps; it decides the
    status only when no CRM record was asked for (Tickets is the only source).
    """
    result, extra = found.result, tickets.result
    result.matches = [*result.matches, *extra.matches]
    result.steps = [*result.steps, *extra.steps]
    result.passed_over = [*result.passed_over, *extra.passed_over]
    if not crm_asked:
        # Desk was the only source asked: where the answer came from is its to say (the call's log line).
        result.source, result.from_cache, result.age_s = extra.source, extra.from_cache, extra.age_s
    if tickets.failure is None:
        return
    if crm_asked or found.failure is not None:
        result.steps.append(tickets.failure_reason)
    else:
        found.failure, found.failure_reason = tickets.failure, tickets.failure_reason


def require_history(settings: RoutingSettings, history: CallHistory | None) -> None:
    """Refuse a policy that uses the LastAgent rule when there is no call history to read."""
    keys = last_agent_keys(settings)
    if history is None and keys:
        raise ValueError(f"{keys[0]}: {LAST_AGENT} needs the call history (recorded call outcomes), which is not available")


def _users(policy: Policy, ring: Ring) -> frozenset[str]:
    """Everyone who rings: the people the config maps to the extensions, and the candidate."""
    users = policy.staff.users_on(ring.extensions)
    return users | {ring.candidate.person} if ring.candidate.person else users


# Records named in the reason of a caller known only by records that do not count.
_PASSED_OVER_NAMED = 3


def _not_found(result: LookupResult) -> str:
    """Why no record decides: not in the CRM at all, or in it only by records that do not count."""
    if not result.passed_over:
        return "caller not in the CRM"
    named = result.passed_over[:_PASSED_OVER_NAMED]
    more = f" and {len(result.passed_over) - len(named)} more" if len(result.passed_over) > len(named) else ""
    return f"no open record of the caller: {'; '.join(named)}{more}"


def _owner_text(match: Match) -> str:
    owner = match.owner
    if owner is None:
        return "none"
    return f"{owner.id} ({owner.name or owner.email or 'no name'})"


def _age_text(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"
