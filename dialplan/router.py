"""The routing policy: from a caller's number to a dial target, within a deadline."""

from __future__ import annotations

import asyncio
import time

from crmlookup.backend import CrmBackend
from crmlookup.errors import CrmError
from crmlookup.phone import InvalidNumber, PhoneNumber, normalise
from crmlookup.records import LookupResult, Match

from .call import InboundCall
from .decision import RouteDecision, RouteStatus
from .settings import RoutingSettings
from .targets import DialTargets


class Router:
    """Decides where an inbound call goes. Never raises for CRM trouble."""

    def __init__(self, settings: RoutingSettings, backend: CrmBackend):
        self.settings = settings
        self.backend = backend
        self._targets = DialTargets(settings.dial_template, settings.extension_pattern)
        self._deadline_s = settings.deadline_ms / 1000

    async def decide(self, call: InboundCall) -> RouteDecision:
        """The decision for ``call``, always within ``deadline_ms``.

        A slow CRM gives ``TIMEOUT``, a failing one ``ERROR``, an unusable caller
        ID ``NOMATCH``; the caller is never kept waiting past the deadline.
        """
        started = time.perf_counter()
        decision = await self._decide(call)
        decision.lookup_ms = int((time.perf_counter() - started) * 1000)
        return decision

    async def _decide(self, call: InboundCall) -> RouteDecision:
        try:
            number = normalise(call.caller, self.settings.default_region)
        except InvalidNumber as exc:
            step = f"caller {call.caller!r}: {exc} (numbers without a country code are read in region {self.settings.default_region})"
            return RouteDecision(RouteStatus.NOMATCH, reason=str(exc), steps=[step])
        steps = [f"caller {call.caller!r} normalised to {number.e164} (region {self.settings.default_region})"]
        try:
            async with asyncio.timeout(self._deadline_s):
                result = await self.backend.lookup(number, self.settings.lookup_order)
        except TimeoutError:
            reason = f"CRM did not answer within {self.settings.deadline_ms} ms"
            return RouteDecision(RouteStatus.TIMEOUT, reason=reason, normalised_number=number.e164, steps=steps + [reason])
        except CrmError as exc:
            reason = f"CRM lookup failed: {exc}"
            return RouteDecision(RouteStatus.ERROR, reason=reason, normalised_number=number.e164, steps=steps + [reason])
        return self._choose(number, result, steps)

    def _choose(self, number: PhoneNumber, result: LookupResult, steps: list[str]) -> RouteDecision:
        steps = steps + result.steps
        best = result.best
        if best is None:
            steps.append("no open record matches")
            return RouteDecision(RouteStatus.NOMATCH, reason="caller not in the CRM", normalised_number=number.e164, from_cache=result.from_cache, steps=steps)
        steps.append(f"matched {best.module} {best.record_id} ({best.name!r})")
        decision = RouteDecision(RouteStatus.UNMAPPED, match=best, normalised_number=number.e164, from_cache=result.from_cache, steps=steps)
        if best.owner is None:
            decision.reason = f"{best.module} {best.record_id} has no owner"
            steps.append(decision.reason)
            return decision
        extensions = self._owner_extensions(best)
        steps.append(f"owner {best.owner.name or best.owner.id} ({best.owner.email or best.owner.id}) -> extensions {extensions or 'none'}")
        if not extensions:
            decision.reason = f"owner {best.owner.id} has no valid extension"
            return decision
        decision.status = RouteStatus.OWNER
        decision.extensions = extensions
        decision.target = self._targets.dial_string(extensions)
        decision.reason = f"owner of {best.module} {best.record_id}"
        steps.append(f"target {decision.target}")
        return decision

    def _owner_extensions(self, match: Match) -> list[str]:
        """The owner's valid extensions: the config map first, then what the CRM knows."""
        owner = match.owner
        assert owner is not None
        mapped = self.settings.owner_extensions
        configured = mapped.get(owner.id) or (mapped.get(owner.email.lower()) if owner.email else None)
        return self._targets.valid_extensions(configured if configured is not None else owner.extensions)
