"""Walk the candidates in policy order and pick the first who can take the call.

A candidate is passed over when they cannot ring at all (no owner, no valid
extension), are out of hours, or every phone of theirs is in a skip state.
Which fallbacks follow depends on why the first candidate was passed over:
``on_unmapped`` or ``on_unavailable``. Device states are asked at most once
per extension, one at a time, and never past the deadline: what is still
unknown then rings, and the reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from .availability import DeviceStateProbe, DeviceStateUnavailable, StateTemplate, read_state
from .candidates import SENIOR_MANAGER, TEAM, Candidate
from .deadlines import LOOP_DEADLINES, Deadlines
from .decision import Trace
from .policy import Policy

NEXT_OWNER = "next_owner"


@dataclass(frozen=True)
class Ring:
    """The chosen candidate and the extensions of theirs that ring."""

    candidate: Candidate
    extensions: list[str]
    unchecked: bool = False  # some of them ring without their state known


class StateChecker:
    """Asks Asterisk for each extension's state at most once per call, within the deadline."""

    def __init__(self, probe: DeviceStateProbe, template: StateTemplate, deadline_at: float, deadlines: Deadlines = LOOP_DEADLINES):
        self._probe = probe
        self._template = template
        self._deadline_at = deadline_at
        self._deadlines = deadlines
        self.states: dict[str, str] = {}
        self.stopped = ""  # why no more questions are asked

    async def state(self, extension: str) -> str | None:
        """The extension's state, or None when it could not be asked."""
        if extension in self.states:
            return self.states[extension]
        if self.stopped:
            return None
        if self._deadlines.now() >= self._deadline_at:
            self.stopped = "deadline"
            return None
        query = self._template.query(extension)
        try:
            async with self._deadlines.within(self._deadline_at):
                reply = await self._probe.state_of(query)
        except TimeoutError:
            self.stopped = "deadline"
            return None
        except DeviceStateUnavailable as exc:
            self.stopped = str(exc) or "probe unavailable"
            return None
        self.states[extension] = read_state(reply)
        return self.states[extension]


class Chooser:
    """Picks who rings for one call."""

    def __init__(self, policy: Policy, checker: StateChecker | None, now: datetime, trace: Trace):
        self._policy = policy
        self._checker = checker
        self._now = now
        self._trace = trace
        self._tried: set[str] = set()

    async def choose(self, candidates: list[Candidate]) -> Ring | None:
        """The first candidate who can ring, trying fallbacks as the policy orders them."""
        if not candidates:
            return None
        first, rest = candidates[0], candidates[1:]
        ring = await self._try(first)
        if ring is not None:
            return ring
        fallbacks = self._policy.on_unmapped if first.problem else self._policy.on_unavailable
        why = "on_unmapped" if first.problem else "on_unavailable"
        self._trace.step(f"{why}: {', '.join(fallbacks) or 'nothing'}")
        for step in fallbacks:
            for candidate in self._fallback(step, rest):
                ring = await self._try(candidate)
                if ring is not None:
                    return ring
        return None

    def _fallback(self, step: str, rest: list[Candidate]) -> Iterator[Candidate]:
        if step == NEXT_OWNER:
            yield from rest
        elif step == TEAM:
            if self._policy.team is None:
                self._trace.step("team: none configured for this policy")
            else:
                yield self._policy.team
        elif step == SENIOR_MANAGER:
            if self._policy.senior_manager is None:
                self._trace.step("senior_manager: none configured for this policy")
            else:
                yield self._policy.senior_manager

    def _unavailable_now(self, candidate: Candidate) -> bool:
        """True (and traced) when the CRM says the candidate is away, or it is out of their hours."""
        trace = self._trace
        if candidate.away:
            # The CRM's own word (a manager on a break): like a phone in use, the next one is tried.
            trace.link(f"{candidate.label}: passed over, {candidate.away}", f"{candidate.label} {candidate.away}")
            return True
        hours = candidate.hours or self._policy.hours  # their own schedule, else the policy's
        if hours is not None and not hours.is_open(self._now):
            local = self._now.astimezone(hours.zone).strftime("%a %H:%M")
            trace.link(
                f"{candidate.label}: passed over, out of hours ({hours.name}, {local} {hours.zone.key})",
                f"{candidate.label} out of hours",
            )
            return True
        return False

    async def _try(self, candidate: Candidate) -> Ring | None:
        trace = self._trace
        if candidate.person and candidate.person in self._tried:
            trace.link(f"{candidate.label}: already tried")
            return None
        if candidate.person:
            self._tried.add(candidate.person)
        if candidate.problem:
            trace.link(f"{candidate.label}: passed over, {candidate.problem}", f"{candidate.label} {candidate.problem}")
            return None
        if self._unavailable_now(candidate):
            return None
        if self._checker is None:
            trace.link(f"{candidate.label}: rings {', '.join(candidate.extensions)} (availability not checked)", candidate.chosen_text)
            return Ring(candidate, list(candidate.extensions))
        ringing, seen, unchecked = [], [], False
        for extension in candidate.extensions:
            state = await self._checker.state(extension)
            seen.append(f"{extension} {state or 'unchecked'}")
            if state is None or state not in self._policy.skip_states:
                ringing.append(extension)
                unchecked = unchecked or state is None
        if not ringing:
            trace.link(f"{candidate.label}: passed over, {', '.join(seen)}", f"{candidate.label}: {', '.join(seen)}")
            return None
        trace.link(f"{candidate.label}: rings {', '.join(ringing)} ({', '.join(seen)})", candidate.chosen_text)
        return Ring(candidate, ringing, unchecked)
