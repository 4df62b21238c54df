"""Who a call could ring, in the order the policy tries them.

A candidate carries only validated extensions: CRM text decides *whether*
someone rings, never *what* is dialled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from crmlookup.records import Match

from .hours import BusinessHours
from .policy_settings import LAST_AGENT

if TYPE_CHECKING:
    from .policy import Policy

TEAM = "team"
SENIOR_MANAGER = "senior_manager"


@dataclass(frozen=True)
class Candidate:
    """Someone the call could ring, and the rule that proposed them."""

    rule: str  # a CRM module, LastAgent, team or senior_manager
    label: str  # how reasons name it: "Leads L-1 owner u1", "last agent 101", "team support"
    extensions: tuple[str, ...]  # valid extensions; empty when there are none
    person: str = ""  # the owner key, so one person is tried once
    hours: BusinessHours | None = None
    match: Match | None = None  # the CRM record that proposed them
    problem: str = ""  # why they cannot ring at all: "has no owner", "has no valid extension"
    away: str = ""  # why the CRM says they cannot take a call now ("status busy")

    @property
    def chosen_text(self) -> str:
        """The short reason when this candidate rings."""
        if self.match is not None and self.rule == self.match.module:
            return f"owner of {self.match.module} {self.match.record_id}"
        return self.label


def rule_candidates(policy: Policy, matches: Sequence[Match], last_extension: str | None) -> list[Candidate]:
    """The candidates of the lookup order: each rule's hits, best first."""
    by_module: dict[str, list[Match]] = {}
    for match in matches:
        by_module.setdefault(match.module, []).append(match)
    candidates = []
    for rule in policy.rules:
        if rule == LAST_AGENT:
            if last_extension is not None:
                candidates.append(last_agent_candidate(policy, last_extension))
        else:
            candidates.extend(owner_candidate(policy, match) for match in by_module.get(rule, ()))
    return candidates


def owner_candidate(policy: Policy, match: Match) -> Candidate:
    """The owner of ``match``: the config map first, then the extensions the CRM knows."""
    record = f"{match.module} {match.record_id}"
    owner = match.owner
    if owner is None:
        team = policy.staff.team_for(match.departments)
        if team is not None:
            # An unassigned ticket: its department's team takes it (rings as a team: SHARED).
            return Candidate(TEAM, f"{record} unassigned, {team.label}", team.extensions, hours=team.hours, match=match)
        return Candidate(match.module, record, (), match=match, problem="has no owner")
    staff = policy.staff
    key = staff.key_for(owner)
    if not owner.active:
        # Deactivated in the CRM: whatever maps them, they no longer take calls.
        return Candidate(match.module, f"{record} owner {owner.id}", (), key, match=match, problem="is not an active CRM user")
    configured = staff.extensions.get(key)
    extensions = tuple(policy.targets.valid_extensions(configured if configured is not None else owner.extensions))
    label = f"{record} owner {owner.id}"
    problem = "" if extensions else "has no valid extension"
    return Candidate(match.module, label, extensions, key, staff.hours.get(key), match, problem, owner.away)


def last_agent_candidate(policy: Policy, extension: str) -> Candidate:
    """Whoever answered this caller last, on the extension they answered at (already validated)."""
    users = policy.staff.users_by_extension.get(extension, frozenset())
    person = next(iter(users)) if len(users) == 1 else ""
    return Candidate(LAST_AGENT, f"last agent {extension}", (extension,), person, policy.staff.hours.get(person))


def team_candidate(name: str, extensions: tuple[str, ...], hours: BusinessHours | None) -> Candidate:
    return Candidate(TEAM, f"team {name}", tuple(dict.fromkeys(extensions)), hours=hours)


def senior_manager_candidate(key: str, extensions: tuple[str, ...], hours: BusinessHours | None) -> Candidate:
    return Candidate(SENIOR_MANAGER, f"senior manager {key}", tuple(dict.fromkeys(extensions)), key, hours)
